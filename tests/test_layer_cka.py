"""Layer x layer CKA on captures: definitions, the paper variant, sample checks, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from cli.main import app
from dtlens.capture import capture, capture_run, load_capture
from dtlens.diagnostics.analyses.cka import diagonal, layer_cka
from dtlens.diagnostics.cka import cka, cka_paper_variant
from dtlens.errors import DtlensError

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


@pytest.fixture(scope="module")
def captures(run):
    """Captures at epochs 0 and 2 on the probe batch, sample 0 all padding."""
    batch = run.probe_batch()
    batch.attention_mask[0] = 0  # no real step: skipped by every variant but paper_code
    hooks = ["tokens", "resid_post"]
    return [capture(run.load_model(e), batch, hooks, attrs={"epoch": e}) for e in (0, 2)]


def test_cka_of_a_capture_with_itself_is_one_on_the_diagonal(captures):
    ds = layer_cka(captures[1], captures[1], paper_variant=True)
    assert ds["cka"].dims == ("variant", "token_type", "layer_a", "layer_b")
    assert list(ds["variant"].values) == ["last", "positions", "paper_code"]
    assert list(ds["token_type"].values) == ["return", "state", "action", "all"]
    assert list(ds["layer_a"].values) == [-1, 0, 1]
    for variant in ("last", "positions"):
        np.testing.assert_allclose(diagonal(ds, variant).values, 1.0, atol=1e-9)
    paper = diagonal(ds, "paper_code")
    np.testing.assert_allclose(paper.sel(token_type=["return", "state", "action"]), 1.0, atol=1e-6)
    assert np.isnan(paper.sel(token_type="all")).all()


def test_last_timestep_entry_equals_hand_computation(captures):
    a, b = captures
    ds = layer_cka(a, b, kernel="linear", debiased=True, paper_variant=True)
    rows = slice(1, None)  # sample 0 is all padding
    x = a["resid_post"].sel(layer=0).values[rows, 3 * 3 + 1]  # state token of the last step
    y = b["resid_post"].sel(layer=1).values[rows, 3 * 3 + 1]
    got = ds["cka"].sel(variant="last", token_type="state", layer_a=0, layer_b=1)
    assert float(got) == pytest.approx(cka(x, y, debiased=True), abs=1e-12)
    assert int(ds["rows"].sel(variant="last", token_type="state")) == 5
    # All valid positions of every type: rows = sample x position.
    valid = a["valid"].values
    x = a["tokens"].values[valid]
    y = b["resid_post"].sel(layer=1).values[valid]
    got = ds["cka"].sel(variant="positions", token_type="all", layer_a=-1, layer_b=1)
    assert float(got) == pytest.approx(cka(x, y, debiased=True), abs=1e-12)
    # The released code's indexing: hidden unit -3 across positions, every sample.
    acts_a, acts_b = a["resid_post"].sel(layer=1).values, b["resid_post"].sel(layer=0).values
    got = ds["cka"].sel(variant="paper_code", token_type="return", layer_a=1, layer_b=0)
    assert float(got) == pytest.approx(cka_paper_variant(acts_a, acts_b, -3), abs=1e-12)


def test_captures_of_different_samples_are_refused(run, captures):
    other = capture(run.load_model(2), run.probe_batch(), ["tokens", "resid_post"])
    with pytest.raises(DtlensError, match="different samples"):
        layer_cka(captures[0], other)


def test_missing_variables_are_named(captures):
    with pytest.raises(DtlensError, match="no tokens"):
        layer_cka(captures[0].drop_vars("tokens"), captures[1])
    ds = layer_cka(captures[0].drop_vars("tokens"), captures[1], embed=False)
    assert list(ds["layer_b"].values) == [0, 1]


def test_cka_cli_captures_what_it_needs_and_writes_nc_and_png(run):
    result = runner.invoke(app, ["cka", str(run.path), "--paper-variant"])
    assert result.exit_code == 0, result.output
    assert "embed" in result.output and "paper_code" in result.output
    assert (run.path / "figures" / "cka.png").stat().st_size > 0
    with xr.open_dataset(run.path / "diagnostics" / "cka.nc") as ds:
        assert ds.attrs["epoch_a"] == 0 and ds.attrs["epoch_b"] == 2 and ds.attrs["debiased"] == 1
        assert ds.sizes["variant"] == 3
    for epoch in (0, 2):
        with load_capture(run.path / "captures" / f"epoch-{epoch:04d}.nc") as cap:
            assert {"tokens", "resid_post"} <= set(cap.data_vars)


def test_cka_cli_two_runs(run):
    result = runner.invoke(app, ["cka", str(run.path), str(run.path), "--epochs", "-1"])
    assert result.exit_code == 0, result.output
    assert "1.000" in result.output  # the last epoch against itself


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs", "0,9"], "no checkpoint for epoch(s) [9]"),
        (["--epochs", "0,1,2"], "one or two epochs"),
        (["--kernel", "cosine"], "unknown CKA kernel"),
    ],
)
def test_cka_cli_bad_input_is_one_line(run, args, message):
    result = runner.invoke(app, ["cka", str(run.path), *args])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:") and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cka_recaptures_a_capture_of_other_samples(run, tmp_path):
    capture_run(run, [2], ["tokens", "resid_post"], samples=4)  # epoch 2 now has 4 samples
    result = runner.invoke(app, ["cka", str(run.path)])
    assert result.exit_code == 0, result.output
    with xr.open_dataset(run.path / "diagnostics" / "cka.nc") as ds:
        assert ds.attrs["samples"] == len(run.probe_batch())
    result = runner.invoke(app, ["cka", str(tmp_path)])
    assert result.exit_code == 1 and "not a dtlens run" in result.output
