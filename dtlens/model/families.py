"""Decoders of other families as DT backbones: GPT-Neo, GPT-J, GPT-NeoX (Pythia), OPT, Llama,
Mistral and Qwen2, from a local HF directory, through TransformerLens's own converters.

The config is TransformerLens's `convert_hf_model_config` of the directory's config and the
weights its `convert_*_weights` of the HF model, loaded with no processing (no fold_ln, no
centering): the backbone holds the published parameters. Every conversion is checked on load
against HF's last hidden state (`check_against_hf`): a variant TransformerLens does not model
fails in one line instead of silently (post-norm OPT, biased Llama and other rope scalings are
refused before converting).

What a DT sees of each family (`BackboneConfig.arch` carries it into every DT and checkpoint):
- Positions: a DT embeds time with its own timestep embedding and never uses a backbone's
  position embedding (dropped like GPT-2's `wpe`: GPT-Neo, OPT). Rotary families (GPT-J, NeoX,
  Llama, Mistral, Qwen2) rotate queries and keys by token position inside attention, so their
  blocks also see the relative token offset within the window, which cannot be switched off;
  with left padding the rotary positions count from the first real token (TransformerLens reads
  the attention mask), so a padded window equals the same window unpadded.
- The DT's own parts (timestep and token embeddings, their LayerNorm, the action head) are the
  same for every family; only the blocks and the final norm (RMSNorm for Llama) come from it.
- Blocks: GPT-J and NeoX run attention and MLP in parallel from one residual; Llama, Mistral
  and Qwen2 use RMSNorm, a gated SiLU MLP and grouped keys/values (`attn._W_K`, `mlp.W_gate`);
  GPT-Neo does not scale attention scores and alternates global and local (windowed) layers.
- Such backbones run through TransformerLens's hooked blocks (dtlens's fused GPT-2 kernels do
  not apply), so every hook name is the same as for GPT-2.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.loading_from_pretrained import convert_hf_model_config
from transformer_lens.pretrained.weight_conversions import (
    convert_gptj_weights,
    convert_llama_weights,
    convert_mistral_weights,
    convert_neo_weights,
    convert_neox_weights,
    convert_opt_weights,
    convert_qwen2_weights,
)

from dtlens.errors import DtlensError
from dtlens.model.backbones import ARCH_FIELDS, SHARED_FIELDS, Backbone, backbone_config, quiet_hf
from dtlens.model.config import BackboneConfig

#: HF model_type -> (causal LM class, TransformerLens weight converter).
FAMILIES = {
    "gpt_neo": ("GPTNeoForCausalLM", convert_neo_weights),
    "gptj": ("GPTJForCausalLM", convert_gptj_weights),
    "gpt_neox": ("GPTNeoXForCausalLM", convert_neox_weights),
    "opt": ("OPTForCausalLM", convert_opt_weights),
    "llama": ("LlamaForCausalLM", convert_llama_weights),
    "mistral": ("MistralForCausalLM", convert_mistral_weights),
    "qwen2": ("Qwen2ForCausalLM", convert_qwen2_weights),
}
#: TransformerLens config fields about tokenizers and init, which a backbone does not need.
IGNORED_FIELDS = (
    "d_vocab", "tokenizer_name", "default_prepend_bos", "tokenizer_prepends_bos",
    "initializer_range", "trust_remote_code", "quantization_method",
)  # fmt: skip


def hf_model_type(path: str | os.PathLike) -> str | None:
    """The `model_type` of the HF directory `path` (None without a readable config.json)."""
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def _refuse_unmodelled(hf_config) -> None:
    """Variants TransformerLens's converters would load without modelling them."""
    kind = hf_config.model_type
    if kind == "opt" and not hf_config.do_layer_norm_before:
        raise DtlensError("post-norm OPT (do_layer_norm_before=False) is not supported")
    if kind == "opt" and hf_config.word_embed_proj_dim != hf_config.hidden_size:
        raise DtlensError("OPT with a projected embedding (word_embed_proj_dim) is not supported")
    biased = getattr(hf_config, "attention_bias", False) or getattr(hf_config, "mlp_bias", False)
    if kind in ("llama", "mistral") and biased:
        raise DtlensError(f"{kind} with attention or MLP biases is not supported")
    rope = getattr(hf_config, "rope_scaling", None) or getattr(hf_config, "rope_parameters", None)
    rope_type = (rope or {}).get("rope_type") or (rope or {}).get("type")
    if rope_type not in (None, "default", "llama3"):
        raise DtlensError(f"{kind} with {rope_type!r} rope scaling is not supported")


def tl_config_from_hf(hf_config, architecture: str) -> HookedTransformerConfig:
    """TransformerLens's config of an HF decoder config, offline. TransformerLens picks some
    configs by the model's name (any name containing "llama", ...); reading a copy from a neutral
    folder makes it convert the config itself."""
    hf_config = copy.deepcopy(hf_config)
    hf_config.architectures = [architecture]
    with tempfile.TemporaryDirectory() as tmp:
        hf_config.save_pretrained(tmp)
        cfg = convert_hf_model_config(tmp, local_files_only=True)
    if cfg.get("quantization_method"):
        raise DtlensError(f"{architecture}: quantized weights are not supported")
    unknown = sorted(set(cfg) - {*SHARED_FIELDS, *ARCH_FIELDS, *IGNORED_FIELDS})
    if unknown:
        raise DtlensError(f"{architecture}: TransformerLens config fields {unknown} not supported")
    keep = {k: v for k, v in cfg.items() if k in (*SHARED_FIELDS, *ARCH_FIELDS, "d_vocab")}
    return HookedTransformerConfig(
        **keep, default_prepend_bos=False, init_weights=False, device="cpu", dtype=torch.float32
    )


@torch.no_grad()
def decoder_backbone(hf_model: nn.Module) -> Backbone:
    """An HF causal LM of one of FAMILIES as (spec, weights in TransformerLens names), no weight
    processing. The conversion is checked against HF's last hidden state, which needs the module:
    this check is the one place a family's backbone is built before the DT."""
    kind = hf_model.config.model_type
    if kind not in FAMILIES or type(hf_model).__name__ != FAMILIES[kind][0]:
        names = ", ".join(cls for cls, _ in FAMILIES.values())
        raise DtlensError(f"unsupported model {type(hf_model).__name__}: expected one of {names}")
    _refuse_unmodelled(hf_model.config)
    architecture, convert = FAMILIES[kind]
    cfg = tl_config_from_hf(hf_model.config, architecture)
    state = {k: v.detach().float() for k, v in convert(hf_model.float(), cfg).items()}
    backbone = Backbone(backbone_config(cfg), state, d_vocab=cfg.d_vocab, n_ctx=cfg.n_ctx)
    check_against_hf(backbone.build(), hf_model)
    return backbone


@torch.no_grad()
def check_against_hf(model: HookedTransformer, hf_model: nn.Module, tol: float = 1e-3) -> float:
    """Max |TL - HF| of the last hidden state on a few seeded tokens; DtlensError above `tol`
    (relative to the hidden state's scale)."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, min(16, model.cfg.n_ctx)), generator=g)
    want = hf_model.eval()(tokens, output_hidden_states=True).hidden_states[-1]
    diff = float((last_hidden_state(model, tokens) - want).abs().max())
    if not diff <= tol * max(1.0, float(want.abs().max())):
        raise DtlensError(
            f"{type(hf_model).__name__}: the converted backbone differs from HF by {diff:.2g} "
            "(a variant TransformerLens does not model)"
        )
    return diff


def last_hidden_state(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos d_model"]:
    """The final norm's output (the norm's hook reads before its weight and bias)."""
    return model.ln_final(model(tokens, stop_at_layer=model.cfg.n_layers))


def _hf_config(path: str | os.PathLike):
    """The HF config of the local decoder directory `path`, of one of FAMILIES."""
    kind = hf_model_type(path)
    if kind is None:
        raise DtlensError(f"{path}: not an HF model directory (no readable config.json)")
    if kind not in FAMILIES:
        raise DtlensError(
            f"{path}: unsupported HF model type {kind!r} (supported: gpt2, imagegpt, "
            f"{', '.join(FAMILIES)})"
        )
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, local_files_only=True)


def decoder_spec(path: str | os.PathLike) -> BackboneConfig:
    """The BackboneConfig of the local HF decoder directory `path`, from its config.json alone."""
    hf_config = _hf_config(path)
    _refuse_unmodelled(hf_config)
    return backbone_config(tl_config_from_hf(hf_config, FAMILIES[hf_config.model_type][0]))


def load_decoder_backbone(path: str | os.PathLike) -> Backbone:
    """The backbone of the local HF decoder directory `path` (never the network)."""
    _hf_config(path)
    from transformers import AutoModelForCausalLM

    with quiet_hf():
        hf_model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=torch.float32
        )
    return decoder_backbone(hf_model)
