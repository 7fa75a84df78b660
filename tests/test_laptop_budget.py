"""The laptop study's budget rule (results/laptop/PLAN.md): its logic on synthetic curves, and
`dtlens laptop-budget` end to end at tiny size."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from dtlens.errors import DtlensError
from dtlens.experiments.laptop_budget import (
    BudgetRule,
    budget_run_dir,
    choose,
    converged,
    error_at,
    find_budget,
    read_budgets,
    study_lr,
)
from dtlens.io import load_json, open_netcdf, save_json

runner = CliRunner()
RULE = BudgetRule()


def curve(floor: float, scale: float, tau: float, steps: int = 80_000) -> np.ndarray:
    """Per-epoch action errors (500-step epochs) of an exponential approach to `floor`."""
    ends = np.arange(1, steps // RULE.epoch_steps + 1) * RULE.epoch_steps
    return floor + scale * np.exp(-(ends - RULE.epoch_steps / 2) / tau)


def test_error_at_averages_the_window_that_ends_at_the_step():
    errors = np.arange(1.0, 21.0)  # epoch i: error i
    assert error_at(errors, 2500, RULE) == pytest.approx((4 + 5) / 2)  # steps 1501..2500
    assert error_at(errors, 10_000, RULE) == pytest.approx((19 + 20) / 2)
    with pytest.raises(DtlensError, match="no action error at step 20000"):
        error_at(errors, 20_000, RULE)


def test_within_five_percent_of_the_long_run():
    assert converged(1.04, 1.0, 0.05) and converged(0.96, 1.0, 0.05)
    assert not converged(1.06, 1.0, 0.05) and not converged(0.94, 1.0, 0.05)


@pytest.mark.parametrize(
    ("tau", "expected"), [(300, 2500), (600, 5000), (1200, 10000), (2500, 20000)]
)
def test_rule_picks_the_smallest_converged_candidate(tau, expected):
    errors = curve(floor=0.1, scale=1.0, tau=tau)
    chosen, rows = choose(errors, RULE)
    assert chosen == expected
    assert [int(b) for b in rows] == [b for b in RULE.candidates if b <= expected]
    assert all(not r["converged"] for b, r in rows.items() if int(b) < expected)
    assert rows[str(expected)]["converged"]
    # the rule's own numbers: within 5% at B, not at the candidate before
    e, e_long = error_at(errors, expected, RULE), error_at(errors, 4 * expected, RULE)
    assert abs(e - e_long) <= 0.05 * e_long


def test_rule_stops_where_the_run_ends_and_may_find_none():
    errors = curve(floor=0.1, scale=1.0, tau=5_000)  # never within 5% by 20,000 steps
    assert choose(errors, RULE)[0] is None
    short = curve(floor=0.1, scale=1.0, tau=600, steps=10_000)  # only 2,500's 4x is reached
    chosen, rows = choose(short, RULE)
    assert chosen is None and list(rows) == ["2500"]


def test_rule_steps_must_be_whole_epochs():
    with pytest.raises(DtlensError, match="whole epochs of 1000 steps"):
        BudgetRule(epoch_steps=1000)  # 2,500 ends inside an epoch


def test_missing_budget_names_the_command(tmp_path):
    path = tmp_path / "budget.json"
    with pytest.raises(DtlensError, match="hopper has no budget; run `dtlens laptop-budget --task"):
        read_budgets(path)
    budgets = {t: {"0.0001": {"chosen": None}} for t in ("hopper", "halfcheetah", "walker2d")}
    save_json(budgets, path)
    with pytest.raises(DtlensError, match=r"no learning rate .* \(hopper: lr 0.0001 none; "):
        read_budgets(path)


def test_study_rate_is_the_smallest_at_which_every_task_converged(tmp_path):
    path = tmp_path / "budget.json"
    budgets = {
        "hopper": {"0.0001": {"chosen": None}, "0.001": {"chosen": 2500}},
        "halfcheetah": {"0.0003": {"chosen": 2500}, "0.001": {"chosen": 2500}},
        "walker2d": {"0.0003": {"chosen": 5000}, "0.001": {"chosen": 2500}},
    }
    assert study_lr(budgets) == "0.001"  # 3e-4 has no hopper run
    budgets["hopper"]["0.0003"] = {"chosen": 2500}
    assert study_lr(budgets) == "0.0003"
    budgets["hopper"]["0.00003"] = {"chosen": 2500}  # converged on one task only
    save_json(budgets, path)
    assert read_budgets(path) == (3e-4, {"hopper": 2500, "halfcheetah": 2500, "walker2d": 5000})
    budgets["walker2d"]["0.0003"] = {"chosen": None}
    assert study_lr(budgets) == "0.001"
    budgets["walker2d"]["0.001"] = {"chosen": None}
    assert study_lr(budgets) is None
    # each rate trains in its own folder; the paper rate's keeps the PLAN's first name
    assert budget_run_dir("hopper").name == "hopper-random-s666-heldout"
    assert budget_run_dir("hopper", 3e-4).name == "hopper-random-s666-heldout-lr0.0003"


@pytest.mark.slow
def test_budget_run_end_to_end_and_resumes(tmp_path):
    out, run = tmp_path / "budget.json", tmp_path / "run"
    lines: list[str] = []
    never = BudgetRule(candidates=(1, 2), epoch_steps=1, window=1, tolerance=0.0)
    entry = find_budget("hopper", out, run, never, log=lines.append, batch_size=4)
    assert entry["chosen"] is None and list(entry["candidates"]) == ["1", "2"]
    assert any("training steps 4..8" in line for line in lines)  # progress per candidate
    # the same run continues under a looser rule: nothing is trained again
    lines.clear()
    always = BudgetRule(candidates=(1, 2), epoch_steps=1, window=1, tolerance=10.0)
    entry = find_budget("hopper", out, run, always, log=lines.append, batch_size=4)
    assert entry["chosen"] == 1 and not any("training" in line for line in lines)
    saved = load_json(out)["hopper"]["0.0001"]  # the paper's learning rate
    assert saved["chosen"] == 1 and saved["run"] == str(run)
    assert "--epochs 4 --steps 1" in saved["command"] and "--lr 0.0001" in saved["command"]
    assert "--heldout mini/hopper-medium-heldout" in saved["command"]
    # the rule reads the training error (epoch 1 ends at B = 1, epoch 4 at 4 x B); the run also
    # logs the held-out windows' error, which --metric applies the rule to instead
    with open_netcdf(run / "metrics.nc") as ds:
        heldout, training = ds.heldout_action_error.values, ds.action_error.values
    for metric, errors in (("action_error", training), ("heldout_action_error", heldout)):
        rule = dataclasses.replace(always, metric=metric)
        entry = find_budget("hopper", out, run, rule, log=lines.append, batch_size=4)
        assert entry["rule"]["metric"] == metric
        assert entry["candidates"]["1"]["error"] == pytest.approx(errors[0])
        assert entry["candidates"]["1"]["error_long"] == pytest.approx(errors[3])
    assert not np.allclose(heldout, training)
    # another learning rate: its own run folder and entry, beside the paper rate's
    other = tmp_path / "run-lr"
    entry = find_budget("hopper", out, other, always, log=lines.append, lr=1e-3, batch_size=4)
    assert "--lr 0.001" in entry["command"] and other.is_dir()
    assert list(load_json(out)["hopper"]) == ["0.0001", "0.001"]
    assert load_json(other / "config.json")["train"]["lr"] == 1e-3


def test_rule_reads_a_known_metric():
    assert BudgetRule().metric == "action_error"  # the PLAN's
    with pytest.raises(DtlensError, match="--metric loss: expected one of action_error"):
        BudgetRule(metric="loss")


def test_budget_cli_tiny(tmp_path):
    out = tmp_path / "budget.json"
    args = [
        "laptop-budget",
        "--task",
        "halfcheetah",
        "--out",
        str(out),
        "--run-dir",
        str(tmp_path / "r"),
    ]
    tiny = ["--candidates", "1", "--epoch-steps", "1", "--window", "1", "--batch-size", "4"]
    tiny += ["--lr", "3e-4"]
    result = runner.invoke(app, [*args, *tiny])
    assert result.exit_code == 0, result.output
    entry = load_json(out)["halfcheetah"]["0.0003"]
    assert entry["rule"]["candidates"] == [1] and "halfcheetah: B =" in result.output
    assert "--lr 0.0003" in entry["command"] and "at lr 0.0003" in result.output
    assert len(entry["curves"]["heldout_action_error"]) == 4  # epochs to 4 x B, to plot
    assert out.with_suffix(".png").is_file()
    bad = runner.invoke(app, [*args[:2], "ant", *args[3:], *tiny])
    assert bad.exit_code == 1 and "--task ant" in bad.output


def test_projection_finds_where_a_power_law_meets_the_rule():
    from scripts import budget_projection as bp

    rule = {"epoch_steps": 500, "window": 1000, "factor": 4, "tolerance": 0.05}
    law = (0.01, 2.0, 0.5)
    middles = (np.arange(40) + 0.5) * 500
    params = bp.fit(list(bp.power_law(middles, *law)), 500)
    assert params == pytest.approx(law, rel=1e-3)
    b = bp.projected_budget(params, rule)
    # the rule's gap at the projected B is within 5%, an epoch earlier it is not
    assert abs(bp.projected_gap(params, b, rule)) <= 0.05 < bp.projected_gap(params, b - 500, rule)
    assert 3.5e6 < b < 3.7e6  # b t^-c (1 - 4^-c) = 5% of a + b (4t)^-c: t^-0.5 = 0.0005/0.95
    assert bp.projected_budget((0.0, 2.0, 0.5), rule) is None  # no floor: the gap stays 4^c - 1
