"""Dataset collection, embedded ids and behaviour policies of dtlens.data."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from typer.testing import CliRunner

from dtlens.data import load_dataset, read_d4rl, registry
from dtlens.data.collect import behaviour_policy, collect
from dtlens.data.policy import POLICY_DIR, MLPPolicy, evaluate_policy, load_policy
from dtlens.errors import DtlensError
from dtlens.io import load_json, save_json


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
    from cli.data import app as data_app

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
    with pytest.raises(DtlensError, match="ant-medium: unknown policy"):
        behaviour_policy("Ant-v5", "medium")
    with pytest.raises(DtlensError, match="NoSuchEnv-v0: unknown environment"):
        collect("NoSuchEnv-v0", None, 10)
    with pytest.raises(DtlensError, match="CartPole-v1: not a continuous-control env"):
        collect("CartPole-v1", None, 10)
    with pytest.raises(DtlensError, match="obs/act dims"):
        collect("Walker2d-v5", load_policy("hopper-medium"), 10)


def test_rebuild_embedded_id_compares_with_shipped(tmp_path, monkeypatch):
    """`data collect --id` against a tiny manifest built in tmp_path."""
    from cli.data import app as data_app

    assets, cache = tmp_path / "assets", tmp_path / "cache"
    monkeypatch.setenv("DTLENS_CACHE", str(cache))
    monkeypatch.setattr(registry, "ASSET_DIR", assets)
    monkeypatch.setitem(
        registry.EMBEDDED, "mini/hopper-expert", registry.EmbeddedSpec("Hopper-v5", "expert", 200)
    )
    cli = CliRunner()

    def collect_id(*args: str) -> str:
        result = cli.invoke(data_app, ["collect", "--id", "mini/hopper-expert", *args])
        assert result.exit_code == 0, result.output
        return result.output

    out = collect_id("--update-manifest")
    assert "nothing shipped for mini/hopper-expert" in out and "updated the manifest" in out
    shipped = assets / "hopper-expert.hdf5"
    manifest = load_json(assets / "manifest.json")
    entry = manifest["mini/hopper-expert"]
    assert entry["sha256"] == hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert entry["spec"]["transitions"] == 200 and entry["spec"]["policy_sha256"]
    ds = load_dataset("mini/hopper-expert", env_id="Hopper-v5")
    assert len(ds) == 200 and ds.stats() == entry["stats"] and ds.name == "mini/hopper-expert"

    out = collect_id()  # a second collection, into the cache
    rebuilt = cache / "datasets" / "mini-hopper-expert.hdf5"
    assert rebuilt.read_bytes() == shipped.read_bytes()
    assert f"sha256 {entry['sha256']}: identical to the shipped bytes" in out
    assert "differs" not in out

    manifest["mini/hopper-expert"]["sha256"] = "0" * 64
    save_json(manifest, assets / "manifest.json")
    out = collect_id("--out", str(tmp_path / "other.hdf5"))
    assert "differs from the shipped hash " + "0" * 64 in out and "identical" not in out
    assert (tmp_path / "other.hdf5").read_bytes() == shipped.read_bytes()

    monkeypatch.setitem(
        registry.EMBEDDED, "mini/hopper-expert", registry.EmbeddedSpec("Hopper-v5", "expert", 150)
    )
    assert "not comparable, the shipped file has another spec" in collect_id()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--id", "mini/hopper-expert", "--env", "Walker2d-v5"], "drop --env"),
        (["--id", "mini/hopper-expert", "--out", "SHIPPED"], "add --update-manifest"),
        (["--id", "mini/hopper-expert", "--update-manifest", "--out", "x.hdf5"], "refreshes"),
        (["--id", "mini/nothing"], "mini/nothing: unknown embedded dataset"),
        (["--update-manifest", "--out", "x.hdf5"], "--update-manifest needs --id"),
        (["--env", "Hopper-v5"], "--out is required"),
    ],
)
def test_collect_bad_options(tmp_path, monkeypatch, args, message):
    from cli.data import app as data_app

    monkeypatch.setattr(registry, "ASSET_DIR", tmp_path)
    args = [str(tmp_path / "hopper-expert.hdf5") if a == "SHIPPED" else a for a in args]
    result = CliRunner().invoke(data_app, ["collect", *args])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert not list(tmp_path.glob("*.hdf5"))


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
    # six actors shipped; four of them 256 x 256 as D4RL's SAC (288 KB each in float32)
    total_bytes = sum(p.stat().st_size for p in POLICY_DIR.iterdir())
    assert total_bytes <= 1_500_000
    medium, expert = load_policy("hopper-medium"), load_policy("hopper-expert")
    assert medium.info["return_mean"] < expert.info["return_mean"]
    returns = {
        name: evaluate_policy(policy, "Hopper-v5", episodes=1, seed=0)[0]
        for name, policy in (("random", None), ("medium", medium), ("expert", expert))
    }
    assert returns["random"] < returns["medium"] < returns["expert"], returns
