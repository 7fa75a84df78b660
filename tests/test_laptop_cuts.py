"""The laptop preset within 8 hours (results/laptop/PLAN.md): the cut rule on the cost model, the
plan without the cut runs, the dry run and a report over a study with a role cut on one task."""

from __future__ import annotations

import dataclasses

import pytest
from typer.testing import CliRunner

from cli.main import app
from dtlens.diagnostics.contract import RunKey
from dtlens.errors import DtlensError
from dtlens.experiments import laptop_cuts, presets
from dtlens.experiments.reproduce import plan
from dtlens.io import save_json
from dtlens.model.config import MINI
from dtlens.report.report import write_report

runner = CliRunner()
CONTROLS = ("shuffled:text", "matched:text")


def budgets(tmp_path, hopper: int, halfcheetah: int, walker2d: int):
    path = tmp_path / f"budget-{hopper}-{halfcheetah}-{walker2d}.json"
    steps = {"hopper": hopper, "halfcheetah": halfcheetah, "walker2d": walker2d}
    save_json({task: {"0.0001": {"chosen": b or None}} for task, b in steps.items()}, path)
    return path


@pytest.mark.parametrize(
    ("steps", "cut"),
    [
        ((1000, 1000, 1000), ()),
        ((2000, 2000, 2000), CONTROLS),
        ((2500, 2500, 2500), (*CONTROLS, "synthetic")),
    ],
)
def test_the_rule_cuts_in_order_until_the_study_fits(tmp_path, steps, cut):
    preset = presets.laptop(budgets(tmp_path, *steps))
    assert preset.cuts == ({t: cut for t in ("halfcheetah", "walker2d")} if cut else {})
    uncut = dataclasses.replace(preset, cuts={})
    hours = [laptop_cuts.projected_hours(uncut)]
    for n in range(1, len(laptop_cuts.cut_order(preset))):
        done = sum(laptop_cuts.cut_order(preset)[:n], ())
        hours.append(laptop_cuts.projected_hours(dataclasses.replace(preset, cuts={
            "halfcheetah": done, "walker2d": done})))  # fmt: skip
    items = {(): 0, CONTROLS: 1}.get(cut, 2)
    assert hours[items] <= laptop_cuts.HOURS  # it fits after these cuts
    assert all(h > laptop_cuts.HOURS for h in hours[:items])  # and not after fewer
    assert laptop_cuts.projected_hours(preset) == hours[items]
    if cut:
        assert preset.cut_note.startswith(f"cut on halfcheetah, walker2d (results/laptop/PLAN.md)"
                                          f": {', '.join(cut)} (projected {hours[0]:.1f} h on 2 "
                                          f"workers > 8 h")  # fmt: skip
        assert preset.cut_note.endswith(f"{hours[items]:.1f} h after the cuts)")
    else:
        assert preset.cut_note.startswith("nothing cut") and f"{hours[0]:.1f} h" in preset.cut_note


def test_the_rule_never_cuts_hopper_and_says_when_it_cannot_fit(tmp_path):
    preset = presets.laptop(budgets(tmp_path, 20000, 20000, 20000))
    assert "hopper" not in preset.cuts
    assert preset.cuts["walker2d"] == (*CONTROLS, "synthetic")  # mini's 3 blocks: none to cut
    assert "every item cut, the study still exceeds 8 h: " in preset.cut_note
    hopper = plan(preset)[0]
    assert {k.role for k in hopper.main} >= {"synthetic", *CONTROLS}
    # Hopper alone: no cut to decide, but the learning rate needs every task's budget
    alone = presets.laptop(budgets(tmp_path, 2500, 2500, 2500), ["hopper"])
    assert alone.cuts == {} and alone.cut_note == ""
    with pytest.raises(DtlensError, match="no learning rate has a converged budget on every task"):
        presets.laptop(budgets(tmp_path, 2500, 0, 0), ["hopper"])


def test_block_replacement_keeps_the_first_middle_and_last_block(tmp_path):
    preset = presets.laptop(budgets(tmp_path, 2500, 2500, 2500))
    assert laptop_cuts.cut_order(preset)[2] == ()  # 3 blocks: nothing to cut
    six = dataclasses.replace(preset, block_swap_size=dataclasses.replace(MINI, n_layers=6))
    assert laptop_cuts.cut_order(six)[2] == ("block 1", "block 3", "block 4")


def test_plan_omits_exactly_the_cut_runs(tmp_path):
    preset = presets.laptop(budgets(tmp_path, 2500, 2500, 2500))
    uncut = dataclasses.replace(preset, cuts={})
    cuts = {"walker2d": ("synthetic", "block 1")}
    cut = dataclasses.replace(preset, cuts=cuts)
    for before, after in zip(plan(uncut), plan(cut), strict=True):
        gone = {s.name for s in before.specs()} - {s.name for s in after.specs()}
        assert not {s.name for s in after.specs()} - {s.name for s in before.specs()}
        if before.label != "walker2d":
            assert not gone
            continue
        expected = {before.main[RunKey("synthetic", s)].name for s in preset.seeds}
        expected |= {before.block_swap[RunKey("block 1", s, 1)].name for s in preset.seeds}
        assert gone == expected
        assert {k.role for k in after.block_swap} == {"random", "block 0", "block 2", "donor"}
        # the donor run is also the K=1 language run of no context: it stays
        assert after.block_swap[RunKey("donor", 666, 1)] == after.no_context[
            RunKey("language", 666, 1)]  # fmt: skip
    with pytest.raises(DtlensError, match="cannot cut random"):
        dataclasses.replace(preset, cuts={"walker2d": ("random",)})


def test_dry_run_lists_the_cuts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["reproduce", "--preset", "laptop", "--dry-run", "--device", "cpu", "--workers", "1"]
    args += ["--budget", "smoke", "--tasks", "walker2d", "--seeds", "666"]
    args += ["--budget-file", str(budgets(tmp_path, 2500, 2500, 2500))]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "cuts: cut on halfcheetah, walker2d (results/laptop/PLAN.md): shuffled:text, " in (
        result.output)  # fmt: skip
    assert "  cut (the preset's rule, above): shuffled:text, matched:text, synthetic" in (
        result.output)  # fmt: skip
    assert "synthetic-K20" not in result.output and "random-K20" in result.output


def test_report_names_a_role_cut_on_one_task(tmp_path):
    """A reproduction folder (no runs yet) of the laptop preset with synthetic and the two
    controls cut on Walker2d: every section renders and names the cut."""
    preset = presets.laptop(budgets(tmp_path, 2500, 2500, 2500), ["hopper", "walker2d"])
    preset = presets.narrow(preset, ["hopper", "walker2d"])
    plans = plan(preset)
    out = tmp_path / "study"
    out.mkdir()
    save_json({"preset": "laptop", "datasets": preset.datasets, "seeds": list(preset.seeds),
               "inits": preset.roles, "roles": {p.label: p.roles() for p in plans},
               "cuts": {t: list(c) for t, c in preset.cuts.items() if t in preset.datasets},
               "cut_note": preset.cut_note}, out / "reproduce.json")  # fmt: skip
    text = write_report(out).read_text()
    assert f"Conditions: {preset.cut_note}." in text.split("## ")[0]
    table1 = text.split("## Normalized score across tasks (Table 1)")[1].split("##")[0]
    synthetic = next(line for line in table1.splitlines() if line.startswith("| synthetic |"))
    assert synthetic.split(" | ")[3] == "cut (PLAN)"  # walker2d (here)
    assert synthetic.split(" | ")[1] != "cut (PLAN)"  # hopper (here)
    walker = text.split("## walker2d")[1].split("### Normalized score (Table 1)")[1]
    assert "| shuffled:text | cut (PLAN) |" in walker.split("###")[0]
    controls = text.split("## What in the pretrained weights matters")[1]
    shuffled = controls.split("### language vs shuffled:text")[1].split("###")[0]
    assert "*shuffled:text* was cut on walker2d" in shuffled
    assert "'across tasks' combines hopper only" in shuffled
    assert "| cut (PLAN) |" in shuffled and " on hopper (p " in shuffled
