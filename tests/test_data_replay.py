"""The approximate medium-replay buffer and the derived medium-expert id: their building blocks
(schedule, mixed policy, concatenation) and `data collect --id` on both, in a temporary manifest."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from dtlens.data import load_dataset, read_d4rl, registry
from dtlens.data.collect import MixedPolicy, concatenate_episodes, replay_schedule
from dtlens.data.manifest import arrays_sha256, read_manifest
from dtlens.data.policy import load_policy
from dtlens.errors import DtlensError
from dtlens.io import load_json, save_json
from dtlens.paths import DATASET_ASSETS


def test_replay_schedule():
    schedule = np.asarray(replay_schedule(3, (0.5, 0.1)))
    assert schedule == pytest.approx(np.array([[0.0, 0.5], [0.5, 0.3], [1.0, 0.1]]))
    with pytest.raises(DtlensError, match=">= 2 stages"):
        replay_schedule(1, (0.5, 0.1))


def test_concatenate_closes_unfinished_episodes_only():
    def part(terminals, timeouts):
        n = len(terminals)
        return {
            "rewards": np.arange(n, dtype=np.float32),
            "terminals": np.array(terminals),
            "timeouts": np.array(timeouts),
        }

    unfinished, terminal = part([0, 0], [0, 0]), part([0, 1], [0, 0])
    out = concatenate_episodes([unfinished, terminal, unfinished])
    assert out["rewards"].tolist() == [0, 1, 0, 1, 0, 1]
    assert out["timeouts"].tolist() == [0, 1, 0, 0, 0, 0]  # the last part stays unfinished
    assert out["terminals"].tolist() == [0, 0, 0, 1, 0, 0]
    assert not unfinished["timeouts"].any()  # the parts are not modified


def test_mixed_policy_interpolates_random_and_policy():
    policy = load_policy("hopper-medium")
    obs = np.linspace(-1, 1, policy.obs_dim).astype(np.float32)
    always = MixedPolicy(policy, 1.0).act(obs, 0.0, np.random.default_rng(0))
    assert np.array_equal(always, policy.act(obs))
    rng = np.random.default_rng(0)
    never = [MixedPolicy(policy, 0.0).act(obs, 0.0, rng) for _ in range(50)]
    assert all(not np.array_equal(a, always) and np.abs(a).max() <= 1.0 for a in never)
    rng = np.random.default_rng(0)
    half = [np.array_equal(MixedPolicy(policy, 0.5).act(obs, 0.0, rng), always) for _ in range(400)]
    assert 0.4 < np.mean(half) < 0.6


def test_collect_replay_id_is_deterministic(tmp_path, monkeypatch):
    from cli.data import app as data_app

    assets, cache = tmp_path / "assets", tmp_path / "cache"
    monkeypatch.setenv("DTLENS_CACHE", str(cache))
    monkeypatch.setattr(registry, "ASSET_DIR", assets)
    spec = registry.ReplaySpec("Hopper-v5", transitions=300, stages=3)
    monkeypatch.setitem(registry.EMBEDDED, "mini/hopper-medium-replay", spec)
    cli = CliRunner()
    args = ["collect", "--id", "mini/hopper-medium-replay"]
    result = cli.invoke(data_app, [*args, "--update-manifest"])
    assert result.exit_code == 0, result.output
    entry = load_json(assets / "manifest.json")["mini/hopper-medium-replay"]
    assert entry["spec"] == spec.record() and entry["spec"]["noise"] == [0.5, 0.1]
    ds = load_dataset("mini/hopper-medium-replay", env_id="Hopper-v5")
    assert len(ds) == 300 and ds.metadata["stages"] == 3
    assert {100, 200} <= set(ds.boundaries.tolist())  # each stage ends its last episode
    assert ds.metadata["description"] == spec.description
    result = cli.invoke(data_app, args)  # a second collection, into the cache
    assert "identical to the shipped bytes" in result.output, result.output


def test_record_derived_reproduces_the_shipped_hash(tmp_path, monkeypatch):
    from cli.data import app as data_app

    manifest = read_manifest(DATASET_ASSETS)
    shipped = manifest.pop("mini/hopper-medium-expert")
    for dataset_id in ("mini/hopper-medium", "mini/hopper-expert"):
        name = manifest[dataset_id]["file"]
        (tmp_path / name).symlink_to(DATASET_ASSETS / name)
    save_json(manifest, tmp_path / "manifest.json")
    monkeypatch.setattr(registry, "ASSET_DIR", tmp_path)
    args = ["collect", "--id", "mini/hopper-medium-expert", "--update-manifest"]
    out = tmp_path / "medium-expert.hdf5"
    result = CliRunner().invoke(data_app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "no hash was recorded before" in result.output
    assert load_json(tmp_path / "manifest.json")["mini/hopper-medium-expert"] == shipped
    assert arrays_sha256(read_d4rl(out).arrays()) == shipped["sha256"]
    result = CliRunner().invoke(data_app, args)
    assert "the same as the recorded hash" in result.output, result.output
