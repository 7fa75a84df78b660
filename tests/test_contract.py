"""The Diagnostic contract: run keys as reproduce writes them and the report reads them, run
selection and options."""

from __future__ import annotations

import pytest

from dtlens.diagnostics.contract import Reads, RunKey, Settings
from dtlens.diagnostics.registry import DIAGNOSTICS


@pytest.mark.parametrize(
    "group, key, label",
    [
        ("main", RunKey("language", 666), "language|666"),
        ("no_context", RunKey("random", 42, 1), "random|1|42"),
        ("no_clip", RunKey("image", 7), "image|7"),
        ("block_swap", RunKey("block 0", 7, 1), "block 0|7"),
    ],
)
def test_run_keys_read_back_as_reproduce_json_names_them(group, key, label):
    assert key.label(group) == label  # the names reproduce.json has always had
    assert RunKey.parse(label, group) == key


def test_reads_selects_roles_and_context_in_the_groups_order():
    runs = {
        RunKey(r, s, k): f"{r}{s}{k}"
        for s in (1, 2)
        for r in ("random", "language")
        for k in (1, 20)
    }
    picked = Reads("no_context", roles=("language",), context=1).select(runs)
    assert list(picked.values()) == ["language11", "language21"]
    assert Reads().select(runs) == runs


def test_options_come_from_the_presets_settings():
    settings = Settings(attention_epochs=(0, 3), paper_variants=False)
    attention = DIAGNOSTICS["attention"]
    assert attention.options(settings, None) == {"epochs": (0, 3), "paper_variant": False}
    assert attention.reads == Reads("no_context", roles=("random", "language"), context=1)
    assert DIAGNOSTICS["weights"].options(settings, None) == {}
