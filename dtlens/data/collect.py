"""Collect a D4RL-layout dataset from a gymnasium MuJoCo env with a behaviour policy."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from dtlens.data.d4rl import write_d4rl
from dtlens.data.policy import POLICY_DIR, MLPPolicy, load_policy
from dtlens.errors import DtlensError
from dtlens.io import file_sha256

QUALITIES = ("random", "medium", "expert")
DEFAULT_NOISE = 0.1
GZIP_LEVEL = 9  # collected files are compressed: ~20% smaller, same bytes for the same data


def policy_name(env_id: str, quality: str) -> str | None:
    """The embedded policy of `quality` ('hopper-medium' for Hopper-v5); None for random."""
    if quality not in QUALITIES:
        raise DtlensError(f"{quality}: unknown quality (choose from {', '.join(QUALITIES)})")
    return None if quality == "random" else f"{env_id.split('-')[0].lower()}-{quality}"


def policy_sha256(env_id: str, quality: str) -> str | None:
    """SHA-256 of the embedded policy's weights file for `quality` (None for random)."""
    name = policy_name(env_id, quality)
    if name is None:
        return None
    load_policy(name)  # one clear error if it is not embedded
    return file_sha256(POLICY_DIR / f"{name}.safetensors")


def behaviour_policy(env_id: str, quality: str, policy: str | None = None) -> MLPPolicy | None:
    """The policy for `quality` (None = uniform random actions); `policy` overrides it by name
    ('hopper-medium') or path stem."""
    if policy is not None:
        return load_policy(policy)
    name = policy_name(env_id, quality)
    return None if name is None else load_policy(name)


def collect(
    env_id: str,
    policy: MLPPolicy | None,
    transitions: int,
    seed: int = 0,
    noise: float = DEFAULT_NOISE,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Run `policy` (None = uniform random) for exactly `transitions` steps; D4RL arrays.

    Episode i starts from `env.reset(seed=seed + i)`; Gaussian action noise of std `noise`
    (in the [-1, 1] policy space) is drawn from `default_rng(seed)`. The last episode may be
    unfinished (neither terminal nor timeout).
    """
    import gymnasium as gym

    if transitions < 1:
        raise DtlensError(f"transitions must be >= 1, got {transitions}")
    try:
        env = gym.make(env_id)
    except gym.error.Error as e:
        raise DtlensError(f"{env_id}: unknown environment ({e})") from None
    if not isinstance(env.action_space, gym.spaces.Box):
        raise DtlensError(f"{env_id}: not a continuous-control env (actions: {env.action_space})")
    obs_dim = int(np.prod(env.observation_space.shape))
    act_dim = int(np.prod(env.action_space.shape))
    if policy is not None and (policy.obs_dim, policy.act_dim) != (obs_dim, act_dim):
        raise DtlensError(
            f"{env_id}: policy for {policy.env_id or '?'} has obs/act dims "
            f"{policy.obs_dim}/{policy.act_dim}, env has {obs_dim}/{act_dim}"
        )
    rng = np.random.default_rng(seed)
    env.action_space.seed(seed)
    out = {
        "observations": np.empty((transitions, obs_dim), np.float32),
        "next_observations": np.empty((transitions, obs_dim), np.float32),
        "actions": np.empty((transitions, act_dim), np.float32),
        "rewards": np.empty(transitions, np.float32),
        "terminals": np.zeros(transitions, bool),
        "timeouts": np.zeros(transitions, bool),
    }
    episode = 0
    obs, _ = env.reset(seed=seed)
    with _progress(transitions, progress) as advance:
        for t in range(transitions):
            if policy is None:
                action = env.action_space.sample()
            else:
                action = policy.act(obs, noise=noise, rng=rng)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            out["observations"][t] = obs
            out["next_observations"][t] = next_obs
            out["actions"][t] = action
            out["rewards"][t] = reward
            out["terminals"][t] = terminated
            out["timeouts"][t] = truncated and not terminated
            obs = next_obs
            if terminated or truncated:
                episode += 1
                obs, _ = env.reset(seed=seed + episode)
            if (t + 1) % 1000 == 0:
                advance(1000)
    env.close()
    return out


def collect_to_file(
    path: str | os.PathLike,
    env_id: str,
    quality: str = "medium",
    transitions: int = 100_000,
    seed: int = 0,
    noise: float = DEFAULT_NOISE,
    policy: str | None = None,
    progress: bool = False,
) -> Path:
    """Collect and write a compressed D4RL HDF5 file whose attrs say how it was made."""
    actor = behaviour_policy(env_id, quality, policy)
    arrays = collect(env_id, actor, transitions, seed, noise if actor else 0.0, progress)
    metadata = {
        "env_id": env_id,
        "policy": policy or ("uniform-random" if actor is None else f"embedded:{quality}"),
        "quality": quality,
        "seed": seed,
        "noise": noise if actor else 0.0,
        "transitions": transitions,
        "collector": "dtlens.data.collect",
    }
    return write_d4rl(path, arrays, metadata, compression=GZIP_LEVEL)


@contextmanager
def _progress(total: int, show: bool) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)`; shows a transient rich progress bar on stderr when `show`."""
    if not show:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("collecting", total=total)
        yield lambda n: bar.advance(task, n)
