"""The manifest of the shipped datasets: `dtlens/assets/datasets/manifest.json`.

Per embedded id: the file name, the sha256 of its bytes, the collection spec it was made from
(env, quality, transitions, seed, noise, policy weights sha256) and its summary statistics
(`OfflineDataset.stats()`). Loading checks the file against the hash; stats are for people.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dtlens.data.dataset import OfflineDataset
from dtlens.errors import DtlensError
from dtlens.io import file_sha256, load_json, save_json

MANIFEST_NAME = "manifest.json"


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
    if not (folder / entry["file"]).is_file():
        raise DtlensError(f"{folder / entry['file']}: file not found (a manifest entry needs it)")
    return save_json(read_manifest(folder) | {dataset_id: entry}, folder / MANIFEST_NAME)
