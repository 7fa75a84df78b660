"""Resolve an `--init` name to a backbone: random, gpt2, imagegpt, an embedded one, or a path."""

from __future__ import annotations

from pathlib import Path

from transformer_lens import HookedTransformer

from dtlens.errors import DtlensError
from dtlens.model.backbones import load_hf_pretrained, random_backbone
from dtlens.model.checkpoint import load_backbone_file
from dtlens.model.config import MINI, PAPER_RANDOM, BackboneConfig
from dtlens.model.convert import ImageGPTNorm, backbone_from_hf
from dtlens.model.families import hf_model_type, load_decoder_backbone
from dtlens.paths import EMBEDDED_BACKBONES, embedded_backbone_path

NAMED = ("random", "random-paper", "gpt2", "imagegpt", *EMBEDDED_BACKBONES)


def resolve_backbone(
    init: str,
    size: BackboneConfig = MINI,
    seed: int = 0,
    imagegpt_norm: ImageGPTNorm = "rms",
) -> HookedTransformer:
    """`init` is one of NAMED, an HF model directory (GPT-2, ImageGPT, or a decoder family of
    `dtlens.model.families`), or a dtlens .safetensors file.

    `size` only shapes `random`; pretrained backbones bring their own architecture.
    """
    if init == "random":
        return random_backbone(size, seed=seed)
    if init == "random-paper":
        return random_backbone(PAPER_RANDOM, seed=seed)
    if init in EMBEDDED_BACKBONES:
        return load_backbone_file(embedded_backbone_path(init))
    path = Path(init)
    if path.suffix == ".safetensors":
        return load_backbone_file(path)
    if path.is_dir() and hf_model_type(path) not in ("gpt2", "imagegpt"):
        return load_decoder_backbone(path)
    if init in ("gpt2", "imagegpt") or path.is_dir():
        return backbone_from_hf(load_hf_pretrained(init), imagegpt_norm=imagegpt_norm)
    raise DtlensError(
        f"unknown init {init!r}: expected one of {', '.join(NAMED)}, an HF model directory, "
        "or a dtlens .safetensors checkpoint"
    )
