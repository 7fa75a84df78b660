"""Controls for what pretraining gives, as transforms of a backbone's (config, state dict).

- `shuffled:INIT`: INIT's weights, each tensor's entries randomly permuted: the same values and
  statistics, no learned structure.
- `matched:INIT`: a fresh Gaussian init whose every tensor has INIT's mean and standard deviation
  (exactly: the draw is standardised, then scaled): INIT's scale and conditioning, nothing else.

Both are seeded; each tensor's draw depends on (seed, tensor name) only. `synthetic` (a backbone
pretrained on Markov-chain tokens) is an embedded backbone, not a transform.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import torch
from torch import Tensor

from dtlens.model.config import BackboneConfig

StateDict = dict[str, Tensor]
Control = Callable[[BackboneConfig, StateDict, int], tuple[BackboneConfig, StateDict]]


def _generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def shuffled(cfg: BackboneConfig, state: StateDict, seed: int) -> tuple[BackboneConfig, StateDict]:
    """Every tensor's entries in a random order (seeded per tensor)."""
    out = {}
    for name, t in state.items():
        order = torch.randperm(t.numel(), generator=_generator(seed, name))
        out[name] = t.flatten()[order].reshape(t.shape).clone()
    return cfg, out


def matched(cfg: BackboneConfig, state: StateDict, seed: int) -> tuple[BackboneConfig, StateDict]:
    """Every tensor a fresh standard-normal draw, standardised and set to the original's mean and
    standard deviation (a constant or one-entry tensor stays its mean)."""
    out = {}
    for name, t in state.items():
        mean = t.double().mean()
        std = t.double().std() if t.numel() > 1 else torch.zeros((), dtype=torch.float64)
        z = torch.randn(t.shape, generator=_generator(seed, name), dtype=torch.float64)
        if t.numel() > 1 and float(std) > 0:
            z = (z - z.mean()) / z.std()
            out[name] = (mean + std * z).to(t.dtype)
        else:
            out[name] = torch.full_like(t, float(mean))
    return cfg, out


CONTROLS: dict[str, Control] = {"shuffled": shuffled, "matched": matched}


def split_control(init: str) -> tuple[str | None, str]:
    """("shuffled", "text") for "shuffled:text"; (None, init) for an init without a control."""
    head, sep, rest = init.partition(":")
    if sep and head in CONTROLS:
        return head, rest
    return None, init


def base_init(init: str) -> str:
    """The init under every control prefix: "text" for "matched:shuffled:text"."""
    control, rest = split_control(init)
    return init if control is None else base_init(rest)
