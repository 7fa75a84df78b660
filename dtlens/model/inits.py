"""Resolve an `--init` name to a backbone: random, gpt2, imagegpt, an embedded one, or a path;
`shuffled:INIT` and `matched:INIT` are controls made from INIT (`dtlens.model.controls`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dtlens.paths
from dtlens.errors import DtlensError
from dtlens.io import file_sha256, load_json
from dtlens.model.backbones import (
    Backbone,
    hf_config,
    load_hf_pretrained,
    random_source,
    read_backbone,
    read_backbone_spec,
)
from dtlens.model.config import MINI, PAPER_RANDOM, BackboneConfig
from dtlens.model.controls import CONTROLS, split_control
from dtlens.model.convert import ImageGPTNorm, backbone_config_from_hf, hf_backbone
from dtlens.model.families import decoder_spec, hf_model_type, load_decoder_backbone
from dtlens.paths import EMBEDDED_BACKBONES, embedded_backbone_path

NAMED = ("random", "random-paper", "gpt2", "imagegpt", *EMBEDDED_BACKBONES)


def resolve_backbone(
    init: str,
    size: BackboneConfig = MINI,
    seed: int = 0,
    imagegpt_norm: ImageGPTNorm = "rms",
) -> Backbone:
    """The (spec, weights) of `init`: one of NAMED, an HF model directory (GPT-2, ImageGPT, or a
    decoder family of `dtlens.model.families`), or a dtlens .safetensors file. Builds no module
    (a decoder family's conversion check aside).

    `size` only shapes `random`; pretrained backbones bring their own architecture. `seed` also
    seeds the controls (`shuffled:INIT`, `matched:INIT`).
    """
    return _resolve(init, size, seed, imagegpt_norm, spec_only=False)


def backbone_spec(
    init: str, size: BackboneConfig = MINI, imagegpt_norm: ImageGPTNorm = "rms"
) -> BackboneConfig:
    """The BackboneConfig of `init` without its weights: from a safetensors header or an HF
    config.json (for dry runs, studies and `dtlens model info`)."""
    return _resolve(init, size, 0, imagegpt_norm, spec_only=True)


def _resolve(
    init: str, size: BackboneConfig, seed: int, imagegpt_norm: ImageGPTNorm, spec_only: bool
) -> Backbone | BackboneConfig:
    """`resolve_backbone`, or with `spec_only` `backbone_spec`: one dispatch for both."""
    control, inner = split_control(init)
    if control is not None:
        if not inner:
            raise DtlensError(
                f"unknown init {control + ':'!r}: name an init after it, e.g. {control}:text"
            )
        try:
            source = _resolve(inner, size, seed, imagegpt_norm, spec_only)
        except DtlensError as e:
            raise DtlensError(f"{control}:{inner}: {e}") from None
        if spec_only:  # a control keeps its source's architecture
            return source
        cfg, state = CONTROLS[control](source.cfg, source.state, seed)
        return dataclasses.replace(source, cfg=cfg, state=state)
    if init in ("random", "random-paper"):
        cfg = size if init == "random" else PAPER_RANDOM
        return cfg if spec_only else random_source(cfg, seed=seed)
    path = Path(init)
    if init in EMBEDDED_BACKBONES or path.suffix == ".safetensors":
        if init in EMBEDDED_BACKBONES:
            path = verified_backbone_path(init)
        return read_backbone_spec(path) if spec_only else read_backbone(path)
    if path.is_dir() and hf_model_type(path) not in ("gpt2", "imagegpt"):
        return decoder_spec(path) if spec_only else load_decoder_backbone(path)
    if init in ("gpt2", "imagegpt") or path.is_dir():
        if spec_only:
            return backbone_config_from_hf(hf_config(init), imagegpt_norm)
        return hf_backbone(load_hf_pretrained(init), imagegpt_norm=imagegpt_norm)
    raise DtlensError(
        f"unknown init {init!r}: expected one of {', '.join(NAMED)}, an HF model directory, "
        "a dtlens .safetensors checkpoint, or CONTROL:INIT with CONTROL one of "
        f"{', '.join(CONTROLS)}"
    )


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
