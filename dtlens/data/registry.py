"""`load_dataset`: embedded `mini/...` ids (collected once into a cache), D4RL files, Minari ids."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from dtlens.data.collect import DEFAULT_NOISE, collect_to_file
from dtlens.data.d4rl import read_d4rl
from dtlens.data.dataset import OfflineDataset
from dtlens.data.minari_io import minari_data_dir, read_minari
from dtlens.data.policy import POLICY_DIR
from dtlens.errors import DtlensError

HDF5_SUFFIXES = (".hdf5", ".h5")


@dataclass(frozen=True)
class EmbeddedSpec:
    """How an embedded dataset is collected."""

    env_id: str
    quality: str
    transitions: int = 100_000
    seed: int = 0
    noise: float = DEFAULT_NOISE


EMBEDDED: dict[str, EmbeddedSpec] = {
    "mini/hopper-random": EmbeddedSpec("Hopper-v5", "random"),
    "mini/hopper-medium": EmbeddedSpec("Hopper-v5", "medium"),
    "mini/hopper-expert": EmbeddedSpec("Hopper-v5", "expert"),
}


def cache_dir() -> Path:
    """`$DTLENS_CACHE`, default ~/.cache/dtlens/datasets."""
    root = os.environ.get("DTLENS_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "dtlens" / "datasets"


def embedded_path(dataset_id: str) -> Path:
    """Cache file of an embedded id; its name changes when the spec or the policy changes."""
    if dataset_id not in EMBEDDED:
        raise DtlensError(f"{dataset_id}: unknown embedded dataset (known: {', '.join(EMBEDDED)})")
    spec = EMBEDDED[dataset_id]
    digest = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode())
    weights = POLICY_DIR / f"{dataset_id.split('/')[1]}.safetensors"
    if weights.is_file():
        digest.update(weights.read_bytes())
    return cache_dir() / f"{dataset_id.replace('/', '-')}-{digest.hexdigest()[:10]}.hdf5"


def load_dataset(id_or_path: str | os.PathLike, env_id: str | None = None) -> OfflineDataset:
    """An `OfflineDataset` from an embedded id (`mini/hopper-medium`), a D4RL HDF5 file
    (.hdf5/.h5), or a local Minari dataset (id or folder). `env_id` checks the dims."""
    key = str(id_or_path)
    if key.startswith("mini/"):
        path = embedded_path(key)
        if not path.is_file():
            spec = EMBEDDED[key]
            collect_to_file(
                path,
                spec.env_id,
                spec.quality,
                spec.transitions,
                spec.seed,
                spec.noise,
                progress=sys.stderr.isatty(),
            )
        dataset = read_d4rl(path, env_id)
        dataset.name = key
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
