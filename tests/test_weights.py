"""Weight change: per-tensor statistics, exact aggregation, the weights CLI."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import xarray as xr
from transformers import GPT2Config, GPT2Model
from typer.testing import CliRunner

from cli.main import app
from dtlens import DecisionTransformer, DTConfig
from dtlens.diagnostics.weights import aggregate, classify, weight_change
from dtlens.errors import DtlensError
from dtlens.model import BackboneConfig
from tests.conftest import TINY, perturb_

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


def test_model_against_itself(tiny_dt):
    ds = weight_change(tiny_dt, tiny_dt.state_dict())
    assert not any(
        t.startswith(("backbone.embed.", "backbone.pos_embed.", "backbone.unembed."))
        for t in ds["tensor"].values
    )
    assert ds.sizes["tensor"] == len(list(tiny_dt.parameters())) - 4
    np.testing.assert_array_equal(ds["l2"], 0.0)
    np.testing.assert_array_equal(ds["relative"], 0.0)
    np.testing.assert_allclose(ds["cosine"], 1.0, atol=1e-12)
    assert int(ds["numel"].sel(tensor="backbone.blocks.1.mlp.W_in")) == 16 * 32
    assert not np.isnan(ds[["relative", "cosine"]].to_array()).any()
    assert set(ds["kind"].values) == {"attention", "mlp", "norm", "embedding", "head"}
    assert set(ds["part"].values) == {"backbone", "embeddings", "head"}


def test_classify():
    assert classify("backbone.blocks.3.attn.W_Q") == (3, "attention", "backbone")
    assert classify("backbone.blocks.0.mlp.b_out") == (0, "mlp", "backbone")
    assert classify("backbone.blocks.1.ln2.w") == (1, "norm", "backbone")
    assert classify("backbone.ln_final.b") == (-1, "norm", "backbone")
    assert classify("embed_timestep.weight") == (-1, "embedding", "embeddings")
    assert classify("embed_ln.weight") == (-1, "norm", "embeddings")
    assert classify("predict_action.bias") == (-1, "head", "head")
    assert classify("h.0.attn.c_attn.weight") == (-1, "other", "other")  # HF GPT-2
    assert classify("blocks.0.attn.W_Q") == (-1, "other", "other")  # a bare backbone


def test_hand_perturbed_copy_has_known_distance(tiny_dt):
    after = {k: v.detach().clone() for k, v in tiny_dt.named_parameters()}
    w = after["backbone.blocks.0.attn.W_Q"]
    w += 0.5  # distance 0.5 sqrt(numel)
    bias = after["backbone.blocks.1.attn.b_O"]
    assert torch.all(bias == 0)  # zero at init
    bias += 0.1
    ds = weight_change(tiny_dt, after)
    wq = ds.sel(tensor="backbone.blocks.0.attn.W_Q")
    assert float(wq["l2"]) == pytest.approx(0.5 * math.sqrt(w.numel()))
    before = tiny_dt.backbone.blocks[0].attn.W_Q.detach().double()
    assert float(wq["relative"]) == pytest.approx(0.5 * math.sqrt(w.numel()) / before.norm())
    cos = torch.nn.functional.cosine_similarity(before.flatten(), w.double().flatten(), dim=0)
    assert float(wq["cosine"]) == pytest.approx(float(cos))
    bo = ds.sel(tensor="backbone.blocks.1.attn.b_O")
    assert bool(bo["zero_init"]) and float(bo["cosine"]) == 0.0
    assert float(bo["relative"]) == float(bo["l2"]) == pytest.approx(0.1 * math.sqrt(16))
    untouched = ds.drop_sel(tensor=["backbone.blocks.0.attn.W_Q", "backbone.blocks.1.attn.b_O"])
    np.testing.assert_array_equal(untouched["l2"], 0.0)


@pytest.mark.parametrize("by", ["block", "kind", "part"])
def test_aggregation_equals_concatenated_vectors(tiny_dt, by):
    before = dict(tiny_dt.named_parameters())
    g = torch.Generator().manual_seed(0)
    after = {k: v.detach() + 0.05 * torch.randn(v.shape, generator=g) for k, v in before.items()}
    ds = weight_change(before, after)
    agg = aggregate(ds, by)
    for group in agg[by].values:
        names = ds["tensor"].values[ds[by].values == group]
        a = torch.cat([before[n].detach().double().flatten() for n in names])
        b = torch.cat([after[n].double().flatten() for n in names])
        row = agg.sel({by: group})
        assert float(row["l2"]) == pytest.approx(float((a - b).norm()), rel=1e-12)
        assert float(row["relative"]) == pytest.approx(float((a - b).norm() / a.norm()), rel=1e-12)
        cos = float(a @ b / (a.norm() * b.norm()))
        assert float(row["cosine"]) == pytest.approx(cos, rel=1e-12)
        assert int(row["numel"]) == a.numel()


def test_different_models_are_refused(tiny_dt, tiny_cfg):
    wider = DTConfig(state_dim=5, act_dim=2, max_ep_len=50, backbone=BackboneConfig(2, 16, 2, 64))
    with pytest.raises(DtlensError, match="mlp.W_in: shape"):
        weight_change(tiny_dt, DecisionTransformer(wider))
    deeper = DTConfig(state_dim=5, act_dim=2, max_ep_len=50, backbone=BackboneConfig(3, 16, 2, 32))
    with pytest.raises(DtlensError, match="different parameters"):
        weight_change(tiny_dt, DecisionTransformer(deeper))


def test_weight_change_cli_writes_nc_and_png(run):
    result = runner.invoke(app, ["weights", str(run.path)])
    assert result.exit_code == 0, result.output
    assert "outside blocks" in result.output and "cosine" in result.output
    assert (run.path / "figures" / "weights.png").stat().st_size > 0
    with xr.open_dataset(run.path / "diagnostics" / "weights.nc") as ds:
        assert ds.attrs["epoch_before"] == 0 and ds.attrs["epoch_after"] == 2
        assert set(ds["kind"].values) == {"attention", "mlp", "norm", "embedding", "head"}
        assert (ds["l2"] > 0).any() and (ds["cosine"] <= 1 + 1e-12).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs", "0,5"], "no checkpoint for epoch(s) [5]"),
        (["--epochs", "0"], "compares two epochs"),
    ],
)
def test_weight_change_cli_bad_input_is_one_line(run, args, message):
    result = runner.invoke(app, ["weights", str(run.path), *args])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:") and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_weight_change_cli_not_a_run(tmp_path):
    result = runner.invoke(app, ["weights", str(tmp_path)])
    assert result.exit_code == 1 and "not a dtlens run" in result.output


def tiny_gpt2(seed: int) -> GPT2Model:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=2, n_embd=16, n_head=2, n_positions=8, vocab_size=11, bos_token_id=0, eos_token_id=0
    )
    return GPT2Model(cfg).eval()


def test_hf_gpt2_models_compare_as_other():
    a, b = tiny_gpt2(0), tiny_gpt2(1)
    ds = weight_change(a, b.state_dict())
    names = [n for n, _ in a.named_parameters()]
    assert list(ds["tensor"].values) == names and "wte.weight" in names
    assert set(ds["kind"].values) == {"other"} and set(ds["part"].values) == {"other"}
    np.testing.assert_array_equal(ds["block"], -1)
    after = b.state_dict()
    diffs = {n: p.detach().double() - after[n].double() for n, p in a.named_parameters()}
    for name, diff in diffs.items():
        assert float(ds["l2"].sel(tensor=name)) == pytest.approx(float(diff.norm()), rel=1e-12)
    total = torch.cat([d.flatten() for d in diffs.values()]).norm()
    other = aggregate(ds, "kind").sel(kind="other")
    assert float(other["l2"]) == pytest.approx(float(total), rel=1e-12)
    np.testing.assert_array_equal(weight_change(a, a.state_dict())["l2"], 0.0)


def test_bare_backbone_against_its_perturbed_copy(tiny_dt):
    backbone = tiny_dt.backbone
    moved = perturb_(copy.deepcopy(backbone), seed=3)
    ds = weight_change(backbone.state_dict(), moved)  # state dict buffers (attn.mask) dropped
    assert list(ds["tensor"].values) == [n for n, _ in backbone.named_parameters()]
    assert {"embed.W_E", "pos_embed.W_pos", "unembed.W_U"} <= set(ds["tensor"].values)
    assert set(ds["kind"].values) == {"other"}
    for name, p in backbone.named_parameters():
        diff = (p.double() - moved.get_parameter(name).double()).detach().norm()
        assert float(ds["l2"].sel(tensor=name)) == pytest.approx(float(diff), rel=1e-12, abs=0)
    assert int((ds["l2"] > 0).sum()) == ds.sizes["tensor"] - 6  # perturb_ leaves zero b_Q/K/V
    assert ds.sizes["tensor"] == len(list(backbone.parameters()))


def test_mismatched_names_fail_with_one_line(tiny_dt):
    sd = dict(tiny_dt.state_dict())
    renamed = {
        ("predict_action.W" if k == "predict_action.weight" else k): v for k, v in sd.items()
    }
    with pytest.raises(DtlensError) as err:
        weight_change(tiny_dt, renamed)
    message = str(err.value)
    assert message == (
        "the models have different parameters: only in before: predict_action.weight; "
        "only in after: predict_action.W"
    )
    with pytest.raises(
        DtlensError,
        match=r"only in before: wte.weight, wpe.weight, h.0.ln_1.weight "
        r"\(\+25 more\); only in after: embed_return.weight, embed_return.bias, "
        r"embed_state.weight \(\+\d+ more\)$",
    ) as err:
        weight_change(tiny_gpt2(0), tiny_dt)
    assert "\n" not in str(err.value)
    bare = DecisionTransformer(DTConfig(state_dim=5, act_dim=2, max_ep_len=50, backbone=TINY))
    with pytest.raises(DtlensError, match="the models have different parameters"):
        weight_change(tiny_dt.backbone, bare)
