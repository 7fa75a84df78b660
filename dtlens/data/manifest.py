"""The manifest of the shipped datasets: `dtlens/assets/datasets/manifest.json`.

Per derived id (no file): the sha256 of its arrays, its parts and its statistics.
Per embedded id: the file name, the sha256 of its bytes, the collection spec it was made from
(env, quality, transitions, seed, noise, policy weights sha256) and its summary statistics
(`OfflineDataset.stats()`). Loading checks the file against the hash; stats are for people.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dtlens.data.dataset import OfflineDataset
from dtlens.errors import DtlensError
from dtlens.io import file_sha256, load_json, save_json

MANIFEST_NAME = "manifest.json"


def arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of named arrays (sorted by name: name, dtype, shape, C-order bytes): the hash of a
    dataset that ships no file of its own, independent of how HDF5 lays out bytes."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def read_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """The manifest in `folder`, id -> entry; an empty one if there is no manifest."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return {}
    manifest = load_json(path)
    if not isinstance(manifest, dict):
        raise DtlensError(f"{path}: expected an object mapping dataset ids to entries")
    return manifest


def manifest_entry(path: Path, spec: dict[str, Any], dataset: OfflineDataset) -> dict[str, Any]:
    """The entry describing the dataset file `path`, collected with `spec`."""
    return {"file": path.name, "sha256": file_sha256(path), "spec": spec, "stats": dataset.stats()}


def update_manifest(folder: Path, dataset_id: str, entry: dict[str, Any]) -> Path:
    """Set `dataset_id`'s entry in `folder`'s manifest (written atomically, keys sorted)."""
    if "file" in entry and not (folder / entry["file"]).is_file():
        raise DtlensError(f"{folder / entry['file']}: file not found (a manifest entry needs it)")
    return save_json(read_manifest(folder) | {dataset_id: entry}, folder / MANIFEST_NAME)
