"""MI on runs: I(X;T) and I(Y;T) per block, seeds and divergences kept, CLI and bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from cli.main import app
from dtlens.capture import capture
from dtlens.diagnostics.analyses import mutual_info as mutual_info_analysis
from dtlens.diagnostics.analyses.mutual_info import default_blocks, information, last_step
from dtlens.diagnostics.mutual_info import estimate
from dtlens.errors import DtlensError
from dtlens.train.loop import train
from dtlens.train.run import Run
from tests.conftest import tiny_train_config
from tests.test_per_sample_gradients import one_thread  # noqa: F401  (autouse)

runner = CliRunner()


@pytest.fixture(scope="module")
def run(hopper_file, tmp_path_factory) -> Run:
    cfg = tiny_train_config(hopper_file, epochs=1, eval_episodes=0, probe_size=40)
    return train(cfg, tmp_path_factory.mktemp("mi") / "run", progress=False)


@pytest.fixture(scope="module")
def acts(run) -> xr.Dataset:
    return capture(run.load_model(1), run.probe_batch(), hooks=["resid_post"])


def test_default_blocks():
    assert default_blocks(12) == [0, 6, 11]
    assert default_blocks(24) == [0, 12, 23]
    assert default_blocks(2) == [0, 1]
    assert default_blocks(1) == [0]


def test_last_step_picks_the_last_timestep(acts):
    resid = acts.resid_post.sel(layer=0)
    np.testing.assert_array_equal(last_step(resid, "state"), resid.values[:, -2])
    np.testing.assert_array_equal(last_step(resid, "action"), resid.values[:, -1])


def test_information_layout_and_seeds(run, acts):
    ds = information(acts.resid_post, run.probe_batch(), "ksg", seeds=[0, 1], reduce=3)
    assert ds["mi"].dims == ("quantity", "block", "token_type", "seed")
    assert ds["mi"].shape == (2, 2, 3, 2)
    assert np.isfinite(ds["mi"]).all() and (ds["diverged"] == 0).all()
    np.testing.assert_allclose(ds["mean"], ds["mi"].mean("seed"))
    np.testing.assert_allclose(ds["std"], ds["mi"].std("seed", ddof=1))
    # The action token holds the target itself: the most information about Y.
    y = ds["mean"].sel(quantity="I(Y;T)")
    assert (y.sel(token_type="action") > y.sel(token_type="return")).all()


def test_divergent_seeds_are_kept_and_counted(run, acts, monkeypatch):
    def half_diverged(x, y, method, seeds, **options):
        r = estimate(x, y, method="gaussian", seed=0)
        values = (np.nan, r.value, r.value + 0.1)
        return dataclasses.replace(r, values=values, seeds=tuple(seeds), diverged=1)

    monkeypatch.setattr(mutual_info_analysis, "estimate", half_diverged)
    layer = acts.resid_post.sel(layer=[1])
    ds = information(layer, run.probe_batch(), "mine", [0, 1, 2], null_shuffles=0)
    assert ds["mi"].isnull().sel(seed=0).all() and ds["mi"].notnull().sel(seed=[1, 2]).all()
    assert (ds["diverged"] == 1).all()
    np.testing.assert_allclose(ds["mean"], ds["mi"].sel(seed=[1, 2]).mean("seed"))
    np.testing.assert_allclose(ds["std"], np.sqrt(0.005))


def test_samples_of_another_batch_are_an_error(run, acts):
    with pytest.raises(DtlensError, match="same samples"):
        information(acts.resid_post, run.probe_batch().index(slice(0, 30)), "ksg")


def test_cli_default_writes_dataset_null_and_figure(run):
    res = runner.invoke(app, ["mutual-info", str(run.path), "--blocks", "1", "--seeds", "2"])
    assert res.exit_code == 0, res.output
    assert "I(X;T)" in res.output and "I(Y;T)" in res.output and "null" in res.output
    ds = xr.open_dataset(run.path / "diagnostics" / "mutual_info.nc")
    assert ds.sizes == {"quantity": 2, "block": 1, "token_type": 3, "seed": 2, "shuffle": 5}
    assert ds.attrs["epoch"] == 1 and ds.attrs["method"] == "gcmi" and ds.attrs["samples"] == 40
    np.testing.assert_allclose(ds["null_mean"], ds["null"].mean("shuffle"))
    np.testing.assert_allclose(ds["above_null"], ds["mean"] - ds["null_mean"])
    assert np.isfinite(ds["null"]).all() and float(abs(ds["null_mean"]).max()) < 1.0
    assert (run.path / "figures" / "mutual_info.png").stat().st_size > 0


def test_cli_paper_protocol_on_a_larger_probe(run):
    args = "--method mine --paper --samples 60 --blocks 0 --iterations 3".split()
    res = runner.invoke(app, ["mutual-info", str(run.path), *args])
    assert res.exit_code == 0, res.output
    ds = xr.open_dataset(run.path / "diagnostics" / "mutual_info.nc")
    assert ds.sizes["seed"] == 1 and ds.attrs["samples"] == 60 and ds.attrs["paper"] == 1
    assert '"preset": "paper"' in ds.attrs["options"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epoch", "5"], "no checkpoint for epoch(s) [5]"),
        (["--samples", "3"], "needs at least"),
        (["--paper"], None),  # --paper alone is MINE: 40 samples are too few for its batch 50
        (["--paper", "--method", "ksg"], "cannot use ksg"),
        (["--blocks", "0,9"], "no block [9]"),
        (["--method", "mine", "--samples", "60"], "too few for batch_size=50"),
    ],
)
def test_cli_bad_input_is_one_line(run, args, message):
    res = runner.invoke(app, ["mutual-info", str(run.path), *args])
    assert res.exit_code == 1, res.output
    assert len(res.output.strip().splitlines()) == 1 and res.output.startswith("error:")
    assert message is None or message in res.output
