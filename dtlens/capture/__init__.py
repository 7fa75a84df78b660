"""Hooks -> xarray: activations and attention of a DT on a batch, in memory or streamed to netCDF.

`capture(model, batch, hooks)` returns an `xr.Dataset` (see `dtlens.capture.activations` for its
layout); `capture_to_netcdf` writes the same dataset chunk by chunk; `capture_run` does it for a
run's checkpoints on its probe batch.
"""

from dtlens.lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_HOOKS": "dtlens.capture.activations",
    "batch_hash": "dtlens.capture.activations",
    "capture": "dtlens.capture.activations",
    "hook_kinds": "dtlens.capture.hooks",
    "resolve_hooks": "dtlens.capture.hooks",
    "capture_path": "dtlens.capture.run",
    "capture_run": "dtlens.capture.run",
    "ensure_capture": "dtlens.capture.run",
    "run_batch": "dtlens.capture.run",
    "capture_to_netcdf": "dtlens.capture.store",
    "load_capture": "dtlens.capture.store",
    "save_capture": "dtlens.capture.store",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
