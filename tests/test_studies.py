"""No-context and block-swap studies, end to end from the CLI at tiny sizes."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from cli.main import app
from dtlens.diagnostics.curves import ema, steps_to_fraction
from dtlens.model.backbones import random_backbone, save_backbone
from dtlens.model.config import BackboneConfig

runner = CliRunner()
SIZE = BackboneConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=64)
TINY_ARGS = [
    "--epochs",
    "2",
    "--steps",
    "3",
    "--batch-size",
    "4",
    "--warmup",
    "2",
    "--eval-episodes",
    "1",
    "--eval-max-steps",
    "5",
    "--layers",
    "2",
    "--d-model",
    "16",
    "--heads",
    "2",
]


def test_ema_and_steps_to_fraction_known_answers():
    np.testing.assert_allclose(ema([1.0, 0.0, 0.0], alpha=0.5), [1.0, 0.5, 0.25])
    np.testing.assert_allclose(ema([np.nan, 2.0, 4.0], alpha=0.5), [np.nan, 2.0, 3.0])
    loss = np.array([10.0, 5.0, 2.0, 1.0, 1.0])
    assert steps_to_fraction(loss, fraction=0.5, alpha=0.0) == 2  # 10 -> 5.5 reached at step 2
    assert steps_to_fraction(loss, fraction=1.0, alpha=0.0) == 4
    assert steps_to_fraction(np.ones(5), fraction=0.9) == 5


@pytest.fixture
def donor_file(tmp_path):
    return str(save_backbone(random_backbone(SIZE, seed=7), tmp_path / "donor.safetensors"))


def test_no_context_cli(hopper_file, donor_file, tmp_path):
    out = tmp_path / "nc"
    args = [
        "no-context",
        "--dataset",
        str(hopper_file),
        "--out",
        str(out),
        "--inits",
        f"random,{donor_file}",
        "--contexts",
        "1,3",
        *TINY_ARGS,
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    ds = xr.open_dataset(out / "diagnostics" / "no_context.nc")
    assert ds.sizes["run"] == 4 and sorted(set(ds.context.values.tolist())) == [1, 3]
    assert np.isfinite(ds.final_action_error).all()
    assert (out / "figures" / "no_context.png").stat().st_size > 1000
    # A rerun reuses every finished run.
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and res.output.count("done ") == 4, res.output


def test_block_swap_cli(hopper_file, donor_file, tmp_path):
    out = tmp_path / "bs"
    res = runner.invoke(
        app,
        [
            "block-swap",
            "--dataset",
            str(hopper_file),
            "--out",
            str(out),
            "--donor",
            donor_file,
            *TINY_ARGS,
        ],
    )
    assert res.exit_code == 0, res.output
    ds = xr.open_dataset(out / "diagnostics" / "block_swap.nc")
    assert ds.variant.values.tolist() == ["random", "block 0", "block 1", "donor"]
    assert np.isfinite(ds.auc_action_error).all()
    assert (out / "figures" / "block_swap.png").is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--blocks", ""], "empty block list"),
        (["--blocks", "0,9"], "out of range"),
        (["--d-model", "32"], "does not fit"),
    ],
)
def test_block_swap_bad_input(hopper_file, donor_file, tmp_path, extra, message):
    res = runner.invoke(
        app,
        [
            "block-swap",
            "--dataset",
            str(hopper_file),
            "--out",
            str(tmp_path / "x"),
            "--donor",
            donor_file,
            *TINY_ARGS,
            *extra,
        ],
    )
    assert res.exit_code == 1 and message in res.output, res.output
    assert not (tmp_path / "x" / "runs").exists()
