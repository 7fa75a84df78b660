"""Dataset collection, embedded ids and behaviour policies of dtlens.data."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from dtlens.data import load_dataset, read_d4rl, registry
from dtlens.data.collect import behaviour_policy, collect
from dtlens.data.policy import POLICY_DIR, MLPPolicy, evaluate_policy, load_policy
from dtlens.errors import DtlensError


def test_collect_random_few_hundred():
    arrays = collect("Hopper-v5", None, 300, seed=1)
    assert arrays["observations"].shape == (300, 11) and arrays["actions"].shape == (300, 3)
    ends = np.flatnonzero(arrays["terminals"] | arrays["timeouts"])
    assert len(ends) >= 2  # random hopper falls within ~20-100 steps
    # within an episode, next observation of step t is observation of step t + 1
    inside = np.setdiff1d(np.arange(299), ends)
    np.testing.assert_array_equal(
        arrays["next_observations"][inside], arrays["observations"][inside + 1]
    )
    again = collect("Hopper-v5", None, 300, seed=1)
    np.testing.assert_array_equal(again["observations"], arrays["observations"])


def test_collect_with_embedded_policy_via_cli(tmp_path):
    from cli.data import data_app

    out = tmp_path / "medium.hdf5"
    args = ["collect", "--env", "Hopper-v5", "--quality", "medium", "--transitions", "400"]
    result = CliRunner().invoke(data_app, [*args, "--seed", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    ds = read_d4rl(out)
    assert len(ds) == 400 and ds.env_id == "Hopper-v5"
    assert (ds.metadata["quality"], ds.metadata["seed"]) == ("medium", 0)
    assert "steps/s" in result.output and "episodes" in result.output
    assert np.abs(ds.actions).max() <= 1.0


def test_collect_bad_input():
    with pytest.raises(DtlensError, match="unknown quality"):
        behaviour_policy("Hopper-v5", "great")
    with pytest.raises(DtlensError, match="walker2d-medium: unknown policy"):
        behaviour_policy("Walker2d-v5", "medium")
    with pytest.raises(DtlensError, match="NoSuchEnv-v0: unknown environment"):
        collect("NoSuchEnv-v0", None, 10)
    with pytest.raises(DtlensError, match="CartPole-v1: not a continuous-control env"):
        collect("CartPole-v1", None, 10)
    with pytest.raises(DtlensError, match="obs/act dims"):
        collect("Walker2d-v5", load_policy("hopper-medium"), 10)


def test_embedded_id_collected_once_into_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DTLENS_CACHE", str(tmp_path))
    spec = registry.EmbeddedSpec("Hopper-v5", "expert", transitions=200)
    monkeypatch.setitem(registry.EMBEDDED, "mini/hopper-expert", spec)
    ds = load_dataset("mini/hopper-expert")
    assert len(ds) == 200 and ds.name == "mini/hopper-expert"
    files = list(tmp_path.glob("*.hdf5"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    assert len(load_dataset("mini/hopper-expert", env_id="Hopper-v5")) == 200
    assert files[0].stat().st_mtime_ns == mtime


def test_policy_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    weights = [
        (rng.standard_normal((4, 5)), rng.standard_normal(4)),
        (rng.standard_normal((2, 4)), rng.standard_normal(2)),
    ]
    policy = MLPPolicy(weights, env_id="X-v0", action_low=-2.0, action_high=2.0)
    policy.save(tmp_path / "p", extra={"return_mean": 1.0})
    loaded = load_policy(str(tmp_path / "p"))
    obs = rng.standard_normal((3, 5))
    np.testing.assert_allclose(loaded.act(obs), policy.act(obs), rtol=1e-6)
    assert np.abs(policy.act(obs)).max() <= 2.0 and loaded.info["return_mean"] == 1.0


def test_embedded_policies_are_ordered():
    """random < medium < expert, as recorded by the training script and re-measured here."""
    total_bytes = sum(p.stat().st_size for p in POLICY_DIR.iterdir())
    assert total_bytes <= 1_000_000
    medium, expert = load_policy("hopper-medium"), load_policy("hopper-expert")
    assert medium.info["return_mean"] < expert.info["return_mean"]
    returns = {
        name: evaluate_policy(policy, "Hopper-v5", episodes=1, seed=0)[0]
        for name, policy in (("random", None), ("medium", medium), ("expert", expert))
    }
    assert returns["random"] < returns["medium"] < returns["expert"], returns
