"""The embedded behaviour policies: their files match the manifest and they still act as
recorded (the datasets are collected from them)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from dtlens.data.policy import POLICY_DIR, evaluate_policy, load_policy
from dtlens.errors import DtlensError
from dtlens.io import load_json
from dtlens.paths import portable_path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
POLICIES = sorted(load_json(POLICY_DIR / "manifest.json"))


def test_every_embedded_policy_is_in_the_manifest():
    files = sorted(p.stem for p in POLICY_DIR.glob("*.safetensors"))
    assert files == POLICIES and len(POLICIES) == 6


@pytest.mark.slow
@pytest.mark.parametrize("name", POLICIES)
def test_policy_reaches_its_recorded_return(name):
    """One deterministic episode (seed 0, as recorded) reaches 80% of the recorded mean."""
    policy = load_policy(name)
    recorded = load_json(POLICY_DIR / "manifest.json")[name]["return_mean"]
    (achieved,) = evaluate_policy(policy, policy.env_id, episodes=1, seed=0)
    assert achieved >= 0.8 * recorded, (name, achieved, recorded)


@pytest.mark.parametrize("part", ["safetensors", "json"])
def test_a_policy_that_does_not_match_its_manifest_is_refused(tmp_path, part):
    for f in POLICY_DIR.iterdir():
        shutil.copy(f, tmp_path / f.name)
    load_policy("hopper-medium", folder=tmp_path)  # intact copies load
    target = tmp_path / f"hopper-medium.{part}"
    if part == "json":
        target.write_text(target.read_text().replace('"quality": "medium"', '"quality": "expert"'))
    else:
        data = bytearray(target.read_bytes())
        data[-1] ^= 1
        target.write_bytes(bytes(data))
    with pytest.raises(DtlensError, match="do not match the manifest") as err:
        load_policy("hopper-medium", folder=tmp_path)
    assert "\n" not in str(err.value)
    load_policy("hopper-expert", folder=tmp_path)  # the others still load


def test_an_unrecorded_policy_is_refused_in_one_line(tmp_path):
    for f in POLICY_DIR.glob("hopper-medium.*"):
        shutil.copy(f, tmp_path / f.name)
    with pytest.raises(DtlensError, match="no entry in"):
        load_policy("hopper-medium", folder=tmp_path)


def test_cli_collect_with_an_unknown_policy_is_one_line(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "data",
            "collect",
            "--env",
            "Hopper-v5",
            "--policy",
            "nope",
            "--transitions",
            "10",
            "--out",
            str(tmp_path / "x.hdf5"),
        ],
    )
    assert result.exit_code != 0 and "unknown policy" in result.output
    assert len(result.output.strip().splitlines()) == 1


def _train_policies_script():
    spec = importlib.util.spec_from_file_location("train_policies", SCRIPTS / "train_policies.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_policy_training_ends_at_the_target_on_consecutive_evaluations():
    script = _train_policies_script()
    at = {"return_mean": 9652.0}  # HalfCheetah: normalized 80.0
    below = {"return_mean": 9600.0}
    assert script.TARGET_EVALS == 2
    assert script.target_reached([below, at, at], "HalfCheetah-v5", 80.0)
    assert not script.target_reached([at, below], "HalfCheetah-v5", 80.0)
    assert not script.target_reached([at], "HalfCheetah-v5", 80.0)  # one evaluation is noise
    assert not script.target_reached([at, at], "HalfCheetah-v5", None)  # no target: timesteps


def test_the_medium_checkpoint_sits_where_d4rl_medium_sits_relative_to_expert(monkeypatch):
    import numpy as np

    from dtlens.data.scores import REF_MIN_MAX

    script = _train_policies_script()
    lo, hi = REF_MIN_MAX["halfcheetah"]
    ret = {n: lo + n / 100 * (hi - lo) for n in (20, 29, 36, 39, 60, 85)}  # normalized -> return
    rows = [{"step": 10_000 * i, "return_mean": ret[n]} for i, n in enumerate((20, 29, 36, 39, 60))]
    # D4RL's halfcheetah medium sits at 41/93 of its expert: target 37.5 for an expert at 85
    expert = {"step": 100_000, "selection_return_mean": ret[85]}
    forward = dict.fromkeys(ret.values(), 5.0) | {ret[36]: 0.5}  # 36 only balances in place

    def rollout_stats(policy, env_id, episodes, seed):  # a checkpoint's return stands for it
        return {
            "returns": np.full(episodes, policy),
            "x_position": np.full(episodes, forward[policy]),
        }

    by_step = {r["step"]: r["return_mean"] for r in rows}
    monkeypatch.setattr(script.MLPPolicy, "load", lambda path: by_step[int(path.name[5:])])
    monkeypatch.setattr(script, "rollout_stats", rollout_stats)
    picked = script.pick_medium(rows, expert, Path("/none"), "HalfCheetah-v5")
    assert picked["step"] == 30_000  # normalized 39: 36 stands still, 29 is 23% off the target
    with pytest.raises(SystemExit, match="no earlier checkpoint within 20% of 37.5"):
        script.pick_medium(rows[:3], expert, Path("/none"), "HalfCheetah-v5")


def test_the_recorded_rebuild_command_names_the_home_folder_as_tilde():
    home = Path.home()
    assert portable_path(str(home / ".cache/dtlens/policies/walker2d")) == (
        "~/.cache/dtlens/policies/walker2d"
    )
    assert portable_path("~/a b") == "~/'a b'"
    assert portable_path("runs/policies/hopper") == "runs/policies/hopper"  # as given
    assert portable_path("/elsewhere/x") == "/elsewhere/x"
