"""The report across tasks: Table 1 for every task and each finding aggregated across tasks."""

from __future__ import annotations

import numpy as np
import xarray as xr

from dtlens.report.document import Doc
from dtlens.report.report import ROLES, Study, _across_tasks, _table1_tasks
from dtlens.stats import aggregate, compare

SEEDS = (1, 2)
INITS = {"random": "random", "language": "text", "image": "image"}


def fake_study(root, label: str, scores: dict[str, list[float]]) -> Study:
    """A task folder whose main runs hold only metrics.nc with one evaluated epoch."""
    main = {}
    for who in ROLES:
        for seed, score in zip(SEEDS, scores[who], strict=True):
            name = f"{who}-{seed}"
            (root / label / "runs" / name).mkdir(parents=True)
            metrics = xr.Dataset(
                {"score_mean": ("epoch", [np.nan, score]), "score_std": ("epoch", [np.nan, 1.0])}
            )
            metrics.to_netcdf(root / label / "runs" / name / "metrics.nc")
            main[f"{who}|{seed}"] = name
    roles = {"main": main, "no_context": {}, "no_clip": {}, "block_swap": {}}
    return Study(root, label, roles, INITS)


def test_table1_across_tasks(tmp_path):
    hopper = fake_study(
        tmp_path, "hopper", {"random": [10, 20], "language": [30, 50], "image": [1, 3]}
    )
    walker = fake_study(
        tmp_path, "walker2d", {"random": [5, 7], "language": [8, 8], "image": [0, 2]}
    )
    doc = Doc("t")
    _table1_tasks(doc, [hopper, walker])
    md = doc.markdown()
    header = "| init | hopper (here) | hopper (paper) | walker2d (here) | walker2d (paper) |"
    assert header in md
    assert "| language | 40.0 ± 14.1 | 79.5 ± 1.3 | 8.0 ± 0.0 | 71.2 |" in md
    assert "| random | 15.0 ± 7.1 | 67.7 ± 3.0 | 6.0 ± 1.4 | 71.0 |" in md


def test_across_tasks_rows_hold_each_verdict_and_the_aggregate():
    low, high = [0.10, 0.12, 0.11], [0.30, 0.33, 0.31]
    per_task = {
        "cka": {"hopper": compare(low, high, "less"), "walker2d": compare(low, high, "less")},
        # gradients expects image > random: the same values contradict it on both tasks.
        "gradients": {"hopper": compare(low, high, "greater")},
    }
    doc = Doc("t")
    _across_tasks(doc, per_task, ["hopper", "walker2d"])
    md = doc.markdown()
    cka = aggregate({"hopper": (low, high), "walker2d": (low, high)}, "less")
    assert cka.verdict == "holds"
    rows = [
        line for line in md.splitlines() if line.startswith("| 1. ") or line.startswith("| 4. ")
    ]
    assert rows[0].startswith(
        "| 1. Representation change (CKA) | language < random | holds | holds |"
    )
    assert rows[0].endswith(f"| {cka.p:.3g} | **holds** |")
    assert f"{cka.effect:+.3g} [{cka.ci[0]:+.3g}, {cka.ci[1]:+.3g}]" in rows[0]
    assert "| image > random | contradicted | - |" in rows[1]
    assert rows[1].endswith("| **contradicted** |")


def test_interp_questions_are_aggregated_two_sided():
    low, high = [0.10, 0.12, 0.11], [0.30, 0.33, 0.31]
    spread = [0.1, 0.3, 0.2]
    per_task = {
        "attribution": {
            "hopper": compare(low, high, "two-sided"),
            "walker2d": compare(low, high, "two-sided"),
        },
        "action_lens": {
            "hopper": compare(high, low, "two-sided"),
            "walker2d": compare(spread, spread, "two-sided"),
        },
    }
    doc = Doc("t")
    _across_tasks(doc, per_task, ["hopper", "walker2d"])
    rows = [line for line in doc.markdown().splitlines() if "| (not in the paper" in line]
    assert rows[0].startswith(
        "| Direct action attribution | (not in the paper; two-sided) | language < random | "
        "language < random |"
    )
    assert rows[0].endswith("| **language < random** |")
    assert rows[1].startswith(
        "| Action lens | (not in the paper; two-sided) | language > random | no difference shown |"
    )
