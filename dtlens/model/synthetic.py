"""HF model directories with random weights and the published architectures, made offline.

Stand-ins for `gpt2` and `openai/imagegpt-small` where the real weights cannot be downloaded
(tests, benchmarks, dry runs): the same configs, so the same sizes, time and memory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from dtlens.errors import DtlensError
from dtlens.model.backbones import quiet_hf

#: The published architectures: GPT-2 small is `GPT2Config()`, ImageGPT-small `ImageGPTConfig()`
#: (GPT-2 12 x 768 x 12 heads, gelu_new; ImageGPT 24 x 512 x 8 heads, quick_gelu, 513 tokens).
HF_ARCHITECTURES = ("gpt2", "imagegpt")


def write_random_hf_model(kind: str, out: str | os.PathLike, seed: int = 0) -> Path:
    """Write an HF directory (`config.json`, `model.safetensors`) of `GPT2Model` (kind "gpt2")
    or `ImageGPTModel` ("imagegpt") with the published config and HF's random init from `seed`.
    Reads nothing from the hub; the directory appears whole (written beside it, then renamed)."""
    from transformers import GPT2Config, GPT2Model, ImageGPTConfig, ImageGPTModel

    classes = {"gpt2": (GPT2Config, GPT2Model), "imagegpt": (ImageGPTConfig, ImageGPTModel)}
    if kind not in classes:
        raise DtlensError(f"unknown architecture {kind!r}: expected one of {HF_ARCHITECTURES}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DtlensError(f"{out}: exists and is not empty; choose another folder")
    config_cls, model_cls = classes[kind]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config_cls())
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        with quiet_hf():
            model.save_pretrained(tmp)
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
