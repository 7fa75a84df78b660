"""The paper preset at the real sizes, end to end on CPU under the smoke budget.

GPT-2 small and ImageGPT-small HF directories with random weights (their published configs) and
D4RL-layout medium datasets of the three tasks, made by project code; then `dtlens reproduce
--preset paper --budget smoke` on Hopper with one seed (every role of the plan, block swap on
the first and last block), and every artefact and the report checked. `pytest -m paper_scale`.
"""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from cli.main import app
from dtlens.data.d4rl import read_d4rl
from dtlens.diagnostics.contract import RunKey
from dtlens.experiments import presets
from dtlens.experiments.budget import BUDGETS, apply_budget
from dtlens.experiments.paper_inputs import write_paper_inputs
from dtlens.experiments.reproduce import plan
from dtlens.model.config import PAPER_RANDOM
from dtlens.train.run import Run

# One xdist group: the stand-in inputs (a module fixture) are made once, on one worker.
pytestmark = [pytest.mark.slow, pytest.mark.paper_scale, pytest.mark.xdist_group("paper_scale")]
runner = CliRunner()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_inputs")
    yield write_paper_inputs(root)
    shutil.rmtree(root)  # ~0.8 GB of weights


@pytest.fixture
def out(tmp_path):
    yield tmp_path / "paper"
    shutil.rmtree(tmp_path / "paper", ignore_errors=True)  # ~1 GB per run at these sizes


def test_stand_in_inputs_have_the_published_shapes(inputs):
    gpt2 = json.loads((inputs.gpt2 / "config.json").read_text())
    assert (gpt2["n_layer"], gpt2["n_embd"], gpt2["n_head"], gpt2["vocab_size"]) == (
        12,
        768,
        12,
        50257,
    )
    igpt = json.loads((inputs.imagegpt / "config.json").read_text())
    assert (igpt["n_layer"], igpt["n_embd"], igpt["n_head"], igpt["vocab_size"]) == (
        24,
        512,
        8,
        513,
    )
    assert igpt["activation_function"] == "quick_gelu"
    for task, env_id in presets.PAPER_ENVS.items():
        data = read_d4rl(inputs.d4rl_dir / f"{task}-medium-v2.hdf5")
        assert data.env_id == env_id and len(data) == 3000
        assert data.metadata["policy"] == "embedded:medium"


def test_paper_preset_smoke_end_to_end(inputs, out):
    paths = ["--gpt2", str(inputs.gpt2), "--imagegpt", str(inputs.imagegpt)]
    paths += ["--d4rl-dir", str(inputs.d4rl_dir)]
    narrow = ["--tasks", "hopper", "--seeds", "666", "--device", "cpu"]
    args = ["reproduce", "--preset", "paper", "--budget", "smoke", *paths, *narrow]
    result = runner.invoke(app, [*args, "--workers", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "FAILED" not in result.output and "failed:" not in result.output, result.output

    preset = apply_budget(
        presets.get(
            "paper",
            str(inputs.gpt2),
            str(inputs.imagegpt),
            str(inputs.d4rl_dir),
            "cpu",
            tasks=["hopper"],
            seeds=[666],
        ),
        BUDGETS["smoke"],
    )
    (p,) = plan(preset)
    runs = out / "hopper" / "runs"
    for spec in p.specs():
        run = Run(runs / spec.name)
        assert run.epochs() == sorted({*spec.cfg.keep_epochs, 1}), spec.name
        assert (run.path / "metrics.nc").is_file() and (run.path / "state.safetensors").is_file()
    sizes = {
        who: Run(runs / p.main[RunKey(who, 666)].name).dt_config.backbone
        for who in ("random", "language", "image")
    }
    assert sizes["random"] == PAPER_RANDOM
    assert (sizes["language"].n_layers, sizes["language"].d_model, sizes["language"].n_heads) == (
        12,
        768,
        12,
    )
    assert (sizes["image"].n_layers, sizes["image"].d_model, sizes["image"].n_heads) == (24, 512, 8)
    assert {k.role for k in p.block_swap} == {"random", "block 0", "block 11", "donor"}

    for spec in p.main.values():
        for name in ("cka", "weights", "gradients", "mutual_info"):
            assert (runs / spec.name / "diagnostics" / f"{name}.nc").is_file(), (spec.name, name)
            assert (runs / spec.name / "figures" / f"{name}.png").is_file(), (spec.name, name)
    for key, spec in p.no_context.items():
        if key.context == 1:
            assert (runs / spec.name / "diagnostics" / "attention.nc").is_file(), spec.name
    for study in ("no_context", "block_swap"):
        assert (out / "hopper" / "diagnostics" / f"{study}.nc").is_file(), study
        assert (out / "hopper" / "figures" / f"{study}.png").is_file(), study

    text = (out / "report.md").read_text()
    for section in (
        "1. Representation change",
        "2. Information",
        "3. Weight change",
        "4. Gradients",
        "5. Training without context",
        "6. Single-block",
        "7. Attention distance",
        "Summary",
    ):
        assert section in text, section
    assert (out / "report.html").stat().st_size > 1000
