"""The manifest of the embedded backbones: `dtlens/assets/backbones/manifest.json`.

Per backbone: the file, the sha256 of its bytes, the sha256 of its weights (`weights_sha256`:
names, dtypes, shapes and values; a rebuild's header differs in its wall time, so rebuilds are
compared by weights) and the command that rebuilds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dtlens import paths
from dtlens.data.manifest import arrays_sha256, read_manifest, update_manifest
from dtlens.io import file_sha256, load_tensors


def weights_sha256(path: Path) -> str:
    return arrays_sha256({k: v.numpy() for k, v in load_tensors(path).items()})


def backbone_entry(path: Path, command: str) -> dict[str, Any]:
    return {
        "file": path.name,
        "sha256": file_sha256(path),
        "weights_sha256": weights_sha256(path),
        "command": command,
    }


def record(name: str, command: str, folder: Path | None = None) -> Path:
    """Enter the embedded backbone `name` (folder/NAME.safetensors) in the manifest."""
    folder = folder or paths.BACKBONE_ASSETS
    return update_manifest(folder, name, backbone_entry(folder / f"{name}.safetensors", command))


def matches_manifest(name: str, path: Path, folder: Path | None = None) -> bool | None:
    """Whether the weights at `path` are the embedded `name`'s bit for bit (None: not embedded)."""
    entry = read_manifest(folder or paths.BACKBONE_ASSETS).get(name)
    return None if entry is None else weights_sha256(path) == entry["weights_sha256"]
