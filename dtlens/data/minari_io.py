"""Local Minari datasets (by id under `MINARI_DATASETS_PATH`, or by folder) -> `OfflineDataset`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dtlens.data.dataset import OfflineDataset
from dtlens.errors import DtlensError


def minari_root() -> Path:
    """Where Minari keeps local datasets (`MINARI_DATASETS_PATH`, else ~/.minari/datasets)."""
    root = os.environ.get("MINARI_DATASETS_PATH")
    return Path(root) if root else Path.home() / ".minari" / "datasets"


def minari_data_dir(id_or_path: str | os.PathLike) -> Path | None:
    """The `data/` folder of a local Minari dataset given by folder or id, or None."""
    for base in (Path(id_or_path), minari_root() / str(id_or_path)):
        for candidate in (base / "data", base):
            if (candidate / "metadata.json").is_file():
                return candidate
    return None


def read_minari(id_or_path: str | os.PathLike, env_id: str | None = None) -> OfflineDataset:
    """Read every episode of a local Minari dataset (never downloads)."""
    from minari import MinariDataset

    data_dir = minari_data_dir(id_or_path)
    if data_dir is None:
        raise DtlensError(
            f"{id_or_path}: no local Minari dataset (looked for metadata.json in that folder "
            f"and under {minari_root()})"
        )
    try:
        source = MinariDataset(data_dir)
    except (ValueError, KeyError, OSError) as e:
        raise DtlensError(f"{data_dir}: not a readable Minari dataset ({e})") from None
    episodes = []
    for ep in source.iterate_episodes():
        if not isinstance(ep.observations, np.ndarray):
            raise DtlensError(
                f"{data_dir}: key 'observations' is not an array (dict spaces unsupported)"
            )
        episodes.append(
            {
                "observations": ep.observations[:-1],
                "next_observations": ep.observations[1:],
                "actions": ep.actions,
                "rewards": ep.rewards,
                "terminals": ep.terminations,
                "timeouts": ep.truncations,
            }
        )
    spec_env = source.spec.env_spec.id if source.spec.env_spec is not None else None
    dataset = OfflineDataset.from_episodes(
        episodes,
        env_id=env_id or spec_env,
        name=source.spec.dataset_id,
        metadata={"path": str(data_dir), "minari_id": source.spec.dataset_id},
    )
    if env_id is not None:
        dataset.check_env(env_id)
    return dataset
