"""A run folder: everything a fine-tuning run leaves on disk, and how to read it back.

```
RUN/config.json                       everything needed to rebuild the run (RunConfig)
RUN/checkpoints/epoch-NNNN.safetensors  epoch 0 = before any update
RUN/state.safetensors                 optimiser and RNG state of the last epoch (for --resume)
RUN/probe.safetensors                 the fixed probe batch every diagnostic uses
RUN/metrics.nc                        per-step and per-epoch metrics
RUN/captures/  RUN/diagnostics/  RUN/figures/
```
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from dtlens.data.registry import load_dataset
from dtlens.data.windows import Batch, load_batch, probe_batch
from dtlens.errors import DtlensError
from dtlens.io import load_json
from dtlens.model.checkpoint import load_model
from dtlens.model.config import DTConfig
from dtlens.model.dt import DecisionTransformer
from dtlens.train.config import TrainConfig
from dtlens.train.device import check_device

CHECKPOINT = re.compile(r"epoch-(\d{4,})\.safetensors$")


class Run:
    """Read access to a run folder; its checkpoints load onto `device` (cpu, cuda, cuda:N, mps,
    auto), where the diagnostics then compute."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise DtlensError(f"{self.path}: not a dtlens run (no config.json)")
        self.device = check_device(device)

    @cached_property
    def config(self) -> dict:
        return load_json(self.path / "config.json")

    @cached_property
    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.config["train"])

    @property
    def dt_config(self) -> DTConfig:
        return DTConfig.from_dict(self.config["model"])

    @property
    def name(self) -> str:
        return self.path.name

    def checkpoint_path(self, epoch: int) -> Path:
        return self.path / "checkpoints" / f"epoch-{epoch:04d}.safetensors"

    def epochs(self) -> list[int]:
        """Epochs that have a checkpoint, ascending."""
        found = (CHECKPOINT.search(p.name) for p in (self.path / "checkpoints").glob("*"))
        return sorted(int(m.group(1)) for m in found if m)

    def last_epoch(self) -> int:
        epochs = self.epochs()
        if not epochs:
            raise DtlensError(f"{self.path}: no checkpoints")
        return epochs[-1]

    def resolve_epochs(self, epochs: list[int] | None) -> list[int]:
        """Check that every requested epoch has a checkpoint (-1 means the last one)."""
        have = self.epochs()
        if epochs is None:
            return have
        resolved = [self.last_epoch() if e == -1 else e for e in epochs]
        missing = [e for e in resolved if e not in have]
        if missing:
            raise DtlensError(
                f"{self.path}: no checkpoint for epoch(s) {missing}; available: {have}"
            )
        return resolved

    def load_model(self, epoch: int) -> DecisionTransformer:
        """The checkpoint of `epoch` (-1: the last), in eval mode, on the run's device."""
        (epoch,) = self.resolve_epochs([epoch])
        model = load_model(self.checkpoint_path(epoch), expected=self.dt_config)
        return model.to(self.device).eval()

    def probe_batch(self) -> Batch:
        path = self.path / "probe.safetensors"
        if not path.is_file():
            raise DtlensError(f"{self.path}: no probe batch (probe.safetensors)")
        return load_batch(path)

    def windows(self, n: int | None = None, context_len: int | None = None) -> Batch:
        """`n` probe windows of `context_len` steps (default: the probe's size and the run's K),
        drawn as the probe was (same dataset, seed, state normalisation). At the run's own K the
        probe's rows come first, so any `n` extends the saved probe batch."""
        t = self.train_config
        if n is not None and n < 1:
            raise DtlensError(f"samples must be at least 1, got {n}")
        k = t.context_len if context_len is None else context_len
        if k == t.context_len:
            probe = self.probe_batch()
            if n is None or n <= len(probe):
                return probe if n is None else probe.index(slice(0, n))
        data = self.config["data"]
        batch = probe_batch(
            load_dataset(t.dataset, env_id=t.env_id),
            n=n or t.probe_size,
            context_len=k,
            seed=t.probe_seed,
            rtg_scale=t.rtg_scale,
            max_ep_len=t.dt.max_ep_len,
            state_mean=np.asarray(data["state_mean"]),
            state_std=np.asarray(data["state_std"]),
        )
        if k == t.context_len and not torch.equal(batch.states[: len(probe)], probe.states):
            raise DtlensError(f"{t.dataset}: the dataset changed since {self.path} was trained")
        return batch

    def subdir(self, name: str) -> Path:
        d = self.path / name
        d.mkdir(parents=True, exist_ok=True)
        return d
