"""`load_dataset`: embedded `mini/...` ids (shipped files), D4RL files, Minari ids.

An embedded id is collected once from its `EmbeddedSpec` (`dtlens data collect --id ID
--update-manifest`) and shipped in `dtlens/assets/datasets/` with its sha256 in `manifest.json`.
Loading reads that file and checks the hash; it never collects, because the same collection gives
other numbers on another machine (MuJoCo and numpy builds differ in the last bits).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dtlens.data.collect import DEFAULT_NOISE, collect_to_file, policy_sha256
from dtlens.data.d4rl import read_d4rl
from dtlens.data.dataset import OfflineDataset
from dtlens.data.manifest import manifest_entry, read_manifest, update_manifest
from dtlens.data.minari_io import minari_data_dir, read_minari
from dtlens.errors import DtlensError
from dtlens.io import file_sha256
from dtlens.paths import DATASET_ASSETS, cache_dir

HDF5_SUFFIXES = (".hdf5", ".h5")
ASSET_DIR = DATASET_ASSETS  # the shipped files and their manifest


@dataclass(frozen=True)
class EmbeddedSpec:
    """How an embedded dataset is collected."""

    env_id: str
    quality: str
    transitions: int = 100_000
    seed: int = 0
    noise: float = DEFAULT_NOISE

    def record(self) -> dict[str, Any]:
        """The spec as the manifest stores it, with the sha256 of the policy's weights."""
        return asdict(self) | {"policy_sha256": policy_sha256(self.env_id, self.quality)}


EMBEDDED: dict[str, EmbeddedSpec] = {
    "mini/hopper-random": EmbeddedSpec("Hopper-v5", "random", noise=0.0),
    "mini/hopper-medium": EmbeddedSpec("Hopper-v5", "medium"),
    "mini/hopper-expert": EmbeddedSpec("Hopper-v5", "expert"),
}


def embedded_spec(dataset_id: str) -> EmbeddedSpec:
    """The spec of an embedded id; one error line naming the known ids otherwise."""
    if dataset_id not in EMBEDDED:
        raise DtlensError(f"{dataset_id}: unknown embedded dataset (known: {', '.join(EMBEDDED)})")
    return EMBEDDED[dataset_id]


def shipped_file(dataset_id: str) -> Path:
    """Where the shipped file of an embedded id lives: `ASSET_DIR/<name>.hdf5`."""
    embedded_spec(dataset_id)
    return ASSET_DIR / f"{dataset_id.split('/', 1)[1]}.hdf5"


def rebuild_path(dataset_id: str) -> Path:
    """Default output of a local rebuild: `$DTLENS_CACHE/datasets/mini-<name>.hdf5`."""
    embedded_spec(dataset_id)
    return cache_dir("datasets") / f"{dataset_id.replace('/', '-')}.hdf5"


def verified_shipped(dataset_id: str) -> tuple[Path, str]:
    """The shipped file of an embedded id and its sha256, checked against the manifest."""
    embedded_spec(dataset_id)
    entry = read_manifest(ASSET_DIR).get(dataset_id)
    if entry is None:
        raise DtlensError(
            f"{dataset_id}: not shipped (no entry in {ASSET_DIR / 'manifest.json'}): build it with "
            f"`dtlens data collect --id {dataset_id} --update-manifest`"
        )
    path = ASSET_DIR / entry["file"]
    restore = f"restore it with `git checkout -- {path}` or reinstall dtlens"
    if not path.is_file():
        raise DtlensError(f"{path}: shipped file of {dataset_id} is missing: {restore}")
    sha = file_sha256(path)
    if sha != entry["sha256"]:
        raise DtlensError(
            f"{path}: shipped file of {dataset_id} is corrupt (sha256 {sha[:12]}..., manifest "
            f"says {entry['sha256'][:12]}...): {restore}"
        )
    return path, sha


def load_dataset(id_or_path: str | os.PathLike, env_id: str | None = None) -> OfflineDataset:
    """An `OfflineDataset` from an embedded id (`mini/hopper-medium`), a D4RL HDF5 file
    (.hdf5/.h5), or a local Minari dataset (id or folder). `env_id` checks the dims.

    An embedded id's metadata carries the verified `sha256` of its shipped file."""
    key = str(id_or_path)
    if key.startswith("mini/"):
        path, sha = verified_shipped(key)
        dataset = read_d4rl(path, env_id)
        dataset.name = key
        dataset.metadata["sha256"] = sha
        return dataset
    path = Path(key)
    if path.suffix.lower() in HDF5_SUFFIXES or path.is_file():
        return read_d4rl(path, env_id)
    if minari_data_dir(key) is not None:
        return read_minari(key, env_id)
    raise DtlensError(
        f"{key}: file not found (not an embedded id like {next(iter(EMBEDDED))}, "
        "a D4RL .hdf5 file, or a local Minari dataset)"
    )


def compare_to_shipped(dataset_id: str, path: Path) -> str:
    """One line: whether the file `path` holds the shipped bytes of `dataset_id`."""
    sha = file_sha256(path)
    entry = read_manifest(ASSET_DIR).get(dataset_id)
    if entry is None:
        return f"sha256 {sha}: nothing shipped for {dataset_id} to compare with"
    if entry["spec"] != embedded_spec(dataset_id).record():
        return f"sha256 {sha}: not comparable, the shipped file has another spec ({entry['spec']})"
    if sha == entry["sha256"]:
        return f"sha256 {sha}: identical to the shipped bytes"
    return (
        f"sha256 {sha}: differs from the shipped hash {entry['sha256']}: this machine's "
        "MuJoCo/numpy give other numbers; the shipped file stays the reference"
    )


def rebuild_embedded(
    dataset_id: str,
    out: str | os.PathLike | None = None,
    ship: bool = False,
    progress: bool = False,
) -> tuple[Path, str]:
    """Collect `dataset_id` from its spec and compare it with the shipped bytes.

    Writes `out` (default: `rebuild_path`; with `ship`, the shipped file, whose manifest entry
    is then updated). Returns the path and `compare_to_shipped`'s line (against the old entry).
    """
    spec = embedded_spec(dataset_id)
    shipped = shipped_file(dataset_id)
    path = Path(out) if out is not None else shipped if ship else rebuild_path(dataset_id)
    if ship and path.resolve() != shipped.resolve():
        raise DtlensError(f"--update-manifest refreshes the shipped file {shipped}, not {path}")
    if not ship and path.resolve() == shipped.resolve():
        raise DtlensError(f"{path} is the shipped file of {dataset_id}: add --update-manifest")
    collect_to_file(
        path,
        spec.env_id,
        spec.quality,
        spec.transitions,
        spec.seed,
        spec.noise,
        progress=progress,
    )
    verdict = compare_to_shipped(dataset_id, path)
    if ship:
        update_manifest(ASSET_DIR, dataset_id, manifest_entry(path, spec.record(), read_d4rl(path)))
    return path, verdict
