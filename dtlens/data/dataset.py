"""`OfflineDataset`: flat transition arrays plus episode boundaries, validated on creation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from dtlens.errors import DtlensError

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
STD_EPS = 1e-6


def validate_arrays(arrays: Mapping[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """Check keys, lengths and finiteness; return arrays with canonical dtypes and shapes.

    Rewards/terminals/timeouts of shape (N, 1) are squeezed to (N,); 1-D observations or
    actions become (N, 1). Every problem raises a `DtlensError` naming `source` and the key.
    """
    for key in REQUIRED_KEYS:
        if key not in arrays:
            raise DtlensError(f"{source}: missing key '{key}' (found: {', '.join(sorted(arrays))})")
    out: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        a = np.asarray(value)
        if a.ndim == 0:
            raise DtlensError(f"{source}: key '{key}' is a scalar, expected one row per transition")
        if len(a) == 0:
            raise DtlensError(f"{source}: key '{key}' is empty (no transitions)")
        if key in ("rewards", "terminals", "timeouts"):
            if a.ndim == 2 and a.shape[1] == 1:
                a = a[:, 0]
            if a.ndim != 1:
                raise DtlensError(f"{source}: key '{key}' must be 1-D, got shape {a.shape}")
            a = a.astype(bool) if key != "rewards" else a.astype(np.float32)
        elif key in ("observations", "actions", "next_observations"):
            a = a.reshape(len(a), -1).astype(np.float32)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = int(np.count_nonzero(~np.isfinite(a)))
            raise DtlensError(f"{source}: key '{key}' has {bad} NaN or inf values")
        out[key] = a
    n = len(out["observations"])
    for key, a in out.items():
        if len(a) != n:
            raise DtlensError(f"{source}: key '{key}' has {len(a)} rows but 'observations' has {n}")
    return out


@dataclass(eq=False)
class OfflineDataset:
    """Transitions of one environment, stored flat; episodes are slices `[starts[i], ends[i])`.

    An episode ends at a terminal or a timeout; a trailing unfinished segment is an episode too.
    """

    observations: np.ndarray  # (N, obs_dim) float32
    actions: np.ndarray  # (N, act_dim) float32
    rewards: np.ndarray  # (N,) float32
    terminals: np.ndarray  # (N,) bool
    timeouts: np.ndarray  # (N,) bool
    env_id: str | None = None
    name: str = ""
    next_observations: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arrays = {k: getattr(self, k) for k in REQUIRED_KEYS}
        if self.next_observations is not None:
            arrays["next_observations"] = self.next_observations
        for key, value in validate_arrays(arrays, self.name or "dataset").items():
            setattr(self, key, value)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], **kwargs: Any) -> OfflineDataset:
        keys = (*REQUIRED_KEYS, "next_observations")
        return cls(**{k: arrays[k] for k in keys if k in arrays}, **kwargs)

    @classmethod
    def from_episodes(
        cls, episodes: list[Mapping[str, np.ndarray]], **kwargs: Any
    ) -> OfflineDataset:
        """Concatenate episode dicts (observations, actions, rewards, optional terminals and
        timeouts). An episode whose end is not marked gets a timeout on its last step."""
        if not episodes:
            raise DtlensError(f"{kwargs.get('name') or 'dataset'}: no episodes (empty dataset)")
        keys = [*REQUIRED_KEYS]
        if all("next_observations" in ep for ep in episodes):
            keys.append("next_observations")
        parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        for ep in episodes:
            n = len(ep["rewards"])
            terminals = np.asarray(ep.get("terminals", np.zeros(n, bool)), bool).reshape(n)
            timeouts = np.asarray(ep.get("timeouts", np.zeros(n, bool)), bool).reshape(n).copy()
            if n and not (terminals[-1] or timeouts[-1]):
                timeouts[-1] = True
            for key, value in (("terminals", terminals), ("timeouts", timeouts)):
                parts[key].append(value)
            for key in keys:
                if key not in ("terminals", "timeouts"):
                    parts[key].append(np.asarray(ep[key]))
        return cls(**{k: np.concatenate(v) for k, v in parts.items()}, **kwargs)

    # --- shape and episodes -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    @cached_property
    def boundaries(self) -> np.ndarray:
        """(E + 1,) int64 offsets: episode i is rows boundaries[i]:boundaries[i + 1]."""
        ends = np.flatnonzero(self.terminals | self.timeouts) + 1
        if len(ends) == 0 or ends[-1] != len(self):
            ends = np.append(ends, len(self))
        return np.concatenate([[0], ends]).astype(np.int64)

    @property
    def num_episodes(self) -> int:
        return len(self.boundaries) - 1

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self.boundaries)

    @cached_property
    def episode_returns(self) -> np.ndarray:
        return np.add.reduceat(self.rewards.astype(np.float64), self.boundaries[:-1])

    def episode(self, i: int) -> dict[str, np.ndarray]:
        """Episode `i` as a dict of array views."""
        s = slice(self.boundaries[i], self.boundaries[i + 1])
        return {k: v[s] for k, v in self.arrays().items()}

    @property
    def episodes(self) -> list[dict[str, np.ndarray]]:
        return [self.episode(i) for i in range(self.num_episodes)]

    def arrays(self) -> dict[str, np.ndarray]:
        """The flat D4RL-layout arrays."""
        out = {k: getattr(self, k) for k in REQUIRED_KEYS}
        if self.next_observations is not None:
            out["next_observations"] = self.next_observations
        return out

    # --- statistics ---------------------------------------------------------------------
    @cached_property
    def state_mean(self) -> np.ndarray:
        return self.observations.mean(axis=0, dtype=np.float64).astype(np.float32)

    @cached_property
    def state_std(self) -> np.ndarray:
        std = self.observations.std(axis=0, dtype=np.float64)
        return np.maximum(std, STD_EPS).astype(np.float32)

    def stats(self) -> dict[str, float | int]:
        """Episodes, transitions and the mean/std/min/max of episode returns."""
        r = self.episode_returns
        return {
            "episodes": self.num_episodes,
            "transitions": len(self),
            "return_mean": float(r.mean()),
            "return_std": float(r.std()),
            "return_min": float(r.min()),
            "return_max": float(r.max()),
        }

    def check_env(self, env_id: str) -> None:
        """Raise if the observation or action dims differ from those of gymnasium's `env_id`."""
        import gymnasium as gym

        try:
            env = gym.make(env_id)
        except gym.error.Error as e:
            raise DtlensError(f"{env_id}: unknown environment ({e})") from None
        obs_shape, act_shape = env.observation_space.shape, env.action_space.shape
        env.close()
        for key, got, want in (
            ("observations", self.obs_dim, obs_shape),
            ("actions", self.act_dim, act_shape),
        ):
            if want is None or (int(np.prod(want)),) != (got,):
                name = self.name or "dataset"
                raise DtlensError(f"{name}: key '{key}' has dim {got} but {env_id} expects {want}")
