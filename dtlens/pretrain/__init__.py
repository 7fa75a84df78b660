"""Tiny language and image pretraining: the `mini` preset's embedded `text` and `image` backbones.

`dtlens pretrain text|image` builds them (`dtlens.pretrain.text`, `dtlens.pretrain.image`);
`backbone_path` finds the committed asset or the user's cached rebuild.
"""

from __future__ import annotations

import os
from pathlib import Path

from dtlens.errors import DtlensError

#: The committed assets, built by `dtlens pretrain NAME --out dtlens/assets/backbones/NAME...`.
ASSETS = Path(__file__).resolve().parent.parent / "assets" / "backbones"
KINDS = ("text", "image")


def cache_path(name: str) -> Path:
    """`$DTLENS_CACHE/backbones/{name}.safetensors` (DTLENS_CACHE defaults to ~/.cache/dtlens)."""
    cache = Path(os.environ.get("DTLENS_CACHE", "~/.cache/dtlens")).expanduser()
    return cache / "backbones" / f"{name}.safetensors"


def backbone_path(name: str) -> Path:
    """The committed asset of an embedded backbone if there is one, else the cached one."""
    if name not in KINDS:
        raise DtlensError(f"unknown embedded backbone {name!r}: expected one of {', '.join(KINDS)}")
    for path in (ASSETS / f"{name}.safetensors", cache_path(name)):
        if path.is_file():
            return path
    raise DtlensError(
        f"embedded backbone {name!r} not found in {ASSETS} or {cache_path(name).parent}: "
        f"run `dtlens pretrain {name}`"
    )
