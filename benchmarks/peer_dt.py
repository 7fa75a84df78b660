"""A peer Decision Transformer to score dtlens's trainer against, on the same data and budget.

Written for dtlens from CORL's single-file DT (tinkoff-ai/CORL, `algorithms/offline/dt.py`, read,
not imported: CORL needs d4rl, pyrallis and wandb) and kept to its choices: pre-norm blocks on
`nn.MultiheadAttention`, a norm and dropout on the token stream, a final norm, a tanh action head
on the state tokens, every linear/embedding weight N(0, 0.02) and biases zero, a timestep table of
`episode_len + K` rows; windows start uniformly inside a trajectory drawn in proportion to its
length and are padded at the end (padded keys masked, padded steps left out of the MSE);
returns-to-go scaled by 1e-3; AdamW (lr 1e-4, weight decay 1e-4) with a linear warm-up and
gradient clipping at 0.25. Only the data (`dtlens.data.load_dataset`), the environment seeds and
the normalized score are dtlens's, so that both trainers are scored the same way.

    python benchmarks/peer_dt.py --dataset mini/hopper-medium --steps 3000 --eval-every 1000 \
        --seed 0 --out runs/peer/hopper-medium-s0.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dtlens.data import load_dataset
from dtlens.data.scores import DEFAULT_TARGET_RETURN, env_name, normalized_score
from dtlens.io import save_json


@dataclass(frozen=True)
class PeerConfig:
    """CORL's defaults for MuJoCo (3 x 128, one head), with its optimiser."""

    d_model: int = 128
    n_layers: int = 3
    n_heads: int = 1
    context_len: int = 20
    episode_len: int = 1000
    attn_dropout: float = 0.1
    resid_dropout: float = 0.1
    embed_dropout: float = 0.1
    lr: float = 1e-4
    weight_decay: float = 1e-4
    clip_grad: float = 0.25
    batch_size: int = 64
    warmup_steps: int = 10_000
    reward_scale: float = 1e-3


class Block(nn.Module):
    """Pre-norm attention and MLP, residual dropout after each (CORL's TransformerBlock)."""

    def __init__(self, cfg: PeerConfig):
        super().__init__()
        d, n = cfg.d_model, 3 * cfg.context_len
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, cfg.n_heads, cfg.attn_dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(cfg.resid_dropout)
        self.register_buffer("future", ~torch.tril(torch.ones(n, n, dtype=torch.bool)))

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        n = x.shape[1]
        h = self.norm1(x)
        a = self.attn(h, h, h, attn_mask=self.future[:n, :n], key_padding_mask=pad)[0]
        x = x + self.drop(a)
        return x + self.drop(self.mlp(self.norm2(x)))


class PeerDT(nn.Module):
    """(R, s, a) tokens with a shared timestep embedding added to each; actions from s tokens."""

    def __init__(self, cfg: PeerConfig, state_dim: int, act_dim: int):
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.embed_time = nn.Embedding(cfg.episode_len + cfg.context_len, d)
        self.embed_state = nn.Linear(state_dim, d)
        self.embed_action = nn.Linear(act_dim, d)
        self.embed_return = nn.Linear(1, d)
        self.embed_norm, self.embed_drop = nn.LayerNorm(d), nn.Dropout(cfg.embed_dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.out_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, act_dim)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, states, actions, rtg, timesteps, mask=None) -> torch.Tensor:
        B, K, _ = states.shape
        t = self.embed_time(timesteps)
        tokens = torch.stack(
            [
                self.embed_return(rtg[..., None]) + t,
                self.embed_state(states) + t,
                self.embed_action(actions) + t,
            ],
            dim=2,
        ).reshape(B, 3 * K, -1)
        pad = None if mask is None else ~mask.bool().repeat_interleave(3, dim=1)
        x = self.embed_drop(self.embed_norm(tokens))
        for block in self.blocks:
            x = block(x, pad)
        return torch.tanh(self.head(self.out_norm(x)[:, 1::3]))


class Windows:
    """Training windows as CORL samples them, from a dtlens `OfflineDataset`."""

    def __init__(self, dataset, cfg: PeerConfig, rng: np.random.Generator):
        self.cfg, self.rng = cfg, rng
        self.mean, self.std = dataset.observations.mean(0), dataset.observations.std(0) + 1e-6
        self.episodes = []
        for ep in dataset.episodes:
            rtg = np.cumsum(ep["rewards"][::-1])[::-1] * cfg.reward_scale
            states = (ep["observations"] - self.mean) / self.std
            self.episodes.append((states, ep["actions"], rtg))
        lengths = np.array([len(e[2]) for e in self.episodes], dtype=np.float64)
        self.prob = lengths / lengths.sum()

    def sample(self) -> list[torch.Tensor]:
        K, B = self.cfg.context_len, self.cfg.batch_size
        out = [[], [], [], [], []]
        for i in self.rng.choice(len(self.episodes), size=B, p=self.prob):
            states, actions, rtg = self.episodes[i]
            start = int(self.rng.integers(len(rtg)))
            n = min(K, len(rtg) - start)
            for j, x in enumerate((states, actions, rtg)):
                window = np.zeros((K, *x.shape[1:]), np.float32)  # padded at the end
                window[:n] = x[start : start + n]
                out[j].append(window)
            out[3].append(np.arange(start, start + K))
            out[4].append(np.arange(K) < n)
        return [torch.as_tensor(np.stack(v)) for v in out]


@torch.inference_mode()
def evaluate(model: PeerDT, env_id, mean, std, target_return, episodes, seed) -> np.ndarray:
    """Deterministic episodes on env seeds seed, seed+1, ... (dtlens's), run side by side."""
    cfg, (S, A) = model.cfg, (len(mean), model.head.out_features)
    model.eval()
    envs = [gym.make(env_id) for _ in range(episodes)]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    T = cfg.episode_len
    states, actions = torch.zeros(episodes, T, S), torch.zeros(episodes, T, A)
    rtg = torch.zeros(episodes, T)
    rtg[:, 0] = target_return * cfg.reward_scale
    timesteps = torch.arange(T)
    returns, alive = np.zeros(episodes), np.ones(episodes, dtype=bool)
    for t in range(T):
        live = np.flatnonzero(alive)
        states[live, t] = torch.as_tensor((obs[live] - mean) / std, dtype=torch.float32)
        lo = max(0, t + 1 - cfg.context_len)
        pred = model(
            states[live, lo : t + 1],
            actions[live, lo : t + 1],
            rtg[live, lo : t + 1],
            timesteps[lo : t + 1].expand(len(live), -1),
        )[:, -1]
        actions[live, t] = pred
        for j, i in enumerate(live):
            obs[i], r, term, trunc, _ = envs[i].step(pred[j].numpy())
            returns[i] += r
            if t + 1 < T:
                rtg[i, t + 1] = rtg[i, t] - r * cfg.reward_scale
            alive[i] = not (term or trunc)
        if not alive.any():
            break
    model.train()
    return returns


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    cfg = PeerConfig(warmup_steps=args.warmup)
    dataset = load_dataset(args.dataset)
    env_id = dataset.env_id
    windows = Windows(dataset, cfg, np.random.default_rng(args.seed))
    model = PeerDT(cfg, dataset.obs_dim, dataset.act_dim)
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda step: min((step + 1) / cfg.warmup_steps, 1.0)
    )
    target = args.target_return or DEFAULT_TARGET_RETURN[env_name(env_id)]
    record = {
        "peer": "CORL DT (benchmarks/peer_dt.py)",
        "config": asdict(cfg),
        "dataset": args.dataset,
        "env_id": env_id,
        "seed": args.seed,
        "target_return": target,
        "evals": [],
    }
    start = time.time()
    for step in range(1, args.steps + 1):
        states, actions, rtg, timesteps, mask = windows.sample()
        pred = model(states, actions, rtg, timesteps, mask)
        loss = (F.mse_loss(pred, actions, reduction="none") * mask[..., None]).mean()
        optim.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        optim.step()
        sched.step()
        if step % args.eval_every == 0 or step == args.steps:
            returns = evaluate(
                model, env_id, windows.mean, windows.std, target, args.eval_episodes, args.eval_seed
            )
            scores = np.asarray(normalized_score(env_id, returns))
            row = {
                "step": step,
                "loss": loss.item(),
                "return_mean": float(returns.mean()),
                "score_mean": float(scores.mean()),
                "score_std": float(scores.std()),
                "minutes": (time.time() - start) / 60,
            }
            record["evals"].append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                save_json(record, args.out)
    return record


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mini/hopper-medium")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=PeerConfig.warmup_steps)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--eval-seed", type=int, default=0, help="env seeds start here (dtlens's)")
    parser.add_argument("--target-return", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="JSON record of every evaluation")
    return train(parser.parse_args(argv))


if __name__ == "__main__":
    main()
