"""Atomic writes: every file dtlens saves appears whole or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dtlens.errors import DtlensError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call `writer(tmp_path)` and move the result to `path`."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    return write_atomic(
        path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    )


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


def save_netcdf(ds, path: str | os.PathLike) -> Path:
    """Write an xarray Dataset to netCDF (float32 stays float32), atomically."""
    return write_atomic(path, lambda p: ds.to_netcdf(p, engine="netcdf4"))
