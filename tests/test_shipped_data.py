"""The embedded datasets shipped in dtlens/assets/datasets: bytes, manifest, dims, integrity."""

from __future__ import annotations

import hashlib
import json
import shutil

import gymnasium as gym
import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from dtlens.data import EMBEDDED, load_dataset, registry
from dtlens.data.manifest import read_manifest
from dtlens.errors import DtlensError
from dtlens.paths import DATASET_ASSETS

MANIFEST = read_manifest(DATASET_ASSETS)
QUALITIES = ("random", "medium", "expert")
DIMS = {"Hopper-v5": (11, 3), "HalfCheetah-v5": (17, 6), "Walker2d-v5": (17, 6)}  # obs, act


def test_every_embedded_id_is_shipped_with_its_spec():
    assert sorted(MANIFEST) == sorted([*EMBEDDED, *registry.DERIVED])
    for dataset_id, spec in EMBEDDED.items():
        entry = MANIFEST[dataset_id]
        assert entry["file"] == registry.shipped_file(dataset_id).name
        assert entry["spec"] == spec.record()  # same spec and the same policy weights
    for dataset_id, derived in registry.DERIVED.items():
        assert "file" not in MANIFEST[dataset_id]  # built on load
        assert MANIFEST[dataset_id]["spec"] == derived.record()  # the parts' current hashes
    sizes = [(DATASET_ASSETS / e["file"]).stat().st_size for e in MANIFEST.values() if "file" in e]
    # eight collections of 100k transitions (gzip) and three held-out sets of 20k: 94.6 MB
    assert sum(sizes) < 100_000_000


@pytest.mark.parametrize("dataset_id", sorted(EMBEDDED))
def test_file_bytes_match_the_manifest_hash(dataset_id):
    entry = MANIFEST[dataset_id]
    data = (DATASET_ASSETS / entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]


@pytest.mark.parametrize("dataset_id", sorted(EMBEDDED))
def test_manifest_stats_and_dims(dataset_id):
    entry, spec = MANIFEST[dataset_id], EMBEDDED[dataset_id]
    ds = load_dataset(dataset_id, env_id=spec.env_id)
    assert ds.name == dataset_id and ds.metadata["sha256"] == entry["sha256"]
    assert ds.stats() == entry["stats"]
    assert len(ds) == spec.transitions
    obs_dim, act_dim = DIMS[spec.env_id]
    env = gym.make(spec.env_id)
    assert env.observation_space.shape == (ds.obs_dim,) == (obs_dim,)
    assert env.action_space.shape == (ds.act_dim,) == (act_dim,)
    env.close()
    assert np.abs(ds.actions).max() <= 1.0
    with h5py.File(DATASET_ASSETS / entry["file"]) as f:
        for key in ("observations", "next_observations", "actions", "rewards"):
            assert f[key].dtype == np.float32 and f[key].compression == "gzip", key
        assert f.attrs["quality"] == spec.quality


def test_qualities_are_ordered():
    means = [MANIFEST[f"mini/hopper-{q}"]["stats"]["return_mean"] for q in QUALITIES]
    assert means == sorted(means) and means[0] < 100 < 1000 < means[1] < means[2]
    for task in ("halfcheetah", "walker2d"):
        medium, expert = (
            MANIFEST[f"mini/{task}-{q}"]["stats"]["return_mean"] for q in QUALITIES[1:]
        )
        assert 1.5 * medium < expert, task


def test_medium_expert_is_medium_then_expert():
    ds = load_dataset("mini/hopper-medium-expert", env_id="Hopper-v5")
    medium, expert = load_dataset("mini/hopper-medium"), load_dataset("mini/hopper-expert")
    for key, value in ds.arrays().items():
        if key != "timeouts":
            assert np.array_equal(
                value, np.concatenate([getattr(medium, key), getattr(expert, key)])
            )
    assert ds.num_episodes == medium.num_episodes + expert.num_episodes  # no episode spans both
    assert ds.timeouts[len(medium) - 1] and not medium.timeouts[-1] and not medium.terminals[-1]
    entry = MANIFEST["mini/hopper-medium-expert"]
    assert ds.metadata["sha256"] == entry["sha256"] and ds.stats() == entry["stats"]
    assert (ds.obs_dim, ds.act_dim) == DIMS["Hopper-v5"]


def test_derived_id_with_other_arrays_is_refused(tmp_path, monkeypatch):
    for entry in MANIFEST.values():
        if "file" in entry:
            (tmp_path / entry["file"]).symlink_to(DATASET_ASSETS / entry["file"])
    manifest = {**MANIFEST, "mini/hopper-medium-expert": {**MANIFEST["mini/hopper-medium-expert"]}}
    manifest["mini/hopper-medium-expert"]["sha256"] = "0" * 64
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(registry, "ASSET_DIR", tmp_path)
    with pytest.raises(DtlensError, match="its arrays have sha256 e552.*the manifest says 0000"):
        load_dataset("mini/hopper-medium-expert")
    del manifest["mini/hopper-medium-expert"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DtlensError, match="not recorded.*--update-manifest"):
        load_dataset("mini/hopper-medium-expert")


def test_replay_quality_rises_across_the_buffer():
    ds = load_dataset("mini/hopper-medium-replay", env_id="Hopper-v5")
    stages, size = 10, 10_000
    starts = ds.boundaries
    assert set(range(size, len(ds) + 1, size)) <= set(starts.tolist())  # stages end episodes
    stage_of_episode = starts[:-1] // size
    means = [ds.episode_returns[stage_of_episode == i].mean() for i in range(stages)]
    assert means == sorted(means) and means[0] < 50 and means[-1] > 1000
    assert "approximate replay buffer, not a learner's" in ds.metadata["description"]


def test_info_says_how_a_dataset_was_made():
    from cli.data import app as data_app

    result = CliRunner().invoke(data_app, ["info", "mini/hopper-medium-replay"])
    assert result.exit_code == 0, result.output
    assert "made as: approximate replay buffer" in result.output
    result = CliRunner().invoke(data_app, ["info", "mini/hopper-medium-expert"])
    assert result.exit_code == 0, result.output
    sha = MANIFEST["mini/hopper-medium-expert"]["sha256"]
    assert f"sha256 {sha} (of the arrays built from its parts; matches)" in result.output
    result = CliRunner().invoke(data_app, ["collect", "--id", "mini/hopper-medium-expert"])
    assert result.exit_code == 1 and "--update-manifest records its hash" in result.output


def test_corrupted_copy_is_refused(tmp_path, monkeypatch):
    from cli.data import app as data_app

    assets = tmp_path / "datasets"
    shutil.copytree(DATASET_ASSETS, assets)
    monkeypatch.setattr(registry, "ASSET_DIR", assets)
    assert len(load_dataset("mini/hopper-random")) == 100_000  # the intact copy loads
    path = assets / "hopper-random.hdf5"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DtlensError, match="shipped file of mini/hopper-random is corrupt"):
        load_dataset("mini/hopper-random")
    result = CliRunner().invoke(data_app, ["info", "mini/hopper-random"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "corrupt" in lines[0] and "git checkout" in lines[0], result.output
    path.unlink()
    with pytest.raises(DtlensError, match="hopper-random is missing: restore it"):
        load_dataset("mini/hopper-random")
    (assets / "manifest.json").unlink()
    with pytest.raises(DtlensError, match="mini/hopper-medium: not shipped"):
        load_dataset("mini/hopper-medium")


def test_info_prints_the_verified_hash():
    from cli.data import app as data_app

    result = CliRunner().invoke(data_app, ["info", "mini/hopper-medium"])
    assert result.exit_code == 0, result.output
    sha = MANIFEST["mini/hopper-medium"]["sha256"]
    assert f"sha256 {sha} (matches the manifest)" in result.output
    assert f"{MANIFEST['mini/hopper-medium']['stats']['episodes']:,}" in result.output
