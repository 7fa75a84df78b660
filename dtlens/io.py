"""Atomic writes: every file dtlens saves appears whole or not at all.

A write goes to `.NAME.PID@HOST.tmp` beside its target, then is renamed over it. A write that is
killed leaves that file behind; the next write to the same target removes it once its pid is dead.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import xarray as xr
from safetensors.torch import load_file, save_file

from dtlens.errors import DtlensError

HOST = socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True


def temp_path(path: str | os.PathLike, pid: int | None = None) -> Path:
    """The temporary file a write of `path` by process `pid` (default: this one) goes through."""
    path = Path(path)
    return path.parent / f".{path.name}.{os.getpid() if pid is None else pid}@{HOST}.tmp"


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of writes of `path` by dead processes of this host."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)@{re.escape(HOST)}\.tmp")
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        m = pattern.fullmatch(tmp.name)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = temp_path(path)
    tmp.unlink(missing_ok=True)  # a leftover of an earlier process that had our pid
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call `writer(tmp_path)` and move the result to `path`."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    return write_atomic(
        path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    )


_SHA256: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, cached per (path, inode, size, mtime) within the process."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _SHA256:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA256[key] = h.hexdigest()
    return _SHA256[key]


def load_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DtlensError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DtlensError(f"{path}: not valid JSON ({e})") from None


def save_tensors(
    tensors: dict[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
) -> Path:
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return write_atomic(path, lambda p: save_file(flat, str(p), metadata=metadata))


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise DtlensError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types for a corrupt header
        raise DtlensError(f"{path}: not a safetensors file ({e})") from None


#: netCDF-C and HDF5 are not thread-safe, and xarray's own lock leaves a file's opening (reading
#: its variables' metadata) unguarded: two threads opening files at once (the explorer's request
#: threads) crash the process with a segmentation fault or bus error. dtlens opens, reads and
#: writes netCDF files under this one lock (reentrant: xarray takes it again inside).
NETCDF_LOCK = threading.RLock()


def open_netcdf(path: str | os.PathLike) -> xr.Dataset:
    """`xr.open_dataset(path)` (netCDF4, lazy; close it or use `with`) whose opening and later
    reads hold `NETCDF_LOCK`."""
    with NETCDF_LOCK:
        return xr.open_dataset(path, engine="netcdf4", lock=NETCDF_LOCK)


def save_netcdf(ds, path: str | os.PathLike) -> Path:
    """Write an xarray Dataset to netCDF (float32 stays float32), atomically."""
    with NETCDF_LOCK:
        return write_atomic(path, lambda p: ds.to_netcdf(p, engine="netcdf4"))
