"""`dtlens reproduce` end to end at tiny sizes, through a dask LocalCluster; resuming; bad input."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from dtlens.diagnostics.contract import RunKey
from dtlens.experiments.presets import Preset, narrow
from dtlens.experiments.reproduce import plan, record_command, recorded_commands, reproduce
from dtlens.interp.registry import INTERP
from dtlens.io import load_json
from dtlens.model.backbones import random_backbone, save_backbone
from dtlens.report.report import write_report
from tests.conftest import TINY, tiny_train_config

runner = CliRunner()


def tiny_preset(dataset: Path, folder: Path) -> Preset:
    """The mini preset's shape at tiny sizes: random, 'language' and 'image' tiny backbones."""
    language = save_backbone(random_backbone(TINY, seed=11), folder / "language.safetensors")
    image = save_backbone(random_backbone(TINY, seed=12), folder / "image.safetensors")
    return Preset(
        name="tiny",
        datasets={"hopper": str(dataset)},
        env_ids={"hopper": None},
        random="random",
        language=str(language),
        image=str(image),
        train=tiny_train_config(dataset, epochs=2, probe_size=24),
        block_swap_size=TINY,
        attention_epochs=(0, 1, 2),
        mi_seeds=1,
        probe_size=24,
        seeds=(666, 1),
    )


@pytest.mark.slow
def test_reproduce_end_to_end_on_a_local_cluster(hopper_file, tmp_path):
    preset = tiny_preset(hopper_file, tmp_path)
    out = tmp_path / "repro"
    logs: list[str] = []
    report = write_report(reproduce(preset, out, workers=2, log=logs.append))
    text = report.read_text()
    for section in (
        "1. Representation change",
        "2. Information",
        "3. Weight change",
        "4. Gradients",
        "5. Training without context",
        "6. Single-block",
        "7. Attention distance",
        "Normalized score (Table 1)",
        "Summary",
    ):
        assert section in text, section
    assert "FAILED" not in "\n".join(logs), logs
    assert (out / "report.html").stat().st_size > 1000
    (p,) = plan(preset)
    for spec in p.specs():
        run = out / "hopper" / "runs" / spec.name
        assert (run / "checkpoints" / "epoch-0002.safetensors").is_file(), spec.name
    main = out / "hopper" / "runs" / p.main[RunKey("random", 666)].name
    for name in ("cka", "weights", "gradients", "mutual_info"):
        assert (main / "diagnostics" / f"{name}.nc").is_file(), name
        assert (main / "figures" / f"{name}.png").is_file(), name
    k1 = out / "hopper" / "runs" / p.no_context[RunKey("random", 666, 1)].name
    assert (k1 / "diagnostics" / "attention.nc").is_file()
    for study in ("no_context", "block_swap"):
        assert (out / "hopper" / "diagnostics" / f"{study}.nc").is_file()
        assert (out / "hopper" / "figures" / f"{study}.png").is_file()
    summary = text.split("## Summary")[1].splitlines()
    verdicts = [line for line in summary if line.startswith("| hopper") and "two-sided" not in line]
    assert len(verdicts) == 7
    assert all(any(f"**{v}**" in line for v in ("holds", "contradicted", "undetermined"))
               for line in verdicts), verdicts  # fmt: skip
    # interp: language vs random, read two-sided (dtlens.report.components)
    assert "Which components carry the difference" in text
    directions = ("language > random", "language < random", "no difference shown")
    components = [line for line in summary if line.startswith("| hopper") and "two-sided" in line]
    compared = [d for d in INTERP.values() if d.finding is not None and d.reads is not None]
    assert len(components) == len(compared) == 4
    assert all(any(f"**{d}**" in line for d in directions) for line in components), components
    assert (out / "hopper" / "diagnostics" / "cross_patching.nc").is_file()
    for name in ("attribution", "action_lens", "probe"):
        assert (main / "diagnostics" / f"{name}.nc").is_file(), name
    assert (main / "figures" / "attention-view.html").is_file()
    assert (main / "diagnostics" / "ablation.nc").is_file() and "What the policy needs" in text
    images = [line for line in text.splitlines() if line.startswith("![")]
    assert len(images) >= 12 and all((out / i.split("](")[1][:-1]).is_file() for i in images)
    # `dtlens report` rebuilds the report from the saved results alone.
    report.unlink()
    res = runner.invoke(app, ["report", str(out)])
    assert res.exit_code == 0 and report.read_text() == text


SCRIPT = """
import sys
from pathlib import Path
from tests.test_reproduce import tiny_preset
from dtlens.experiments.reproduce import reproduce
data, folder, out = map(Path, sys.argv[1:])
preset = tiny_preset(data, folder)
reproduce(preset, out, workers=1, log=lambda m: print(m, flush=True))
"""


@pytest.mark.slow
def test_interrupted_reproduction_resumes_without_redoing_finished_runs(hopper_file, tmp_path):
    out = tmp_path / "repro"
    cmd = [sys.executable, "-c", SCRIPT, str(hopper_file), str(tmp_path), str(out)]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).parents[1], stdout=subprocess.PIPE, text=True)
    finished = []
    for line in proc.stdout:  # kill it as soon as two runs have finished
        if line.strip().startswith("trained"):
            finished.append(line.split()[1])
        if len(finished) == 2:
            proc.kill()
            break
    proc.wait(timeout=60)
    assert len(finished) == 2
    stamps = {
        n: (out / "hopper" / "runs" / n / "state.safetensors").stat().st_mtime_ns for n in finished
    }
    time.sleep(0.01)
    logs: list[str] = []
    write_report(reproduce(tiny_preset(hopper_file, tmp_path), out, workers=1, log=logs.append))
    for name in finished:
        assert any(line.split()[:2] == ["done", name] for line in logs), (name, logs)
        assert (out / "hopper" / "runs" / name / "state.safetensors").stat().st_mtime_ns == stamps[
            name
        ]
    assert (out / "report.md").is_file()


def test_folder_of_another_preset_is_refused_and_kept(hopper_file, tmp_path):
    out = tmp_path / "repro"
    out.mkdir()
    (out / "reproduce.json").write_text('{"preset": "paper"}')
    (out / "keep.txt").write_text("x")
    with pytest.raises(Exception, match="holds results of the 'paper' preset"):
        reproduce(tiny_preset(hopper_file, tmp_path), out, workers=1, log=lambda m: None)
    assert (out / "keep.txt").read_text() == "x"
    assert '"paper"' in (out / "reproduce.json").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "paper"], "--gpt2 is required"),
        (
            ["--preset", "paper", "--gpt2", "nowhere", "--imagegpt", "x", "--d4rl-dir", "y"],
            "--gpt2 nowhere: no HF model directory",
        ),
        (["--preset", "huge"], "unknown preset"),
    ],
)
def test_reproduce_cli_bad_input(args, message, tmp_path):
    res = runner.invoke(app, ["reproduce", "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 1 and message in res.output, res.output
    assert not (tmp_path / "o").exists()


def test_paper_preset_names_the_missing_d4rl_file(tmp_path):
    for name in ("gpt2", "igpt"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    (tmp_path / "d4rl").mkdir()
    (tmp_path / "d4rl" / "hopper-medium-v2.hdf5").write_bytes(b"")
    res = runner.invoke(
        app,
        [
            "reproduce",
            "--out",
            str(tmp_path / "o"),
            "--preset",
            "paper",
            "--gpt2",
            str(tmp_path / "gpt2"),
            "--imagegpt",
            str(tmp_path / "igpt"),
            "--d4rl-dir",
            str(tmp_path / "d4rl"),
        ],
    )
    assert res.exit_code == 1 and "missing halfcheetah-medium-v2.hdf5" in res.output


def test_report_cli_on_a_folder_that_is_not_a_reproduction(tmp_path):
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 1 and "not a reproduction folder" in res.output


@pytest.mark.slow
def test_invocations_narrowed_to_tasks_add_up_in_one_folder(hopper_file, tmp_path):
    both = dataclasses.replace(
        tiny_preset(hopper_file, tmp_path),
        datasets={"a": str(hopper_file), "b": str(hopper_file)},
        env_ids={"a": None, "b": None},
        seeds=(666,),
    )
    out, quiet = tmp_path / "repro", lambda m: None
    reproduce(narrow(both, ["a"]), out, workers=1, log=quiet)
    first = load_json(out / "reproduce.json")
    reproduce(narrow(both, ["b"]), out, workers=1, log=quiet)
    meta = load_json(out / "reproduce.json")
    assert list(meta["datasets"]) == ["a", "b"] and list(meta["roles"]) == ["a", "b"]
    assert meta["roles"]["a"] == first["roles"]["a"]
    assert meta["wall_time_s"] > first["wall_time_s"]  # the sum over both invocations
    text = write_report(out).read_text()
    assert "\n## a\n" in text and "\n## b\n" in text


def test_every_invocation_command_is_recorded_once(tmp_path):
    (tmp_path / "reproduce.json").write_text('{"preset": "mini", "command": "dtlens a"}')
    record_command(tmp_path, "dtlens b")
    record_command(tmp_path, "dtlens a")  # run again: it moves last, once
    meta = load_json(tmp_path / "reproduce.json")
    assert "command" not in meta and recorded_commands(meta) == ["dtlens b", "dtlens a"]
