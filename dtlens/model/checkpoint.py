"""DT checkpoints: one safetensors file, the DTConfig (and caller metadata) in its JSON header.

Nothing is unpickled: loading reads tensors and JSON only. The header's DTConfig carries the
released-code options (padding, time embedding, tied head) and a mixed backbone's own blocks; a
checkpoint written before them loads with their defaults (the standard DT, uniform blocks).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dtlens.errors import DtlensError
from dtlens.io import load_tensors, save_tensors
from dtlens.model.backbones import load_params, read_header
from dtlens.model.config import DTConfig, config_mismatches
from dtlens.model.dt import DecisionTransformer


def save_model(model: DecisionTransformer, path: str | os.PathLike, **meta: object) -> Path:
    header = {"kind": "dt", "config": model.cfg.to_dict(), "meta": meta}
    params = dict(model.named_parameters())
    return save_tensors(params, path, metadata={"dtlens": json.dumps(header)})


def read_checkpoint_config(path: str | os.PathLike) -> tuple[DTConfig, dict]:
    """(config, meta) of a DT checkpoint, without loading its tensors."""
    header = read_header(path)
    if header.get("kind") != "dt":
        raise DtlensError(f"{path}: not a Decision Transformer checkpoint ({header.get('kind')})")
    return DTConfig.from_dict(header["config"]), header.get("meta", {})


def load_model(
    path: str | os.PathLike,
    expected: DTConfig | None = None,
    into: DecisionTransformer | None = None,
) -> DecisionTransformer:
    """Load a DT checkpoint. With `expected` (or `into`, whose config is expected), a checkpoint of
    another config fails with a message naming the mismatched fields."""
    cfg, _ = read_checkpoint_config(path)
    expected = into.cfg if into is not None else expected
    if expected is not None:
        diff = config_mismatches(expected, cfg)
        if diff:
            raise DtlensError(f"{path}: checkpoint of another config ({'; '.join(diff)})")
    model = into if into is not None else DecisionTransformer(cfg)
    load_params(model, load_tensors(path), source=str(path))
    return model
