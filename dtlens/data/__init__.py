"""Offline RL data: D4RL and Minari readers, trajectory windows, embedded datasets."""

from dtlens.data.d4rl import read_d4rl, write_d4rl
from dtlens.data.dataset import OfflineDataset
from dtlens.data.minari_io import read_minari
from dtlens.data.registry import EMBEDDED, load_dataset
from dtlens.data.scores import dataset_normalized_score, normalized_score, target_return
from dtlens.data.windows import Batch, WindowSampler, load_batch, probe_batch, save_batch

__all__ = [
    "EMBEDDED",
    "Batch",
    "OfflineDataset",
    "WindowSampler",
    "dataset_normalized_score",
    "load_batch",
    "load_dataset",
    "normalized_score",
    "probe_batch",
    "read_d4rl",
    "read_minari",
    "save_batch",
    "target_return",
    "write_d4rl",
]
