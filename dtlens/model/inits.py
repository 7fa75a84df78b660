"""Resolve an `--init` name to a backbone: random, gpt2, imagegpt, an embedded one, or a path;
`shuffled:INIT` and `matched:INIT` are controls made from INIT (`dtlens.model.controls`)."""

from __future__ import annotations

from pathlib import Path

from transformer_lens import HookedTransformer

import dtlens.paths
from dtlens.errors import DtlensError
from dtlens.io import file_sha256, load_json
from dtlens.model.backbones import (
    backbone_config,
    load_hf_pretrained,
    load_params,
    new_backbone,
    random_backbone,
)
from dtlens.model.checkpoint import load_backbone_file
from dtlens.model.config import MINI, PAPER_RANDOM, BackboneConfig
from dtlens.model.controls import CONTROLS, split_control
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

    `size` only shapes `random`; pretrained backbones bring their own architecture. `seed` also
    seeds the controls (`shuffled:INIT`, `matched:INIT`).
    """
    control, inner = split_control(init)
    if control is not None:
        return _controlled(control, inner, size, seed, imagegpt_norm)
    if init == "random":
        return random_backbone(size, seed=seed)
    if init == "random-paper":
        return random_backbone(PAPER_RANDOM, seed=seed)
    if init in EMBEDDED_BACKBONES:
        return load_backbone_file(verified_backbone_path(init))
    path = Path(init)
    if path.suffix == ".safetensors":
        return load_backbone_file(path)
    if path.is_dir() and hf_model_type(path) not in ("gpt2", "imagegpt"):
        return load_decoder_backbone(path)
    if init in ("gpt2", "imagegpt") or path.is_dir():
        return backbone_from_hf(load_hf_pretrained(init), imagegpt_norm=imagegpt_norm)
    raise DtlensError(
        f"unknown init {init!r}: expected one of {', '.join(NAMED)}, an HF model directory, "
        "a dtlens .safetensors checkpoint, or CONTROL:INIT with CONTROL one of "
        f"{', '.join(CONTROLS)}"
    )


def _controlled(
    control: str, inner: str, size: BackboneConfig, seed: int, imagegpt_norm: ImageGPTNorm
) -> HookedTransformer:
    """The backbone of `inner`, transformed by `control` and rebuilt from (config, state dict)."""
    if not inner:
        raise DtlensError(
            f"unknown init {control + ':'!r}: name an init after it, e.g. {control}:text"
        )
    try:
        source = resolve_backbone(inner, size, seed, imagegpt_norm)
    except DtlensError as e:
        raise DtlensError(f"{control}:{inner}: {e}") from None
    state = {name: p.detach() for name, p in source.named_parameters()}
    cfg, state = CONTROLS[control](backbone_config(source), state, seed)
    model = new_backbone(cfg, d_vocab=source.cfg.d_vocab, n_ctx=source.cfg.n_ctx)
    load_params(model, state, f"{control}:{inner}")
    return model


def verified_backbone_path(name: str) -> Path:
    """`embedded_backbone_path(name)`; a shipped file must have the sha256 that the manifest
    (dtlens/assets/backbones/manifest.json) records for it."""
    path = embedded_backbone_path(name)
    manifest = dtlens.paths.BACKBONE_ASSETS / "manifest.json"
    if path.parent != dtlens.paths.BACKBONE_ASSETS or not manifest.is_file():
        return path
    entry = load_json(manifest).get(name)
    if entry is not None and file_sha256(path) != entry["sha256"]:
        raise DtlensError(
            f"{path}: sha256 differs from {manifest} (a damaged or replaced file); "
            f"rebuild it with `{entry['command']}`"
        )
    return path
