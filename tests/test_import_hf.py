"""`dtlens import-hf`: HF DecisionTransformerModel directories as a run every diagnostic reads."""

from __future__ import annotations

import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

from cli.main import app
from dtlens.errors import DtlensError
from dtlens.train.import_hf import import_hf
from dtlens.train.run import Run

runner = CliRunner()


def write_hf_dt(path, seed: int, n_layer: int = 2, state_dim: int = 11, act_dim: int = 3):
    """A tiny HF DecisionTransformerModel with random weights, saved with save_pretrained."""
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    torch.manual_seed(seed)
    config = DecisionTransformerConfig(
        state_dim=state_dim, act_dim=act_dim, hidden_size=16, n_layer=n_layer, n_head=2,
        max_ep_len=1000, n_positions=64,
    )  # fmt: skip
    model = DecisionTransformerModel(config).eval()
    model.save_pretrained(path)
    return model


@pytest.mark.slow
def test_import_hf_cli_then_diagnostics(tmp_path, hopper_file):
    """Three HF DTs become epochs 0-2; each checkpoint predicts HF's actions on the probe; the
    weight change and CKA run on the imported run from the CLI."""
    hf = [write_hf_dt(tmp_path / f"dt{i}", seed=i) for i in range(3)]
    out = tmp_path / "run"
    dirs = [str(tmp_path / f"dt{i}") for i in range(3)]
    res = runner.invoke(
        app,
        ["import-hf", *dirs, "--out", str(out), "--dataset", str(hopper_file), "--context", "5",
         "--probe-size", "8"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "epoch 2:" in res.output
    run = Run(out)
    assert run.epochs() == [0, 1, 2]
    probe = run.probe_batch()
    assert probe.states.shape == (8, 5, 11)
    for epoch, model in enumerate(hf):
        with torch.no_grad():
            _, want, _ = model(
                states=probe.states, actions=probe.actions, rewards=None,
                returns_to_go=probe.returns_to_go, timesteps=probe.timesteps,
                attention_mask=probe.attention_mask, return_dict=False,
            )  # fmt: skip
            got = run.load_model(epoch)(
                probe.states, probe.actions, probe.returns_to_go, probe.timesteps,
                probe.attention_mask,
            )  # fmt: skip
        real = probe.attention_mask.bool()
        assert torch.allclose(got[real], want[real], atol=1e-5)

    res = runner.invoke(app, ["weights", str(out)])
    assert res.exit_code == 0, res.output
    with xr.open_dataset(out / "diagnostics" / "weights.nc") as ds:
        # epoch 0 vs 2 are two independent random inits: every block weight moved
        assert float(ds["relative"].sel(tensor="backbone.blocks.0.attn.W_Q")) > 0.5
    res = runner.invoke(app, ["cka", str(out), "--epochs", "0,0"])
    assert res.exit_code == 0, res.output
    with xr.open_dataset(out / "diagnostics" / "cka.nc") as ds:
        diagonal = ds["cka"].sel(variant="positions", token_type="all").values.diagonal()
    assert diagonal.shape == (3,)  # the embedding and two blocks
    assert abs(diagonal - 1).max() < 1e-5  # a model against itself


def test_import_hf_refuses_mixed_architectures_and_dims(tmp_path, hopper_file):
    write_hf_dt(tmp_path / "a", seed=0, n_layer=2)
    write_hf_dt(tmp_path / "b", seed=1, n_layer=3)
    with pytest.raises(DtlensError, match="another architecture.*n_layers"):
        import_hf([tmp_path / "a", tmp_path / "b"], tmp_path / "run", str(hopper_file))
    write_hf_dt(tmp_path / "c", seed=0, state_dim=7)
    with pytest.raises(DtlensError, match="states/actions of 11/3 dims, the model takes 7/3"):
        import_hf([tmp_path / "c"], tmp_path / "run", str(hopper_file))
    with pytest.raises(DtlensError, match="not an HF model directory"):
        import_hf([tmp_path / "missing"], tmp_path / "run", str(hopper_file))
    assert not (tmp_path / "run").exists()


def test_imported_run_cannot_be_resumed(tmp_path, hopper_file):
    from dtlens.train.loop import train

    write_hf_dt(tmp_path / "a", seed=0)
    run = import_hf([tmp_path / "a"], tmp_path / "run", str(hopper_file), context_len=4)
    assert run.epochs() == [0]
    with pytest.raises(DtlensError, match="imported run"):
        train(run.train_config, run.path, resume=True, progress=False)
