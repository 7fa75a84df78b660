"""Readers, dataset type, scores and trajectory windows of dtlens.data."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dtlens.data import (
    OfflineDataset,
    WindowSampler,
    dataset_normalized_score,
    load_batch,
    load_dataset,
    normalized_score,
    probe_batch,
    read_d4rl,
    read_minari,
    save_batch,
    target_return,
    write_d4rl,
)
from dtlens.data.scores import env_name
from dtlens.data.windows import episode_returns_to_go
from dtlens.errors import DtlensError


def make_arrays(lengths=(3, 5, 2), obs_dim=11, act_dim=3, ends=None, seed=0):
    """D4RL arrays of consecutive episodes; `ends[i]` is 'terminal', 'timeout' or None."""
    ends = ends or ["terminal"] * len(lengths)
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    arrays = {
        "observations": rng.standard_normal((n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
        "rewards": np.arange(1, n + 1, dtype=np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": np.zeros(n, bool),
    }
    last = np.cumsum(lengths) - 1
    for i, end in zip(last, ends, strict=True):
        if end is not None:
            arrays[f"{end}s"][i] = True
    return arrays


def dataset(lengths=(3, 5, 2), **kwargs) -> OfflineDataset:
    return OfflineDataset.from_arrays(make_arrays(lengths, **kwargs), env_id="Hopper-v5")


# --- episodes, statistics ---------------------------------------------------------------
def test_split_at_terminals_timeouts_and_trailing_segment():
    arrays = make_arrays((3, 4, 2, 3), ends=["terminal", "timeout", "terminal", None])
    ds = OfflineDataset.from_arrays(arrays)
    assert ds.num_episodes == 4
    np.testing.assert_array_equal(ds.episode_lengths, [3, 4, 2, 3])
    np.testing.assert_array_equal(ds.boundaries, [0, 3, 7, 9, 12])
    np.testing.assert_array_equal(ds.episode(1)["rewards"], [4, 5, 6, 7])
    np.testing.assert_allclose(ds.episode_returns, [6, 22, 17, 33])
    assert len(ds.episodes) == 4 and ds.episodes[3]["observations"].shape == (3, 11)


def test_stats_and_state_normalisation():
    arrays = make_arrays((3, 5, 2))
    arrays["observations"][:, 0] = 7.0  # constant column: std clamped
    ds = OfflineDataset.from_arrays(arrays, name="x")
    stats = ds.stats()
    assert (stats["episodes"], stats["transitions"]) == (3, 10)
    returns = [6, 4 + 5 + 6 + 7 + 8, 9 + 10]
    assert stats["return_mean"] == pytest.approx(np.mean(returns))
    assert stats["return_std"] == pytest.approx(np.std(returns))
    assert (stats["return_min"], stats["return_max"]) == (6, 30)
    assert ds.state_std[0] == pytest.approx(1e-6)
    np.testing.assert_allclose(ds.state_mean, arrays["observations"].mean(0), rtol=1e-6)
    assert (ds.obs_dim, ds.act_dim) == (11, 3)


def test_from_episodes_marks_unmarked_ends():
    eps = [{k: v[:4] for k, v in make_arrays((4,)).items()} for _ in range(2)]
    eps[0]["terminals"] = np.zeros(4, bool)
    ds = OfflineDataset.from_episodes(eps)
    assert ds.num_episodes == 2 and ds.timeouts[3]


def test_rewards_n_by_1_squeezed():
    arrays = make_arrays((4,))
    arrays["rewards"] = arrays["rewards"][:, None]
    assert OfflineDataset.from_arrays(arrays).rewards.shape == (4,)


# --- D4RL files -------------------------------------------------------------------------
def test_d4rl_round_trip(tmp_path):
    arrays = make_arrays((3, 4, 2), ends=["terminal", "timeout", None])
    arrays["next_observations"] = arrays["observations"] + 1
    arrays["infos/qpos"] = np.ones((9, 6))
    arrays["rewards"] = arrays["rewards"][:, None]
    meta = {"env_id": "Hopper-v5", "policy": "p", "quality": "medium", "seed": 3}
    path = write_d4rl(tmp_path / "d.hdf5", arrays, meta)
    with h5py.File(path) as f:
        assert f["rewards"].shape == (9,) and dict(f.attrs)["seed"] == 3
    ds = read_d4rl(path)
    assert (ds.env_id, ds.metadata["quality"], ds.metadata["policy"]) == (
        "Hopper-v5",
        "medium",
        "p",
    )
    for key in ("observations", "actions", "next_observations", "terminals", "timeouts"):
        np.testing.assert_array_equal(getattr(ds, key), arrays[key])
    np.testing.assert_array_equal(ds.rewards, arrays["rewards"][:, 0])
    np.testing.assert_array_equal(ds.metadata["infos"]["qpos"], np.ones((9, 6)))
    again = read_d4rl(write_d4rl(tmp_path / "e.h5", ds))
    np.testing.assert_array_equal(again.observations, ds.observations)
    assert again.env_id == "Hopper-v5" and "qpos" in again.metadata["infos"]
    assert load_dataset(tmp_path / "e.h5").num_episodes == 3


def test_minari_read(tmp_path, monkeypatch):
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    rng = np.random.default_rng(0)
    buffers = []
    for i, (n, terminal) in enumerate([(5, True), (7, False), (3, False)]):
        buffers.append(
            EpisodeBuffer(
                id=i,
                observations=rng.standard_normal((n + 1, 11)).astype(np.float32),
                actions=rng.uniform(-1, 1, (n, 3)).astype(np.float32),
                rewards=list(np.arange(n, dtype=float)),
                terminations=[False] * (n - 1) + [terminal],
                truncations=[False] * (n - 1) + [not terminal],
                infos={},
            )
        )
    with pytest.warns(UserWarning):  # minari asks for author, description, ...
        minari.create_dataset_from_buffers("test/tiny-v0", buffers, env="Hopper-v5")
    for source in ("test/tiny-v0", tmp_path / "test" / "tiny-v0"):
        ds = read_minari(source)
        assert ds.env_id == "Hopper-v5" and ds.num_episodes == 3
        np.testing.assert_array_equal(ds.episode_lengths, [5, 7, 3])
        np.testing.assert_array_equal(ds.episode(0)["observations"], buffers[0].observations[:-1])
        np.testing.assert_array_equal(ds.next_observations[5:12], buffers[1].observations[1:])
        assert ds.terminals[4] and ds.timeouts[11] and ds.timeouts[14]
    assert load_dataset("test/tiny-v0", env_id="Hopper-v5").num_episodes == 3


# --- bad input, through the CLI ---------------------------------------------------------
def bad_file(tmp_path, case):
    path = tmp_path / f"{case}.hdf5"
    arrays = make_arrays((3, 4))
    if case == "missing":
        return path, "file not found"
    if case == "not-hdf5":
        path.write_text("hello")
        return path, "not an HDF5 file"
    if case == "missing-key":
        del arrays["rewards"]
        key = "rewards"
    elif case == "lengths":
        arrays["actions"] = arrays["actions"][:-1]
        key = "actions"
    elif case == "nan":
        arrays["observations"][2, 1] = np.nan
        key = "observations"
    elif case == "inf":
        arrays["rewards"][0] = np.inf
        key = "rewards"
    elif case == "empty":
        arrays = {k: v[:0] for k, v in arrays.items()}
        key = "observations"
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f[k] = v
    return path, key


@pytest.mark.parametrize(
    "case", ["missing", "not-hdf5", "missing-key", "lengths", "nan", "inf", "empty"]
)
def test_bad_files_give_one_clear_error(tmp_path, case):
    from cli.data import app as data_app

    path, expected = bad_file(tmp_path, case)
    result = CliRunner().invoke(data_app, ["info", str(path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and str(path) in lines[0] and expected in lines[0]


def test_obs_dim_mismatch_with_env(tmp_path):
    from cli.data import app as data_app

    path = write_d4rl(tmp_path / "d.hdf5", make_arrays((3,), obs_dim=7), {"env_id": "x"})
    result = CliRunner().invoke(data_app, ["info", str(path), "--env", "Hopper-v5"])
    assert result.exit_code == 1
    line = result.output.strip()
    assert "\n" not in line and str(path) in line and "'observations'" in line
    with pytest.raises(DtlensError, match="'observations' has dim 7"):
        read_d4rl(path, env_id="Hopper-v5")


def test_unknown_source_and_embedded_id():
    with pytest.raises(DtlensError, match="nope: file not found"):
        load_dataset("nope")
    with pytest.raises(DtlensError, match="mini/nothing: unknown embedded dataset"):
        load_dataset("mini/nothing")


def test_info_table(tmp_path):
    from cli.data import app as data_app

    path = write_d4rl(tmp_path / "d.hdf5", make_arrays((3, 4)), {"env_id": "Hopper-v5"})
    result = CliRunner().invoke(data_app, ["info", str(path)])
    assert result.exit_code == 0, result.output
    for text in ("episodes", "transitions", "normalized score", "Hopper-v5", "observation dim"):
        assert text in result.output
    assert f"sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}\n" in result.output


def test_compressed_write_is_lossless_and_byte_stable(tmp_path):
    """Same arrays -> same bytes (no timestamps: the second write is a second later)."""
    arrays = make_arrays((3000, 2000), ends=["terminal", None])
    arrays["next_observations"] = arrays["observations"] + 1
    meta = {"env_id": "Hopper-v5", "seed": 0}
    first = write_d4rl(tmp_path / "a.hdf5", arrays, meta, compression=9)
    time.sleep(1.1)
    second = write_d4rl(tmp_path / "b.hdf5", arrays, meta, compression=9)
    assert first.read_bytes() == second.read_bytes()
    raw = write_d4rl(tmp_path / "raw.hdf5", arrays, meta)
    assert first.stat().st_size < raw.stat().st_size
    with h5py.File(first) as f:
        assert f["observations"].compression == "gzip" and f["observations"].shuffle
        assert f["observations"].chunks == (5000, 11)
    ds = read_d4rl(first)
    for key in ("observations", "next_observations", "actions", "rewards", "terminals"):
        np.testing.assert_array_equal(getattr(ds, key), arrays[key])


# --- scores -----------------------------------------------------------------------------
def test_normalized_scores():
    assert normalized_score("hopper-medium-v2", 3234.3) == pytest.approx(100.0)
    assert normalized_score("Hopper-v5", -20.272305) == pytest.approx(0.0)
    expected = 100 * (1000 + 280.178953) / (12135.0 + 280.178953)
    assert normalized_score("HalfCheetah-v5", 1000) == pytest.approx(expected)
    np.testing.assert_allclose(
        normalized_score("mini/walker2d-medium", [1.629008, 4592.3]), [0.0, 100.0]
    )
    assert dataset_normalized_score(60.0, random_mean=10.0, expert_mean=110.0) == 50.0
    assert (target_return("Hopper-v5"), target_return("walker2d-medium-v2")) == (3600, 5000)
    assert target_return("halfcheetah-expert-v2") == 6000
    assert env_name("mini/hopper-medium") == "hopper"
    with pytest.raises(DtlensError, match="Ant-v5: no reference scores"):
        normalized_score("Ant-v5", 1.0)


#: The behaviour data's floor per quality (normalized score of the mean episode return): D4RL's
#: medium-v2 data sit at 41-62 and its expert-v2 data at 93-108.
D4RL_LEVEL = {"medium": 30, "expert": 80}


@pytest.mark.parametrize("quality", sorted(D4RL_LEVEL))
@pytest.mark.parametrize("task", ["hopper", "halfcheetah", "walker2d"])
def test_the_shipped_behaviour_data_sit_at_d4rl_levels(task, quality):
    ds = load_dataset(f"mini/{task}-{quality}")
    score = normalized_score(ds.env_id, ds.stats()["return_mean"])
    assert score >= D4RL_LEVEL[quality], (task, quality, score)


# --- windows ----------------------------------------------------------------------------
def test_returns_to_go_by_hand():
    ds = dataset((3, 2), ends=["terminal", None])  # rewards 1..5
    np.testing.assert_allclose(episode_returns_to_go(ds.rewards, ds.boundaries), [6, 5, 3, 9, 5])
    sampler = WindowSampler(ds, context_len=3, rtg_scale=10.0)
    batch = sampler.windows(np.array([0, 1, 3]))
    np.testing.assert_allclose(
        batch.returns_to_go[:, :, 0], [[0.6, 0.5, 0.3], [0, 0.5, 0.3], [0, 0.9, 0.5]]
    )


def test_left_padding_masks_and_values():
    ds = dataset((3, 5, 2))
    sampler = WindowSampler(ds, context_len=4)
    batch = sampler.windows(np.array([1, 3, 8]))
    np.testing.assert_array_equal(batch.attention_mask, [[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1]])
    np.testing.assert_array_equal(batch.timesteps, [[0, 0, 1, 2], [0, 1, 2, 3], [0, 0, 0, 1]])
    states = (ds.observations - ds.state_mean) / ds.state_std
    np.testing.assert_allclose(batch.states[0, 2:], states[1:3], rtol=1e-6)
    np.testing.assert_array_equal(batch.actions[2, 2:], ds.actions[8:10])
    padding = batch.attention_mask == 0
    for t in (batch.states, batch.actions, batch.returns_to_go):
        assert (t[padding] == 0).all()
    assert batch.states.dtype == torch.float32 and batch.timesteps.dtype == torch.int64
    assert batch.attention_mask.dtype == torch.int64


def test_timesteps_clipped():
    ds = dataset((12,))
    batch = WindowSampler(ds, context_len=5, max_ep_len=8).windows(np.array([5]))
    np.testing.assert_array_equal(batch.timesteps, [[5, 6, 7, 7, 7]])


def test_sampling_weights_proportional_to_length():
    lengths = (10, 30, 60)
    ds = dataset(lengths)
    sampler = WindowSampler(ds, context_len=4)
    for generator in (np.random.default_rng(0), torch.Generator().manual_seed(0)):
        batch = sampler.sample(20_000, generator)
        # recover the episode of each window from its last real step's row in the flat arrays
        last_state = batch.states[:, -1].numpy()
        states = (ds.observations - ds.state_mean) / ds.state_std
        rows = np.argmin(((last_state[:, None] - states[None]) ** 2).sum(-1), axis=1)
        episodes = np.searchsorted(ds.boundaries, rows, side="right") - 1
        freq = np.bincount(episodes, minlength=3) / len(episodes)
        np.testing.assert_allclose(freq, np.array(lengths) / 100, atol=0.015)


def test_sampling_shapes_and_speed():
    ds = dataset((1000,) * 20)
    sampler = WindowSampler(ds, context_len=20)
    rng = np.random.default_rng(0)
    batch = sampler.sample(64, rng)
    assert batch.states.shape == (64, 20, 11) and batch.actions.shape == (64, 20, 3)
    assert batch.returns_to_go.shape == (64, 20, 1) and batch.attention_mask.shape == (64, 20)
    start = time.perf_counter()
    for _ in range(100):
        sampler.sample(64, rng)
    assert (time.perf_counter() - start) / 100 < 5e-3


def test_custom_state_normalisation():
    ds = dataset((4,))
    mean, std = np.ones(11, np.float32), np.full(11, 2.0, np.float32)
    batch = WindowSampler(ds, 4, state_mean=mean, state_std=std).windows(np.array([0]))
    np.testing.assert_allclose(batch.states[0], (ds.observations - 1) / 2, rtol=1e-6)


PROBE_SCRIPT = """
import sys, numpy as np
from dtlens.data import read_d4rl, probe_batch
b = probe_batch(read_d4rl(sys.argv[1]), n=16, context_len=5, seed=7)
np.save(sys.argv[2], np.concatenate([b.states.flatten().numpy(), b.timesteps.flatten().numpy()]))
"""


@pytest.mark.slow  # two fresh interpreters importing torch: ~10 s on a busy machine
def test_probe_batch_identical_across_processes(tmp_path):
    path = write_d4rl(tmp_path / "d.hdf5", make_arrays((30, 50, 20)), {"env_id": "Hopper-v5"})
    files = [tmp_path / f"probe{i}.npy" for i in range(2)]
    procs = [
        subprocess.Popen([sys.executable, "-c", PROBE_SCRIPT, str(path), str(f)]) for f in files
    ]
    assert [p.wait(timeout=50) for p in procs] == [0, 0]
    outs = [np.load(f) for f in files]
    np.testing.assert_array_equal(outs[0], outs[1])
    here = probe_batch(read_d4rl(path), n=16, context_len=5, seed=7)
    np.testing.assert_array_equal(outs[0][: 16 * 5 * 11], here.states.flatten().numpy())
    other = probe_batch(read_d4rl(path), n=16, context_len=5, seed=8)
    assert not torch.equal(here.states, other.states)


def test_batch_save_load_index_to(tmp_path):
    batch = probe_batch(dataset((30, 20)), n=8, context_len=6)
    save_batch(batch, tmp_path / "b.safetensors")
    loaded = load_batch(tmp_path / "b.safetensors")
    assert torch.equal(loaded.states, batch.states) and torch.equal(
        loaded.timesteps, batch.timesteps
    )
    sub = batch.index([1, 3])
    assert len(sub) == 2 and torch.equal(sub.actions[1], batch.actions[3])
    assert len(batch.to("cpu")) == 8
    with pytest.raises(DtlensError, match="file not found"):
        load_batch(tmp_path / "none.safetensors")
