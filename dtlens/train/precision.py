"""Numeric precision and determinism of training and evaluation.

- `fp32` (the paper's): float32 everywhere.
- `tf32`: float32 weights, CUDA matmuls and convolutions in TensorFloat-32 (Ampere and later).
- `bf16`: float32 weights and optimiser, forward passes under `torch.autocast` in bfloat16
  (training and evaluation; no loss scaling needed, bfloat16 has float32's range).

`deterministic` asks torch for deterministic kernels: `torch.use_deterministic_algorithms(True)`,
cuDNN without benchmarking, and cuBLAS's fixed workspace (`CUBLAS_WORKSPACE_CONFIG=:4096:8`,
which must be set before the process's first CUDA matmul). On CPU training is deterministic
already; on CUDA these settings make a rerun on the same GPU and software give the same numbers,
at some speed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from dtlens.errors import DtlensError

AUTOCAST_DTYPES = {"fp32": None, "tf32": None, "bf16": torch.bfloat16}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype forward passes autocast to under `precision` (None: no autocast)."""
    if precision not in AUTOCAST_DTYPES:
        raise DtlensError(f"--precision must be fp32, tf32 or bf16, got {precision!r}")
    return AUTOCAST_DTYPES[precision]


@contextlib.contextmanager
def autocast(device: str, precision: str) -> Iterator[None]:
    """Forward passes inside run in `precision` on `device` (a no-op for fp32 and tf32)."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
        yield


def apply_precision(precision: str) -> None:
    """Process-wide matmul settings: TF32 on CUDA for `tf32`, off otherwise."""
    autocast_dtype(precision)  # one clear line for an unknown precision
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def apply_determinism(enabled: bool) -> None:
    """Deterministic kernels when `enabled` (see the module docstring), torch's defaults
    otherwise (a dask worker may run both kinds of runs)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
