"""Every finding's verdict, on per-seed statistics on both sides of the paper's direction.

The paper's directions are written here independently of the registry, so inverting a finding's
`expect` or swapping its roles fails a test."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from dtlens.diagnostics.analyses.block_swap import SINGLE_BLOCKS, auc_per_seed
from dtlens.diagnostics.analyses.no_context import score_lost
from dtlens.diagnostics.registry import DIAGNOSTICS

#: name -> (init whose statistic the paper reports lower, the one it reports higher)
PAPER = {
    "cka": ("language", "random"),  # pretrained representations change more: lower CKA
    "mutual_info": ("language", "random"),  # pretrained hold less information
    "weights": ("language", "random"),  # pretrained weights move less
    "gradients": ("random", "image"),  # ImageGPT's gradient sits in block 0's first norm
    "no_context": ("language", "random"),  # pretrained lose less score without context
    "block_swap": (SINGLE_BLOCKS, "random"),  # one donor block lowers the action-error AUC
    "attention": ("language", "random"),  # pretrained attention distance changes less
}
LOW = [0.10, 0.12, 0.11]
HIGH = [0.50, 0.52, 0.49]


def test_every_diagnostic_with_a_claim_is_covered():
    assert {n for n, d in DIAGNOSTICS.items() if d.finding} == set(PAPER)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_direction_holds(name):
    f = DIAGNOSTICS[name].finding
    lower, higher = PAPER[name]
    values = {lower: LOW, higher: HIGH}
    assert f.compare(values[f.a], values[f.b]).verdict == "holds"


@pytest.mark.parametrize("name", sorted(PAPER))
def test_opposite_direction_is_contradicted(name):
    f = DIAGNOSTICS[name].finding
    lower, higher = PAPER[name]
    values = {lower: HIGH, higher: LOW}
    assert f.compare(values[f.a], values[f.b]).verdict == "contradicted"


@pytest.mark.parametrize("name", sorted(PAPER))
def test_overlap_and_one_seed_are_undetermined(name):
    f = DIAGNOSTICS[name].finding
    assert f.compare([0.1, 0.5, 0.3], [0.2, 0.4, 0.3]).verdict == "undetermined"
    assert f.compare([0.1], [0.9]).verdict == "undetermined"


def _context_study(scores: dict[tuple[str, int, int], float]) -> xr.Dataset:
    keys = list(scores)
    return xr.Dataset(
        {"final_score_mean": ("run", [scores[k] for k in keys])},
        coords={
            "init": ("run", [k[0] for k in keys]),
            "context": ("run", [k[1] for k in keys]),
            "seed": ("run", [k[2] for k in keys]),
        },
    )


def test_score_lost_is_k20_minus_k1_per_seed():
    ds = _context_study(
        {
            ("random", 20, 0): 60.0,
            ("random", 1, 0): 20.0,
            ("random", 20, 1): 50.0,
            ("random", 1, 1): 40.0,
            ("random", 20, 2): 70.0,  # no K=1 run for seed 2: skipped
            ("language", 20, 0): 55.0,
            ("language", 1, 0): 50.0,
        }
    )
    np.testing.assert_allclose(score_lost(ds, "random"), [40.0, 10.0])
    np.testing.assert_allclose(score_lost(ds, "language"), [5.0])


def test_block_auc_per_seed_averages_single_blocks():
    auc = np.array([[1.0, 2.0], [0.5, 1.0], [0.7, 1.2], [0.9, 0.9]])  # (variant, seed)
    ds = xr.Dataset(
        {"auc_action_error": (("variant", "seed"), auc)},
        coords={"variant": ["random", "block 0", "block 1", "donor"], "seed": [0, 1]},
    )
    np.testing.assert_allclose(auc_per_seed(ds, SINGLE_BLOCKS), [0.6, 1.1])
    np.testing.assert_allclose(auc_per_seed(ds, "random"), [1.0, 2.0])
    assert auc_per_seed(ds, "block 7").size == 0
