"""A readable description of a backbone or DT: sizes, parameter count, norm, hook names."""

from __future__ import annotations

import math
import re
from pathlib import Path

import dtlens.paths
from dtlens.io import load_json
from dtlens.model.backbones import UNUSED_BY_DT, read_header
from dtlens.model.checkpoint import read_checkpoint_config
from dtlens.model.config import DTConfig
from dtlens.model.dt import DecisionTransformer
from dtlens.model.inits import backbone_spec
from dtlens.paths import EMBEDDED_BACKBONES, embedded_backbone_path


def hook_patterns(names: list[str]) -> list[str]:
    """Collapse per-block hook names into one line each: blocks.0.x, blocks.1.x -> blocks.{i}.x."""
    seen: dict[str, None] = {}
    for n in names:
        seen[re.sub(r"blocks\.\d+\.", "blocks.{i}.", n)] = None
    return list(seen)


def backbone_file(name: str) -> Path | None:
    """The file of the embedded backbone `name` or of a backbone .safetensors path, else None."""
    if name in EMBEDDED_BACKBONES:
        return embedded_backbone_path(name)
    if name.endswith(".safetensors") and read_header(name).get("kind") == "backbone":
        return Path(name)
    return None


def pretraining_record(name: str) -> dict[str, object] | None:
    """How the embedded backbone `name` (or a backbone .safetensors file) was pretrained: corpus,
    tokens_seen, held-out and unigram perplexity (the floor a trained LM must beat) and the
    command that rebuilds it; None for anything else."""
    path = backbone_file(name)
    if path is None:
        return None
    header = read_header(path)
    meta = header.get("meta", {})
    if "heldout_loss" not in meta:
        return None
    # The fixed-step builds record steps x batch rows of n_ctx targets.
    seen = meta.get("tokens_seen", meta["steps"] * meta["batch_size"] * header["n_ctx"])
    heldout, unigram = math.exp(meta["heldout_loss"]), math.exp(meta["unigram_loss"])
    assets = dtlens.paths.BACKBONE_ASSETS
    manifest = assets / "manifest.json"  # the embedded ones' rebuild command and hash
    shipped = path.parent == assets and manifest.is_file()
    entry = load_json(manifest).get(path.stem, {}) if shipped else {}
    return {
        "corpus": meta["corpus"],
        "tokens_seen": seen,
        "heldout_perplexity": round(heldout, 3),
        "unigram_perplexity": round(unigram, 3),
        "perplexity_ratio": round(heldout / unigram, 4),
        "command": entry.get("command", meta["command"]),
        "file": str(path),
        "sha256": entry.get("sha256"),
    }


def describe(name: str, imagegpt_norm: str = "rms") -> tuple[dict[str, object], list[str]]:
    """Rows and hook-name patterns of a backbone (any `--init`) or a DT checkpoint, from its
    spec alone (a safetensors header or an HF config.json): no weights are read."""
    path = Path(name)
    if path.suffix == ".safetensors" and read_header(path).get("kind") == "dt":
        cfg, _ = read_checkpoint_config(path)
        dt = DecisionTransformer(cfg)
        rows = _backbone_rows(dt) | {
            "kind": "Decision Transformer",
            "state_dim": cfg.state_dim,
            "act_dim": cfg.act_dim,
            "max_ep_len": cfg.max_ep_len,
            "parameters (whole DT)": sum(p.numel() for p in dt.parameters()),
        }
        return rows, hook_patterns(dt.hook_names())
    spec = backbone_spec(name, imagegpt_norm=imagegpt_norm)
    dt = DecisionTransformer(DTConfig(state_dim=1, act_dim=1, backbone=spec))
    return _backbone_rows(dt) | {"kind": "backbone"}, hook_patterns(dt.hook_names())


def _backbone_rows(dt: DecisionTransformer) -> dict[str, object]:
    """The rows of `dt`'s backbone (its blocks and final norm: what a DT uses of a backbone)."""
    cfg = dt.cfg.backbone
    used = sum(
        p.numel() for n, p in dt.backbone.named_parameters() if not n.startswith(UNUSED_BY_DT)
    )
    mixed = {
        f"block {b.index}": f"{b.n_heads} heads, {b.act_fn}, d_mlp {b.d_mlp}" for b in cfg.blocks
    }
    return {
        "layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "heads": cfg.n_heads,
        "d_head": cfg.d_head,
        "d_mlp": cfg.d_mlp,
        "norm": {"LN": "LayerNorm", "RMS": "RMS norm (no mean, no bias)"}[cfg.normalization_type],
        "activation": cfg.act_fn,
        "parameters (blocks + final norm)": used,
    } | mixed
