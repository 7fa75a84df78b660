"""HF GPT-2-family models -> TransformerLens HookedTransformer, with no weight processing.

No fold_ln, no centering: the converted weights are HF's weights, rearranged, so weight
diagnostics and fine-tuning see the published parameters.
"""

from __future__ import annotations

from typing import Literal

import einops
import torch
from torch import nn
from transformer_lens import HookedTransformer
from transformer_lens.utilities.activation_functions import SUPPORTED_ACTIVATIONS

from dtlens.errors import DtlensError
from dtlens.model.backbones import Backbone
from dtlens.model.config import BackboneConfig

ImageGPTNorm = Literal["rms", "layernorm"]


def _split_model(hf_model: nn.Module) -> tuple[nn.Module, torch.Tensor | None]:
    """(the GPT-2-style stack with .h and .ln_f, the LM head weight or None)."""
    name = type(hf_model).__name__
    if name in ("GPT2Model", "ImageGPTModel", "DecisionTransformerGPT2Model"):
        return hf_model, None
    if name in ("GPT2LMHeadModel", "ImageGPTForCausalImageModeling"):
        return hf_model.transformer, hf_model.lm_head.weight
    raise DtlensError(
        f"unsupported architecture {name}: expected GPT2Model, GPT2LMHeadModel, ImageGPTModel "
        "or ImageGPTForCausalImageModeling"
    )


def backbone_config_from_hf(hf_config, imagegpt_norm: ImageGPTNorm = "rms") -> BackboneConfig:
    """The BackboneConfig of an HF GPT2Config / ImageGPTConfig / DecisionTransformerConfig."""
    if getattr(hf_config, "add_cross_attention", False):
        raise DtlensError("cross-attention GPT-2 models are not supported")
    if not getattr(hf_config, "scale_attn_weights", True) or getattr(
        hf_config, "scale_attn_by_inverse_layer_idx", False
    ):
        raise DtlensError("only GPT-2's standard attention scaling (1/sqrt(d_head)) is supported")
    act = hf_config.activation_function
    if act not in SUPPORTED_ACTIVATIONS:
        raise DtlensError(f"unsupported activation function {act!r}")
    rms = hf_config.model_type == "imagegpt" and imagegpt_norm == "rms"
    d_model = getattr(hf_config, "n_embd", None) or hf_config.hidden_size  # DT calls it hidden_size
    return BackboneConfig(
        n_layers=hf_config.n_layer,
        d_model=d_model,
        n_heads=hf_config.n_head,
        d_mlp=hf_config.n_inner or 4 * d_model,
        act_fn=act,
        normalization_type="RMS" if rms else "LN",
        eps=hf_config.layer_norm_epsilon,
    )


def _norm(sd: dict, hf: str, tl: str, cfg: BackboneConfig) -> dict[str, torch.Tensor]:
    out = {f"{tl}.w": sd[f"{hf}.weight"]}
    if cfg.normalization_type == "LN":  # ImageGPT's norm has no bias: the quirk adds a zero one
        out[f"{tl}.b"] = sd.get(f"{hf}.bias", torch.zeros_like(sd[f"{hf}.weight"]))
    return out


def convert_gpt2_blocks(
    sd: dict[str, torch.Tensor], cfg: BackboneConfig
) -> dict[str, torch.Tensor]:
    """HF GPT-2 / ImageGPT block and final-norm weights (keys `h.{i}.*`, `ln_f.*`) -> TL names.
    Each block is split into its own head count (`cfg.block(i)`, mixed backbones)."""
    out: dict[str, torch.Tensor] = {}
    for i in range(cfg.n_layers):
        p, q, own = f"h.{i}", f"blocks.{i}", cfg.block(i)
        h = own.n_heads
        out |= _norm(sd, f"{p}.ln_1", f"{q}.ln1", own) | _norm(sd, f"{p}.ln_2", f"{q}.ln2", own)
        W_Q, W_K, W_V = sd[f"{p}.attn.c_attn.weight"].chunk(3, dim=1)
        b_Q, b_K, b_V = sd[f"{p}.attn.c_attn.bias"].chunk(3, dim=0)
        for n, W, b in (("Q", W_Q, b_Q), ("K", W_K, b_K), ("V", W_V, b_V)):
            out[f"{q}.attn.W_{n}"] = einops.rearrange(W, "m (i h) -> i m h", i=h)
            out[f"{q}.attn.b_{n}"] = einops.rearrange(b, "(i h) -> i h", i=h)
        out[f"{q}.attn.W_O"] = einops.rearrange(
            sd[f"{p}.attn.c_proj.weight"], "(i h) m -> i h m", i=h
        )
        out[f"{q}.attn.b_O"] = sd[f"{p}.attn.c_proj.bias"]
        out[f"{q}.mlp.W_in"] = sd[f"{p}.mlp.c_fc.weight"]
        out[f"{q}.mlp.b_in"] = sd[f"{p}.mlp.c_fc.bias"]
        out[f"{q}.mlp.W_out"] = sd[f"{p}.mlp.c_proj.weight"]
        out[f"{q}.mlp.b_out"] = sd[f"{p}.mlp.c_proj.bias"]
    return out | _norm(sd, "ln_f", "ln_final", cfg)


@torch.no_grad()
def hf_backbone(hf_model: nn.Module, imagegpt_norm: ImageGPTNorm = "rms") -> Backbone:
    """An HF GPT2Model, GPT2LMHeadModel, ImageGPTModel or ImageGPTForCausalImageModeling as
    (spec, weights in TransformerLens names), token and position embeddings and unembedding
    included. ImageGPT keeps its RMS-style norm; `imagegpt_norm="layernorm"` reproduces the
    paper's code, which loaded ImageGPT through GPT2Model: a LayerNorm (mean subtracted) with
    ImageGPT's weight and a zero bias.
    """
    stack, head = _split_model(hf_model)
    cfg = backbone_config_from_hf(hf_model.config, imagegpt_norm)
    sd = {k: v.detach().float() for k, v in stack.state_dict().items()}
    d_vocab, n_ctx = sd["wte.weight"].shape[0], sd["wpe.weight"].shape[0]
    W_U = (head if head is not None else sd["wte.weight"]).detach().float().T
    # ImageGPT's head predicts vocab-1 classes (no start-of-sequence); pad it to d_vocab.
    if W_U.shape[1] < d_vocab:
        W_U = torch.cat([W_U, W_U.new_zeros(cfg.d_model, d_vocab - W_U.shape[1])], dim=1)
    state = convert_gpt2_blocks(sd, cfg) | {
        "embed.W_E": sd["wte.weight"],
        "pos_embed.W_pos": sd["wpe.weight"],
        "unembed.W_U": W_U,
        "unembed.b_U": torch.zeros(d_vocab),
    }
    return Backbone(cfg, state, d_vocab=d_vocab, n_ctx=n_ctx)


def backbone_from_hf(hf_model: nn.Module, imagegpt_norm: ImageGPTNorm = "rms") -> HookedTransformer:
    """`hf_backbone`, built: it runs on token ids like the HF model and its `ln_final` output
    equals HF's last hidden state."""
    return hf_backbone(hf_model, imagegpt_norm).build()
