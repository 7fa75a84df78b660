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
    policy: MLPPolicy | MixedPolicy | None,
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


class MixedPolicy:
    """Per step, `policy`'s (noisy) action with probability `p`, else a uniform random action:
    `p` = 0 is the random policy, `p` = 1 is `policy` itself."""

    def __init__(self, policy: MLPPolicy, p: float) -> None:
        self.policy, self.p = policy, p
        self.env_id, self.obs_dim, self.act_dim = policy.env_id, policy.obs_dim, policy.act_dim

    def act(self, obs: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
        action = self.policy.act(obs, noise=noise, rng=rng)
        if rng.random() < self.p:
            return action
        u = rng.uniform(-1.0, 1.0, action.shape).astype(np.float32)
        return self.policy.low + (u + 1.0) * 0.5 * (self.policy.high - self.policy.low)


def replay_schedule(stages: int, noise: tuple[float, float]) -> list[tuple[float, float]]:
    """(policy probability, noise) per stage: probability 0 -> 1 and noise noise[0] -> noise[1],
    both linear over `stages`."""
    if stages < 2:
        raise DtlensError(f"a replay schedule needs >= 2 stages, got {stages}")
    fractions = np.linspace(0.0, 1.0, stages)
    return [(float(f), float(noise[0] + f * (noise[1] - noise[0]))) for f in fractions]


def collect_replay(
    env_id: str,
    policy: MLPPolicy,
    transitions: int,
    seed: int,
    stages: int,
    noise: tuple[float, float],
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """An approximate replay buffer (not a learner's): `stages` equal blocks of transitions,
    collected in order by `MixedPolicy(policy, p)` with Gaussian noise std `noise`, along
    `replay_schedule`, so quality rises from random to `policy` across the buffer as it does in
    the buffer of an agent that learns up to `policy`'s level. Stage i's episodes reset with
    seeds `seed + i * transitions + j`, so no two episodes share a seed."""
    sizes = np.diff(np.linspace(0, transitions, stages + 1).round().astype(int))
    parts = [
        collect(env_id, MixedPolicy(policy, p), int(n), seed + i * transitions, noise_i, progress)
        for i, ((p, noise_i), n) in enumerate(
            zip(replay_schedule(stages, noise), sizes, strict=True)
        )
    ]
    return concatenate_episodes(parts)


def concatenate_episodes(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """D4RL arrays one after another, each part's unfinished last episode (neither terminal nor
    timeout) closed by a timeout, so that no episode runs across two parts."""
    closed = []
    for i, part in enumerate(parts):
        part = dict(part)
        if i < len(parts) - 1 and not (part["terminals"][-1] or part["timeouts"][-1]):
            part["timeouts"] = part["timeouts"].copy()
            part["timeouts"][-1] = True
        closed.append(part)
    return {key: np.concatenate([part[key] for part in closed]) for key in parts[0]}


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
