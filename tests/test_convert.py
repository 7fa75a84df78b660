"""HF GPT-2 / ImageGPT / Decision Transformer -> dtlens give the same numbers as HF."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    DecisionTransformerConfig,
    DecisionTransformerModel,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
    ImageGPTConfig,
    ImageGPTForCausalImageModeling,
    ImageGPTModel,
)

from dtlens import DecisionTransformer
from dtlens.errors import DtlensError
from dtlens.model.backbones import load_hf_pretrained
from dtlens.model.convert import backbone_from_hf
from tests.conftest import dt_inputs, perturb_

SIZES = dict(n_layer=2, n_embd=16, n_head=4, n_positions=12, vocab_size=20)


def tiny_hf(cls, tmp_path):
    """Build, perturb, save and reload a tiny HF model (the loading path users take)."""
    config_cls = GPT2Config if "GPT2" in cls.__name__ else ImageGPTConfig
    torch.manual_seed(0)
    model = perturb_(cls(config_cls(**SIZES)).eval())
    model.save_pretrained(tmp_path)
    reloaded = cls.from_pretrained(tmp_path).eval()
    return reloaded


def hf_hidden(stack, embeds, mask):
    out = stack(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True)
    return out.hidden_states


def tl_hidden(model, embeds, mask):
    _, cache = model.run_with_cache(
        embeds, start_at_layer=0, stop_at_layer=model.cfg.n_layers, attention_mask=mask
    )
    resid = [cache[f"blocks.{i}.hook_resid_pre"] for i in range(model.cfg.n_layers)]
    final = model.ln_final(cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"])
    return [*resid, final]


@pytest.mark.parametrize(
    "cls", [GPT2Model, GPT2LMHeadModel, ImageGPTModel, ImageGPTForCausalImageModeling]
)
@pytest.mark.parametrize("pad", [0, 3])
def test_backbone_matches_hf_hidden_states(cls, pad, tmp_path):
    hf = tiny_hf(cls, tmp_path)
    tl = backbone_from_hf(hf)
    stack = getattr(hf, "transformer", hf)
    g = torch.Generator().manual_seed(1)
    embeds = torch.randn(3, 10, 16, generator=g)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1:, :pad] = 0
    # HF adds its position embeddings to inputs_embeds; the TL residual input must carry them.
    ours = tl_hidden(tl, embeds + tl.W_pos[:10], mask)
    theirs = hf_hidden(stack, embeds, mask)
    # HF's last hidden_states entry is after ln_f; the others are the residual stream.
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        valid = mask.bool()
        torch.testing.assert_close(a[valid], b[valid], atol=1e-4, rtol=0, msg=f"hidden {i}")


@pytest.mark.parametrize("cls", [GPT2LMHeadModel, ImageGPTForCausalImageModeling])
def test_token_inputs_and_logits_match_hf(cls, tmp_path):
    hf = tiny_hf(cls, tmp_path)
    tl = backbone_from_hf(hf)
    tokens = torch.randint(
        0, SIZES["vocab_size"], (2, 8), generator=torch.Generator().manual_seed(2)
    )
    theirs = hf(input_ids=tokens).logits
    ours = tl(tokens)[..., : theirs.shape[-1]]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_imagegpt_keeps_rms_norm_and_quick_gelu(tmp_path):
    tl = backbone_from_hf(tiny_hf(ImageGPTModel, tmp_path))
    assert tl.cfg.normalization_type == "RMS" and tl.cfg.act_fn == "quick_gelu"
    assert not hasattr(tl.blocks[0].ln1, "b")


def test_imagegpt_paper_quirk_is_layernorm_with_zero_bias(tmp_path):
    hf = tiny_hf(ImageGPTModel, tmp_path)
    quirk = backbone_from_hf(hf, imagegpt_norm="layernorm")
    assert quirk.cfg.normalization_type == "LN"
    torch.testing.assert_close(quirk.blocks[0].ln1.w, hf.h[0].ln_1.weight)
    assert torch.all(quirk.blocks[0].ln1.b == 0)
    # A different network than ImageGPT as published: outputs differ.
    x = torch.randn(1, 5, 16)
    exact = backbone_from_hf(hf)
    a = quirk(x, start_at_layer=0, stop_at_layer=2)
    b = exact(x, start_at_layer=0, stop_at_layer=2)
    assert (a - b).abs().max() > 1e-3


def tiny_hf_dt(tmp_path) -> DecisionTransformerModel:
    torch.manual_seed(0)
    cfg = DecisionTransformerConfig(
        state_dim=5, act_dim=2, hidden_size=16, n_layer=2, n_head=4, max_ep_len=50, n_positions=64
    )
    model = perturb_(DecisionTransformerModel(cfg))
    model.save_pretrained(tmp_path)
    return DecisionTransformerModel.from_pretrained(tmp_path).eval()


@pytest.mark.parametrize("pad", [0, 2])
def test_dt_from_hf_same_action_predictions(pad, tmp_path):
    hf = tiny_hf_dt(tmp_path)
    dt = DecisionTransformer.from_hf(hf).eval()
    s, a, r, t, m = dt_inputs(dt.cfg, batch=3, steps=5, pad=pad)
    with torch.no_grad():
        theirs = hf(states=s, actions=a, returns_to_go=r, timesteps=t, attention_mask=m)[1]
        ours = dt(s, a, r, t, m)
    valid = m.bool()
    torch.testing.assert_close(ours[valid], theirs[valid], atol=1e-4, rtol=0)


def test_unsupported_architecture_is_one_clear_error():
    with pytest.raises(DtlensError, match="unsupported architecture Linear"):
        backbone_from_hf(torch.nn.Linear(2, 2))


def test_missing_hf_directory_says_where_to_put_files(tmp_path):
    with pytest.raises(DtlensError, match="no local copy found"):
        load_hf_pretrained(str(tmp_path / "nowhere"))


def test_load_hf_pretrained_from_directory(tmp_path):
    hf = tiny_hf(GPT2Model, tmp_path)
    loaded = load_hf_pretrained(str(tmp_path))
    assert type(loaded).__name__ == "GPT2Model"
    torch.testing.assert_close(loaded.h[0].attn.c_attn.weight, hf.h[0].attn.c_attn.weight)
