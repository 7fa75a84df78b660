"""Captures on disk: netCDF with an unlimited `sample` dimension, written atomically.

`capture_to_netcdf` streams: each chunk of samples is captured, appended to the temporary file
and dropped, so peak memory is set by the chunk size, not by the number of samples.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import netCDF4
import xarray as xr

from dtlens.capture.activations import DEFAULT_HOOKS, Attrs, capture, update_hash
from dtlens.data.windows import Batch
from dtlens.errors import DtlensError
from dtlens.io import NETCDF_LOCK, atomic_path, open_netcdf, save_netcdf
from dtlens.model.dt import DecisionTransformer


def save_capture(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write a capture to netCDF (float32, `sample` unlimited), atomically."""
    return save_netcdf(ds, path)


def load_capture(path: str | os.PathLike) -> xr.Dataset:
    """Open a capture lazily (close it, or use `with`); DtlensError if it is not a whole one."""
    path = Path(path)
    if not path.is_file():
        raise DtlensError(f"{path}: file not found")
    unreadable = f"{path} is unreadable (truncated?): delete it or run capture again"
    try:
        ds = open_netcdf(path)
    except PermissionError:
        raise
    except (OSError, ValueError):  # netCDF4/HDF5 refuse a truncated or foreign file at open
        raise DtlensError(unreadable) from None
    if "probe_hash" not in ds.attrs or "valid" not in ds:
        ds.close()
        raise DtlensError(f"{path}: not a dtlens capture (no probe_hash / valid)")
    if ds.attrs.get("samples", ds.sizes["sample"]) != ds.sizes["sample"]:
        ds.close()
        raise DtlensError(unreadable)
    return ds


def _chunks(batch: Batch, chunk: int) -> Iterable[Batch]:
    return (batch.index(slice(i, i + chunk)) for i in range(0, len(batch), chunk))


def _append(path: Path, ds: xr.Dataset) -> None:
    """Append the sample-dim variables of `ds` to the netCDF file at `path`."""
    with netCDF4.Dataset(path, "a") as nc:
        start = nc.dimensions["sample"].size
        for name, var in ds.variables.items():
            if var.dims[:1] == ("sample",):
                nc[name][start : start + ds.sizes["sample"]] = var.values


def capture_to_netcdf(
    model: DecisionTransformer,
    batches: Batch | Iterable[Batch],
    path: str | os.PathLike,
    hooks: Sequence[str] = DEFAULT_HOOKS,
    chunk: int = 256,
    batch_size: int = 256,
    attrs: Attrs | None = None,
) -> Path:
    """Capture `hooks` on `batches` (one Batch, split into chunks of `chunk` samples, or an
    iterable of Batches, one chunk each) into `path`; the same file `save_capture(capture(...))`
    writes for all samples at once."""
    if chunk < 1:
        raise DtlensError(f"chunk must be at least 1, got {chunk}")
    if isinstance(batches, Batch):
        batches = _chunks(batches, chunk)
    digest = hashlib.sha256()
    with atomic_path(path) as tmp:
        n = 0
        for batch in batches:
            ds = capture(model, batch, hooks, batch_size, attrs)
            ds = ds.assign_coords(sample=ds["sample"] + n)
            with NETCDF_LOCK:  # netCDF-C/HDF5 are not thread-safe (dtlens.io)
                if n == 0:
                    ds.to_netcdf(tmp, engine="netcdf4")
                else:
                    _append(tmp, ds)
            update_hash(digest, batch)
            n += len(batch)
        if n == 0:
            raise DtlensError("nothing to capture: no samples")
        with NETCDF_LOCK, netCDF4.Dataset(tmp, "a") as nc:
            nc.setncattr("probe_hash", digest.hexdigest())
            nc.setncattr("samples", n)
    return Path(path)
