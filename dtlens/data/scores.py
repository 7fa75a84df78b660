"""Normalized scores and default return-to-go targets of the MuJoCo locomotion tasks."""

from __future__ import annotations

import re

import numpy as np
from numpy.typing import ArrayLike

from dtlens.errors import DtlensError

# D4RL reference returns (random, expert) used by `d4rl.get_normalized_score`.
REF_MIN_MAX: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
}

# Evaluation return-to-go targets (Reid et al. 2022, Takagi 2022).
DEFAULT_TARGET_RETURN: dict[str, float] = {
    "hopper": 3600.0,
    "halfcheetah": 6000.0,
    "walker2d": 5000.0,
}


def env_name(env_id: str) -> str:
    """'hopper-medium-v2', 'Hopper-v5', 'mini/hopper-medium' -> 'hopper'."""
    base = env_id.rsplit("/", 1)[-1].lower().replace("half_cheetah", "halfcheetah")
    name = re.split(r"[-_]", base)[0]
    if name not in REF_MIN_MAX:
        known = ", ".join(REF_MIN_MAX)
        raise DtlensError(f"{env_id}: no reference scores for this environment (known: {known})")
    return name


def normalized_score(env: str, returns: ArrayLike) -> np.ndarray | float:
    """D4RL normalized score 100 (R - min) / (max - min) with D4RL's reference returns."""
    lo, hi = REF_MIN_MAX[env_name(env)]
    return _scale(returns, lo, hi)


def dataset_normalized_score(
    returns: ArrayLike, random_mean: float, expert_mean: float
) -> np.ndarray | float:
    """The paper code's variant: 100 (R - mean random return) / (mean expert - mean random),
    the means taken over the episodes of the D4RL random and expert datasets."""
    if expert_mean == random_mean:
        raise DtlensError("expert and random mean returns are equal: score undefined")
    return _scale(returns, random_mean, expert_mean)


def target_return(env: str) -> float:
    """Default return-to-go target for evaluation rollouts."""
    return DEFAULT_TARGET_RETURN[env_name(env)]


def _scale(returns: ArrayLike, lo: float, hi: float) -> np.ndarray | float:
    r = np.asarray(returns, dtype=np.float64)
    score = 100.0 * (r - lo) / (hi - lo)
    return float(score) if score.ndim == 0 else score
