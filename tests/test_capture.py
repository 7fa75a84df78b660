"""Capture: hooks -> xarray on a real tiny run, streaming to netCDF, the capture CLI."""

from __future__ import annotations

import netCDF4
import numpy as np
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

import dtlens
from cli.main import app
from dtlens.capture import (
    capture,
    capture_run,
    capture_to_netcdf,
    hook_kinds,
    load_capture,
    run_batch,
    save_capture,
)
from dtlens.errors import DtlensError

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


def padded_probe(run):
    """The probe batch with sample 0's first two of four steps as padding."""
    batch = run.probe_batch()
    batch.attention_mask[0] = torch.tensor([0, 0, 1, 1])
    return batch


def test_capture_resid_post_and_pattern_of_a_run(run):
    path = capture_run(run, [-1], ["resid_post", "pattern"])[0]
    assert path == run.path / "captures" / "epoch-0002.nc"
    with load_capture(path) as ds:
        ds = ds.load()
    n, k, d = 6, 4, 16
    assert ds["resid_post"].dims == ("sample", "layer", "position", "d_model")
    assert ds["resid_post"].shape == (n, 2, 3 * k, d)
    assert ds["pattern"].dims == ("sample", "layer", "head", "query", "key")
    assert ds["pattern"].shape == (n, 2, 2, 3 * k, 3 * k)
    assert ds["resid_post"].dtype == np.float32 and ds["pattern"].dtype == np.float32
    assert list(ds["layer"].values) == [0, 1]
    assert list(ds["token_type"].values[:4]) == ["return", "state", "action", "return"]
    assert list(ds["timestep"].values[:4]) == [0, 0, 0, 1]
    probe = run.probe_batch()
    np.testing.assert_array_equal(ds["timesteps"].values, probe.timesteps.numpy())
    np.testing.assert_array_equal(
        ds["valid"].values, probe.attention_mask.bool().repeat_interleave(3, 1).numpy()
    )
    assert ds.attrs["run"] == "run" and ds.attrs["epoch"] == 2
    assert ds.attrs["init"] == "random" and ds.attrs["dataset"] == str(
        run.config["train"]["dataset"]
    )
    assert ds.attrs["dtlens_version"] == dtlens.__version__
    assert ds.attrs["hooks"] == "pattern,resid_post"
    # The values are the model's own activations.
    model = run.load_model(2)
    _, cache = model.run_with_cache(
        probe.states, probe.actions, probe.returns_to_go, probe.timesteps, probe.attention_mask
    )
    got = ds["resid_post"].sel(layer=1).values
    np.testing.assert_allclose(got, cache["backbone.blocks.1.hook_resid_post"], atol=1e-6)


def test_pattern_rows_sum_to_one_over_valid_keys(run):
    batch = padded_probe(run)
    ds = capture(run.load_model(2), batch, ["pattern"])
    valid = ds["valid"].values  # (sample, position)
    pattern = ds["pattern"].values  # (sample, layer, head, query, key)
    assert not valid[0, :6].any() and valid[0, 6:].all()
    on_valid_keys = (pattern * valid[:, None, None, None, :]).sum(-1)
    rows = np.broadcast_to(valid[:, None, None, :], on_valid_keys.shape)
    np.testing.assert_allclose(on_valid_keys[rows], 1.0, atol=1e-5)
    np.testing.assert_allclose(pattern.sum(-1)[rows], 1.0, atol=1e-5)  # nothing on padding


def test_capture_runs_in_eval_mode_and_restores_training(run):
    model = run.load_model(2).train()
    batch = run.probe_batch()
    a = capture(model, batch, ["resid_post"])
    assert model.training
    b = capture(model.eval(), batch, ["resid_post"])
    xr.testing.assert_identical(a, b)


def test_streaming_equals_in_memory_and_sample_is_unlimited(run, tmp_path):
    model, batch = run.load_model(2), padded_probe(run)
    hooks = ["tokens", "resid_post", "pattern"]
    save_capture(capture(model, batch, hooks, attrs={"run": "x"}), tmp_path / "memory.nc")
    capture_to_netcdf(
        model, batch, tmp_path / "stream.nc", hooks, chunk=4, batch_size=3, attrs={"run": "x"}
    )
    with load_capture(tmp_path / "memory.nc") as a, load_capture(tmp_path / "stream.nc") as b:
        xr.testing.assert_identical(a.load(), b.load())
        assert b.attrs["samples"] == 6
    with netCDF4.Dataset(tmp_path / "stream.nc") as nc:
        assert nc.dimensions["sample"].isunlimited()
        assert len(nc.dimensions["sample"]) == 6
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed


def test_every_hook_kind_and_full_names(run):
    model, batch = run.load_model(0), run.probe_batch().index(slice(0, 2))
    kinds = hook_kinds(model)
    assert {"tokens", "resid_pre", "resid_mid", "attn_out", "mlp_out", "ln_final"} <= set(kinds)
    ds = capture(model, batch, list(kinds))
    assert ds["q"].dims == ("sample", "layer", "position", "head", "d_head")
    assert ds["mlp_pre"].dims == ("sample", "layer", "position", "d_mlp")
    assert ds["ln1_scale"].dims == ("sample", "layer", "position")
    assert ds["state_embed"].dims == ("sample", "step", "d_model")
    assert ds["ln_final"].dims == ("sample", "position", "d_model")
    # A full name selects its block; per-block kinds share the union of the blocks asked for.
    one = capture(model, batch, ["backbone.blocks.1.hook_resid_post", "hook_tokens"])
    assert list(one["layer"].values) == [1] and set(one.data_vars) >= {"resid_post", "tokens"}
    np.testing.assert_array_equal(one["resid_post"].values, ds["resid_post"].sel(layer=[1]).values)
    both = capture(model, batch, ["backbone.blocks.{i}.attn.hook_pattern"])
    assert list(both["layer"].values) == [0, 1]


def test_unknown_hook_lists_valid_names(run):
    with pytest.raises(DtlensError, match=r"unknown hook.*resid_post.*backbone\.blocks\.\{i\}"):
        capture(run.load_model(0), run.probe_batch(), ["resid_psot"])
    with pytest.raises(DtlensError, match="unknown hook"):
        capture(run.load_model(0), run.probe_batch(), ["backbone.blocks.7.hook_resid_post"])


def test_more_samples_than_the_probe_extend_it(run):
    batch = run_batch(run, 10)
    probe = run.probe_batch()
    assert len(batch) == 10
    torch.testing.assert_close(batch.states[:6], probe.states)
    assert len(run_batch(run, 3)) == 3


def test_capture_cli_writes_one_file_per_epoch(run, tmp_path):
    out = tmp_path / "caps"
    args = ["capture", str(run.path), "--epochs", "0,-1", "--hooks", "resid_post,pattern"]
    result = runner.invoke(app, [*args, "--samples", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.nc")) == ["epoch-0000.nc", "epoch-0002.nc"]
    with load_capture(out / "epoch-0000.nc") as ds:
        assert ds.sizes["sample"] == 4 and ds.attrs["epoch"] == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--hooks", "nope"], "unknown hook name"),
        (["--epochs", "0,7"], "no checkpoint for epoch(s) [7]"),
        (["--epochs", "0,x"], "expected comma-separated integers"),
    ],
)
def test_capture_cli_bad_input_is_one_line(run, args, message):
    result = runner.invoke(app, ["capture", str(run.path), *args])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:") and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_capture_cli_not_a_run(tmp_path):
    result = runner.invoke(app, ["capture", str(tmp_path)])
    assert result.exit_code == 1 and "not a dtlens run" in result.output
