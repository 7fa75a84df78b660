"""D4RL HDF5 files: read into an `OfflineDataset`, write the same layout atomically.

Layout: `observations (N, obs_dim)`, `actions (N, act_dim)`, `rewards (N,)` or `(N, 1)`,
`terminals (N,)`, `timeouts (N,)`, optional `next_observations` and `infos/*`. File attributes
name the env id, the behaviour policy, the quality level and the seed. Writes carry no timestamps
and use fixed chunks, so the same arrays give the same bytes (on the same h5py/HDF5 build).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dtlens.data.dataset import REQUIRED_KEYS, OfflineDataset, validate_arrays
from dtlens.errors import DtlensError
from dtlens.io import write_atomic

OPTIONAL_KEYS = ("next_observations",)
CHUNK_ROWS = 16_384  # rows per chunk of a compressed dataset


def read_d4rl(path: str | os.PathLike, env_id: str | None = None) -> OfflineDataset:
    """Read a D4RL HDF5 file; `env_id` (else the file's `env_id` attribute) is checked if given."""
    path = Path(path)
    if not path.is_file():
        raise DtlensError(f"{path}: file not found")
    if not h5py.is_hdf5(path):
        raise DtlensError(f"{path}: not an HDF5 file")
    with h5py.File(path, "r") as f:
        found = [k for k in f if isinstance(f[k], h5py.Dataset)]
        missing = [k for k in REQUIRED_KEYS if k not in found]
        if missing:
            raise DtlensError(f"{path}: missing key '{missing[0]}' (found: {', '.join(found)})")
        arrays = {k: f[k][()] for k in (*REQUIRED_KEYS, *OPTIONAL_KEYS) if k in found}
        infos = {k: v[()] for k, v in f["infos"].items()} if "infos" in f else {}
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
    dataset = OfflineDataset.from_arrays(
        arrays,
        env_id=env_id or attrs.get("env_id") or None,
        name=str(path),
        metadata=attrs | {"path": str(path), "infos": infos},
    )
    if env_id is not None:
        dataset.check_env(env_id)
    return dataset


def write_d4rl(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray] | OfflineDataset,
    metadata: Mapping[str, Any] | None = None,
    compression: int | None = None,
) -> Path:
    """Write `arrays` (D4RL keys, `infos/<name>` allowed) to `path`; `metadata` becomes attrs
    (env_id, policy, quality, seed, ...; scalars or strings). `compression` is a gzip level
    (0-9, with the byte-shuffle filter and `CHUNK_ROWS`-row chunks); None stores raw."""
    if isinstance(arrays, OfflineDataset):
        metadata = {"env_id": arrays.env_id or "", **(metadata or {})}
        infos = {f"infos/{k}": v for k, v in arrays.metadata.get("infos", {}).items()}
        arrays = arrays.arrays() | infos
    arrays = validate_arrays(arrays, str(path))

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            for key, value in arrays.items():
                f.create_dataset(key, data=value, track_times=False, **_filters(value, compression))
            for key, value in (metadata or {}).items():
                f.attrs[key] = "" if value is None else value

    return write_atomic(path, write)


def _filters(value: np.ndarray, compression: int | None) -> dict[str, Any]:
    """h5py dataset options: none, or gzip + shuffle over fixed row chunks."""
    if compression is None:
        return {}
    chunks = (min(CHUNK_ROWS, len(value)), *value.shape[1:])
    return {
        "compression": "gzip",
        "compression_opts": compression,
        "shuffle": True,
        "chunks": chunks,
    }


def _plain(value: Any) -> Any:
    """HDF5 attribute -> plain Python value."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
