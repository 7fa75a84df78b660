"""The embedded datasets shipped in dtlens/assets/datasets: bytes, manifest, dims, integrity."""

from __future__ import annotations

import hashlib
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


def test_every_embedded_id_is_shipped_with_its_spec():
    assert sorted(MANIFEST) == sorted(EMBEDDED)
    for dataset_id, spec in EMBEDDED.items():
        entry = MANIFEST[dataset_id]
        assert entry["file"] == registry.shipped_file(dataset_id).name
        assert entry["spec"] == spec.record()  # same spec and the same policy weights
    sizes = [(DATASET_ASSETS / e["file"]).stat().st_size for e in MANIFEST.values()]
    assert sum(sizes) < 40_000_000


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
    env = gym.make(spec.env_id)
    assert env.observation_space.shape == (ds.obs_dim,) == (11,)
    assert env.action_space.shape == (ds.act_dim,) == (3,)
    env.close()
    assert np.abs(ds.actions).max() <= 1.0
    with h5py.File(DATASET_ASSETS / entry["file"]) as f:
        for key in ("observations", "next_observations", "actions", "rewards"):
            assert f[key].dtype == np.float32 and f[key].compression == "gzip", key
        assert f.attrs["quality"] == spec.quality


def test_qualities_are_ordered():
    means = [MANIFEST[f"mini/hopper-{q}"]["stats"]["return_mean"] for q in QUALITIES]
    assert means == sorted(means) and means[0] < 100 < 1000 < means[1] < means[2]


def test_corrupted_copy_is_refused(tmp_path, monkeypatch):
    from cli.data import data_app

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
    from cli.data import data_app

    result = CliRunner().invoke(data_app, ["info", "mini/hopper-medium"])
    assert result.exit_code == 0, result.output
    sha = MANIFEST["mini/hopper-medium"]["sha256"]
    assert f"sha256 {sha} (matches the manifest)" in result.output
    assert f"{MANIFEST['mini/hopper-medium']['stats']['episodes']:,}" in result.output
