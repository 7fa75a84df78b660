"""Where dtlens finds its shipped assets and keeps its cache: the one place paths are decided.

```
dtlens/assets/backbones/  policies/  datasets/     shipped with the package
$DTLENS_CACHE/backbones/  datasets/                 rebuilds (default ~/.cache/dtlens)
```
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from dtlens.errors import DtlensError

ASSETS = Path(__file__).resolve().parent / "assets"
BACKBONE_ASSETS = ASSETS / "backbones"
POLICY_ASSETS = ASSETS / "policies"
DATASET_ASSETS = ASSETS / "datasets"


def cache_root() -> Path:
    """`$DTLENS_CACHE`, default `~/.cache/dtlens`."""
    return Path(os.environ.get("DTLENS_CACHE") or "~/.cache/dtlens").expanduser()


def portable_path(path: str | Path) -> str:
    """`path` quoted for a recorded command, a folder under the home folder as `~/...` (expanded
    by the shell), so that the command reads the same on every machine."""
    full = Path(path).expanduser()
    if full.is_absolute() and full.is_relative_to(Path.home()):
        return "~/" + shlex.quote(str(full.relative_to(Path.home())))
    return shlex.quote(str(path))


def cache_dir(kind: str) -> Path:
    """`$DTLENS_CACHE/{kind}` (kind: backbones, datasets)."""
    return cache_root() / kind


#: Backbones pretrained by `dtlens pretrain` and shipped with dtlens (the `mini` preset).
EMBEDDED_BACKBONES = ("text", "image", "synthetic")


def backbone_cache_path(name: str) -> Path:
    """`$DTLENS_CACHE/backbones/{name}.safetensors`: where `dtlens pretrain NAME` writes."""
    return cache_dir("backbones") / f"{name}.safetensors"


def embedded_backbone_path(name: str) -> Path:
    """The shipped asset of an embedded backbone if there is one, else the user's rebuild."""
    if name not in EMBEDDED_BACKBONES:
        raise DtlensError(
            f"unknown embedded backbone {name!r}: expected one of {', '.join(EMBEDDED_BACKBONES)}"
        )
    for path in (BACKBONE_ASSETS / f"{name}.safetensors", backbone_cache_path(name)):
        if path.is_file():
            return path
    raise DtlensError(
        f"embedded backbone {name!r} not found in {BACKBONE_ASSETS} or "
        f"{backbone_cache_path(name).parent}: run `dtlens pretrain {name}`"
    )
