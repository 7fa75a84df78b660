"""The `laptop` preset (results/laptop/PLAN.md): its settings, the budget it reads, its dry run,
and the whole path at tiny size: reproduce, the report with every init, the peer DT and the
controls' section, exported and rebuilt byte for byte."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from benchmarks import peer_dt
from cli.main import app
from dtlens.diagnostics.contract import RunKey
from dtlens.experiments import presets
from dtlens.experiments.budget import BUDGETS, apply_budget
from dtlens.experiments.reproduce import plan, reproduce
from dtlens.io import open_netcdf, save_json
from dtlens.model.backbones import random_backbone, save_backbone
from dtlens.report.report import write_report
from tests.conftest import TINY, tiny_train_config

runner = CliRunner()
ROLES = ("random", "language", "image", "synthetic", "shuffled:text", "matched:text")


@pytest.fixture
def budget_file(tmp_path):
    path = tmp_path / "budget.json"
    rule = {
        "candidates": [2500, 5000],
        "factor": 4,
        "tolerance": 0.05,
        "window": 1000,
        "epoch_steps": 500,
        "metric": "heldout_action_error",
    }

    def entry(chosen, error=0.0104):
        row = {"2500": {"error": error, "error_long": 0.01, "converged": chosen == 2500}}
        curve = list(error * (1 + 1 / np.arange(1.0, 21.0)))  # 20 epochs of 500 steps
        curves = {"action_error": curve, "heldout_action_error": curve[::-1]}
        return {"chosen": chosen, "rule": rule, "candidates": row, "curves": curves}

    # the paper's rate has no B on hopper; every task converged at 3e-4 and 1e-3
    hopper = {"0.0001": entry(None, 0.02), "0.0003": entry(2500), "0.001": entry(2500)}
    others = {
        t: {"0.0003": entry(b), "0.001": entry(2500)}
        for t, b in (("halfcheetah", 2500), ("walker2d", 5000))
    }
    save_json({"hopper": hopper, **others}, path)
    return path


def test_laptop_preset_follows_the_plan(budget_file):
    preset = presets.get(
        "laptop", device="cpu", tasks=["hopper", "walker2d"], budget_file=budget_file
    )
    t = preset.train
    # the smallest learning rate at which every task's budget run converged
    assert (t.lr, t.weight_decay, t.grad_clip, t.batch_size, t.warmup_steps) == (
        3e-4, 1e-4, 0.25, 64, 1000
    )  # fmt: skip
    assert t.size.n_layers == 3 and t.size.d_model == 128 and t.dt.dt_init == "released"
    assert preset.seeds == (666, 42, 7) and preset.block_swap_blocks is None
    hopper, walker = plan(preset)
    assert {k.role for k in hopper.main} == {*ROLES, "random gpt2-init", "language gpt2-init"}
    # the DT-init check is on Hopper only; the study exceeds 8 h: walker2d loses the PLAN's cuts
    assert "hopper" not in preset.cuts and preset.cuts["walker2d"]
    assert {k.role for k in walker.main} == set(ROLES) - set(preset.cuts["walker2d"])
    for key, spec in hopper.main.items():
        cfg = spec.cfg
        assert cfg.epochs * cfg.steps_per_epoch == 2500 and cfg.context_len == 20
        assert cfg.dt.dt_init == ("gpt2" if "gpt2" in key.role else "released")
        assert (cfg.eval_episodes, cfg.eval_every) == (10, 10)  # after the last epoch
    gpt2 = hopper.main[RunKey("language gpt2-init", 7)]
    assert gpt2.cfg.init == "text" and gpt2.name.endswith("-dtgpt2")
    assert walker.main[RunKey("random", 42)].cfg.epochs == 10
    assert {k.role for k in hopper.block_swap} == {
        "random",
        "block 0",
        "block 1",
        "block 2",
        "donor",
    }
    assert set(hopper.no_clip) == {RunKey("image", s) for s in preset.seeds}
    # mini has the controls too, under its own names; --controls none leaves them out
    (mini,) = plan(presets.mini())
    assert {k.role for k in mini.main} == set(ROLES)
    assert mini.main[RunKey("random", 666)].name == "random-K20-e5-s666"
    (demo,) = plan(presets.narrow(presets.mini(), controls=[]))
    assert {k.role for k in demo.main} == {"random", "language", "image"}
    (one,) = plan(presets.narrow(presets.mini(), controls=["matched:text"]))
    assert {k.role for k in one.main} == {"random", "language", "image", "matched:text"}


def test_an_unknown_control_is_one_line():
    args = ["reproduce", "--preset", "mini", "--dry-run", "--device", "cpu"]
    small = ["--budget", "smoke", "--seeds", "7", "--workers", "1"]
    result = runner.invoke(app, [*args, *small, "--controls", "none"])  # make demo's plan
    assert result.exit_code == 0, result.output
    assert "random-K20-e1-s7" in result.output and "synthetic-K20" not in result.output
    result = runner.invoke(app, [*args, "--controls", "shuffled:image"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "error: --controls shuffled:image: the mini preset's controls are synthetic, "
        "shuffled:text, matched:text"
    )


def test_laptop_without_a_budget_is_one_line(tmp_path):
    args = ["reproduce", "--preset", "laptop", "--dry-run", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--budget-file", str(tmp_path / "none.json")])
    assert result.exit_code == 1
    assert "hopper has no budget; run `dtlens laptop-budget --task hopper" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_laptop_dry_run_prints_time_per_task(budget_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["reproduce", "--preset", "laptop", "--dry-run", "--device", "cpu", "--workers", "1"]
    args += ["--budget", "smoke", "--tasks", "hopper", "--budget-file", str(budget_file)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "hopper projected:" in result.output and "matched-text-K20" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["budget.json"]


def tiny_laptop(budget_file, dataset, folder) -> presets.Preset:
    """`laptop` on Hopper, 2 seeds, the smoke budget, tiny backbones and data."""
    text = save_backbone(random_backbone(TINY, seed=11), folder / "text.safetensors")
    image = save_backbone(random_backbone(TINY, seed=12), folder / "image.safetensors")
    synthetic = save_backbone(random_backbone(TINY, seed=13), folder / "synthetic.safetensors")
    laptop = presets.narrow(presets.laptop(budget_file, ["hopper"]), ["hopper"], [666, 42])
    train = tiny_train_config(dataset, epochs=2, probe_size=24, context_len=20, eval_every=2)
    return apply_budget(
        dataclasses.replace(
            laptop,
            datasets={"hopper": str(dataset)},
            language=str(text),
            image=str(image),
            extra={"synthetic": str(synthetic), "shuffled:text": f"shuffled:{text}",
                   "matched:text": f"matched:{text}"},
            train=train,
            task_epochs={"hopper": 2},
            block_swap_epochs={"hopper": 2},
            block_swap_size=TINY,
            attention_epochs=(0, 1),
            probe_size=24,
        ),
        BUDGETS["smoke"],
    )  # fmt: skip


@pytest.mark.slow
def test_laptop_end_to_end_report_export_and_rebuild(budget_file, hopper_file, tmp_path):
    preset = tiny_laptop(budget_file, hopper_file, tmp_path)
    out, results = tmp_path / "runs", tmp_path / "results"
    logs: list[str] = []
    reproduce(preset, out, workers=1, log=logs.append)
    assert "FAILED" not in "\n".join(logs), logs
    for seed in (0, 1):  # the peer DT on the same data, its record beside the runs
        peer_dt.main(["--dataset", str(hopper_file), "--steps", "3", "--eval-every", "3",
                      "--eval-episodes", "1", "--seed", str(seed),
                      "--out", str(out / "peer" / f"hopper-s{seed}.json")])  # fmt: skip
    text = write_report(out).read_text()
    table1 = text.split("### Normalized score (Table 1)")[1].split("###")[0]
    rows = [line.split(" | ")[0][2:] for line in table1.splitlines() if line.startswith("| ")]
    assert rows[1:] == [*ROLES[:3], *sorted(ROLES[3:]), "language gpt2-init", "random gpt2-init"]
    assert "Peer DT (CORL's" in table1 and "after 3 steps" in table1
    controls = text.split("## What in the pretrained weights matters")[1]
    for control in ("synthetic", "shuffled:text", "matched:text"):
        assert f"### language vs {control}" in controls
    assert "normalized score (K=20, last epoch)" in controls
    # one task: its comparison, not an "across tasks" one
    assert "| statistic | hopper | p |" in controls and " on hopper (p " in controls
    assert " across tasks (p " not in controls and "p (across tasks)" not in controls
    sensitivity = controls.split("### Sensitivity to the DT's own init")[1]
    assert "| released DT init | p (gpt2) | gpt2 DT init |" in sensitivity
    assert "changes with the DT's init" in sensitivity
    assert "no difference shown" in controls or "language >" in controls or "language <" in controls
    # export the small files, write the report there; `dtlens report` rebuilds it byte for byte
    results.mkdir()
    shutil.copyfile(budget_file, results / "budget.json")  # where laptop-budget wrote it
    result = runner.invoke(app, ["report", str(out), "--export", str(results)])
    assert result.exit_code == 0, result.output
    exported = (results / "report.md").read_bytes()
    assert b"| hopper | 0.0001 | 2500 | 0.02000 | 10000 | 0.01000 | +100.0% |  |" in exported
    assert b"| hopper | 0.0003 | 2500 | 0.01040 | 10000 | 0.01000 | +4.0% | **B** |" in exported
    assert b"| hopper | 0.001 | 2500 | 0.01040 | 10000 | 0.01000 | +4.0% |  |" in exported
    assert b"The study's learning rate is 0.0003" in exported
    assert b"![Budget runs: action error per epoch" in exported
    assert (results / "budget.png").is_file()
    # every run logs the held-out windows' error, which the per-seed table of the rule shows
    seeds = exported.split(b"Final action MSE on the fixed held-out windows")[0].split(b"| task |")
    (metrics,) = out.glob("hopper/runs/random-K20-*-s666/metrics.nc")
    with open_netcdf(metrics) as ds:
        heldout = float(ds.heldout_action_error[-1])
    assert f"666: {heldout:.5f} |".encode() in seeds[-1]
    assert not list(results.rglob("*.safetensors"))
    assert (results / "peer" / "hopper-s0.json").is_file()
    (results / "report.md").unlink()
    assert runner.invoke(app, ["report", str(results)]).exit_code == 0
    assert (results / "report.md").read_bytes() == exported
    # the rebuild reads the exported files: without a run's metrics it differs
    next(results.glob("hopper/runs/synthetic-*/metrics.nc")).unlink()
    assert runner.invoke(app, ["report", str(results)]).exit_code == 0
    assert (results / "report.md").read_bytes() != exported
