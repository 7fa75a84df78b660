"""Offline RL data: D4RL and Minari readers, trajectory windows, embedded datasets."""

from dtlens.lazy import lazy_exports

_EXPORTS = {
    "read_d4rl": "dtlens.data.d4rl",
    "write_d4rl": "dtlens.data.d4rl",
    "OfflineDataset": "dtlens.data.dataset",
    "read_minari": "dtlens.data.minari_io",
    "EMBEDDED": "dtlens.data.registry",
    "load_dataset": "dtlens.data.registry",
    "dataset_normalized_score": "dtlens.data.scores",
    "normalized_score": "dtlens.data.scores",
    "target_return": "dtlens.data.scores",
    "Batch": "dtlens.data.windows",
    "WindowSampler": "dtlens.data.windows",
    "load_batch": "dtlens.data.windows",
    "probe_batch": "dtlens.data.windows",
    "save_batch": "dtlens.data.windows",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
