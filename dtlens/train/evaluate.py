"""Evaluation rollouts: deterministic episodes conditioned on a target return.

All episodes run side by side: one forward pass per environment step serves every live episode,
each conditioned on its own last K steps. Rollouts run in eval mode with no hooks attached.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from dtlens.data.scores import normalized_score
from dtlens.model.dt import DecisionTransformer


@dataclass(frozen=True)
class EvalResult:
    returns: np.ndarray  # (episodes,)
    lengths: np.ndarray  # (episodes,)
    env_id: str

    @property
    def return_mean(self) -> float:
        return float(self.returns.mean())

    @property
    def return_std(self) -> float:
        return float(self.returns.std())

    @property
    def score_mean(self) -> float:
        return float(np.mean(normalized_score(self.env_id, self.returns)))

    @property
    def score_std(self) -> float:
        return float(np.std(normalized_score(self.env_id, self.returns)))


@torch.inference_mode()
def evaluate(
    model: DecisionTransformer,
    env_id: str,
    state_mean: np.ndarray,
    state_std: np.ndarray,
    target_return: float,
    episodes: int = 10,
    context_len: int = 20,
    rtg_scale: float = 1000.0,
    max_steps: int = 1000,
    seed: int = 0,
) -> EvalResult:
    """Roll out `episodes` deterministic episodes (env seeds seed, seed+1, ...)."""
    was_training = model.training
    model.eval()
    envs = [gym.make(env_id) for _ in range(episodes)]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    E, S, A, dev = episodes, model.cfg.state_dim, model.cfg.act_dim, model.device
    mean, std = (
        torch.as_tensor(x, dtype=torch.float32, device=dev) for x in (state_mean, state_std)
    )
    states = torch.zeros(E, max_steps, S, device=dev)
    actions = torch.zeros(E, max_steps, A, device=dev)
    rtg = torch.zeros(E, max_steps, 1, device=dev)
    timesteps = torch.arange(max_steps, device=dev).clamp(max=model.cfg.max_ep_len - 1)
    returns, lengths = np.zeros(E), np.zeros(E, dtype=np.int64)
    alive = np.ones(E, dtype=bool)
    rtg[:, 0] = target_return / rtg_scale
    for t in range(max_steps):
        live = np.flatnonzero(alive)
        states[live, t] = (torch.as_tensor(obs[live], dtype=torch.float32, device=dev) - mean) / std
        lo = max(0, t + 1 - context_len)
        pred = model(
            states[live, lo : t + 1],
            actions[live, lo : t + 1],
            rtg[live, lo : t + 1],
            timesteps[lo : t + 1].expand(len(live), -1),
        )[:, -1].float()  # float32 also under bf16 autocast
        actions[live, t] = pred
        for j, i in enumerate(live):
            o, r, term, trunc, _ = envs[i].step(pred[j].cpu().numpy())
            obs[i], returns[i], lengths[i] = o, returns[i] + r, t + 1
            if t + 1 < max_steps:
                rtg[i, t + 1] = rtg[i, t] - r / rtg_scale
            alive[i] = not (term or trunc)
        if not alive.any():
            break
    for env in envs:
        env.close()
    model.train(was_training)
    return EvalResult(returns=returns, lengths=lengths, env_id=env_id)
