"""Trajectory windows of K timesteps: the batches the training loop and diagnostics consume."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from dtlens.data.dataset import OfflineDataset
from dtlens.errors import DtlensError
from dtlens.io import load_tensors, save_tensors


@dataclass
class Batch:
    """A batch of left-padded windows (float32 unless said)."""

    states: Tensor  # (B, K, obs_dim), normalised with the dataset's state mean/std
    actions: Tensor  # (B, K, act_dim), also the regression targets
    returns_to_go: Tensor  # (B, K, 1), divided by rtg_scale
    timesteps: Tensor  # (B, K) int64, clipped to max_ep_len - 1
    attention_mask: Tensor  # (B, K) int64, 1 = real step, 0 = left padding

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __len__(self) -> int:
        return self.states.shape[0]

    def index(self, idx: Tensor | np.ndarray | slice | list[int]) -> Batch:
        """The subset of rows `idx`."""
        if isinstance(idx, np.ndarray | list):
            idx = torch.as_tensor(idx, dtype=torch.long)
        return Batch(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


def episode_returns_to_go(rewards: np.ndarray, boundaries: np.ndarray) -> np.ndarray:
    """Undiscounted suffix sums of `rewards` within each episode `[b[i], b[i+1])`."""
    csum = np.cumsum(rewards, dtype=np.float64)
    ends = boundaries[1:]
    episode_total_to_end = np.repeat(csum[ends - 1], np.diff(boundaries))
    return episode_total_to_end - csum + rewards


class WindowSampler:
    """Samples windows as the DT reference code does: an episode with probability proportional
    to its length, then a uniform start in it. Together that is a uniform transition index, which
    is what is drawn. A window running past its episode's end is truncated and left-padded."""

    def __init__(
        self,
        dataset: OfflineDataset,
        context_len: int = 20,
        rtg_scale: float = 1000.0,
        max_ep_len: int = 1000,
        state_mean: np.ndarray | None = None,
        state_std: np.ndarray | None = None,
    ) -> None:
        if context_len < 1 or max_ep_len < 1 or rtg_scale <= 0:
            raise DtlensError(
                "context_len and max_ep_len must be >= 1 and rtg_scale > 0, got "
                f"{context_len}, {max_ep_len}, {rtg_scale}"
            )
        self.dataset = dataset
        self.context_len = context_len
        self.rtg_scale = rtg_scale
        self.max_ep_len = max_ep_len
        self.state_mean = np.asarray(
            dataset.state_mean if state_mean is None else state_mean, np.float32
        )
        self.state_std = np.asarray(
            dataset.state_std if state_std is None else state_std, np.float32
        )
        b = dataset.boundaries
        self.episode_end = np.repeat(b[1:], np.diff(b))  # per transition: its episode's end
        self.states = (dataset.observations - self.state_mean) / self.state_std
        self.actions = dataset.actions
        rtg = episode_returns_to_go(dataset.rewards, b) / rtg_scale
        self.rtg = rtg.astype(np.float32)
        steps = np.arange(len(dataset)) - np.repeat(b[:-1], np.diff(b))
        self.timesteps = np.minimum(steps, max_ep_len - 1).astype(np.int64)

    def sample(self, batch_size: int, generator: torch.Generator | np.random.Generator) -> Batch:
        """`batch_size` windows; the same generator state gives the same batch."""
        n = len(self.dataset)
        if isinstance(generator, torch.Generator):
            start = torch.randint(n, (batch_size,), generator=generator).numpy()
        else:
            start = generator.integers(0, n, size=batch_size)
        return self.windows(start)

    def windows(self, start: np.ndarray) -> Batch:
        """Windows starting at the flat transition indices `start` (B,)."""
        k = self.context_len
        real = np.minimum(self.episode_end[start] - start, k)  # (B,) real steps per window
        pad = k - real
        j = np.arange(k)
        mask = j[None, :] >= pad[:, None]  # (B, K)
        idx = np.where(mask, start[:, None] + j[None, :] - pad[:, None], 0)
        m = mask.astype(np.float32)
        return Batch(
            states=torch.from_numpy(self.states[idx] * m[..., None]),
            actions=torch.from_numpy(self.actions[idx] * m[..., None]),
            returns_to_go=torch.from_numpy((self.rtg[idx] * m)[..., None]),
            timesteps=torch.from_numpy(self.timesteps[idx] * mask),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
        )


def probe_batch(
    dataset: OfflineDataset,
    n: int = 100,
    context_len: int = 20,
    seed: int = 0,
    rtg_scale: float = 1000.0,
    max_ep_len: int = 1000,
    state_mean: np.ndarray | None = None,
    state_std: np.ndarray | None = None,
) -> Batch:
    """A fixed batch for diagnostics: a seeded function of (dataset, n, context_len, seed)."""
    sampler = WindowSampler(dataset, context_len, rtg_scale, max_ep_len, state_mean, state_std)
    return sampler.sample(n, np.random.default_rng(seed))


def save_batch(batch: Batch, path: str | os.PathLike) -> None:
    """Write a batch to safetensors (atomic)."""
    save_tensors({f.name: getattr(batch, f.name) for f in fields(batch)}, path)


def load_batch(path: str | os.PathLike) -> Batch:
    tensors = load_tensors(path)
    for f in fields(Batch):
        if f.name not in tensors:
            raise DtlensError(f"{path}: missing key '{f.name}'")
    return Batch(**{f.name: tensors[f.name] for f in fields(Batch)})
