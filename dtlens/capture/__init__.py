"""Hooks -> xarray: activations and attention of a DT on a batch, in memory or streamed to netCDF.

`capture(model, batch, hooks)` returns an `xr.Dataset` (see `dtlens.capture.activations` for its
layout); `capture_to_netcdf` writes the same dataset chunk by chunk; `capture_run` does it for a
run's checkpoints on its probe batch.
"""

from dtlens.capture.activations import DEFAULT_HOOKS, batch_hash, capture
from dtlens.capture.hooks import hook_kinds, resolve_hooks
from dtlens.capture.run import capture_path, capture_run, ensure_capture, run_batch
from dtlens.capture.store import capture_to_netcdf, load_capture, save_capture

__all__ = [
    "DEFAULT_HOOKS",
    "batch_hash",
    "capture",
    "capture_path",
    "capture_run",
    "capture_to_netcdf",
    "ensure_capture",
    "hook_kinds",
    "load_capture",
    "resolve_hooks",
    "run_batch",
    "save_capture",
]
