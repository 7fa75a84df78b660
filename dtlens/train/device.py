"""Which torch device a user names, checked once with one clear line when it is missing."""

from __future__ import annotations

import os

import torch

from dtlens.errors import DtlensError


def check_device(device: str) -> str:
    """The torch device `device` (cpu, cuda, cuda:N, mps, auto) names here, or DtlensError if
    this machine has no such device. `auto` picks cuda, then mps, then cpu."""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DtlensError(
                f"--device {device}: CUDA is not available here: {cuda_missing_reason()}"
            )
        index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            raise DtlensError(f"--device {device}: this machine has {count} CUDA device(s)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise DtlensError(f"--device {device}: MPS is not available here")
    return device


def cuda_missing_reason() -> str:
    """Why this process sees no CUDA device, in one line."""
    if torch.version.cuda is None:
        return (
            f"this torch ({torch.__version__}) is built without CUDA; install a CUDA build "
            "(https://pytorch.org/get-started/locally/) or use --device cpu"
        )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hidden = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
    return (
        f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no GPU{hidden}: "
        "check the NVIDIA driver (nvidia-smi) or use --device cpu"
    )
