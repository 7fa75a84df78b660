"""Evaluation rollouts on Hopper-v5: dtlens's `evaluate` (every episode side by side, one batched
forward per env step) vs a naive loop, the original DT's `evaluate_episode_rtg`.

The naive loop runs the episodes one after another and, at every step, runs the whole context
window (the last K steps, left-padded with zeros and masked when shorter) with batch size 1, as
the original code's `get_action` does. Both roll out the same deterministic policy from the
same env seeds (seed, seed+1, ...), the same target return and step cap, so they must give the
same returns; the table reports the largest relative difference.

The policy is a DT trained for `--train-steps` AdamW steps on `mini/hopper-medium` (a short
run, so that episodes last hundreds of steps instead of the ~40 of a random DT), or loaded from
`--checkpoint`. Both routes are timed round-robin in one process (median of `--repeats`), on
`--threads` torch threads (default 1); env creation is inside the timing for both, after a
short warm-up of each.

    .venv/bin/python benchmarks/bench_rollout.py [--quick] [--episodes 10] [--max-steps 500]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import alternate, machine_line, markdown_table, single_thread  # noqa: E402
from dtlens import DecisionTransformer, DTConfig  # noqa: E402
from dtlens.data import WindowSampler, load_dataset, target_return  # noqa: E402
from dtlens.train.evaluate import EvalResult, evaluate  # noqa: E402
from dtlens.train.loop import action_loss  # noqa: E402

ENV, DATASET = "Hopper-v5", "mini/hopper-medium"
K, RTG_SCALE = 20, 1000.0


def train_policy(steps: int, batch: int = 32, lr: float = 2e-3, seed: int = 0):
    """A DT trained briefly on the embedded Hopper dataset (seeded: the same weights each time);
    its state normalisation."""
    dataset = load_dataset(DATASET)
    model = DecisionTransformer(DTConfig(state_dim=11, act_dim=3), seed=seed)
    if steps > 0:
        sampler = WindowSampler(dataset, context_len=K, rtg_scale=RTG_SCALE)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # dropout masks come from the global generator
        model.train()
        for _ in range(steps):
            loss = action_loss(model, sampler.sample(batch, g))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            opt.step()
    return model.eval(), dataset.state_mean, dataset.state_std


def load_policy(path: str):
    from dtlens.model.checkpoint import load_model

    dataset = load_dataset(DATASET)
    return load_model(path).eval(), dataset.state_mean, dataset.state_std


@torch.inference_mode()
def naive_evaluate(
    model: DecisionTransformer,
    env_id: str,
    state_mean: np.ndarray,
    state_std: np.ndarray,
    target: float,
    episodes: int,
    max_steps: int,
    seed: int = 0,
) -> EvalResult:
    """The original DT's `evaluate_episode_rtg`, episode after episode, batch size 1."""
    model.eval()
    S, A = model.cfg.state_dim, model.cfg.act_dim
    mean = torch.as_tensor(state_mean, dtype=torch.float32)
    std = torch.as_tensor(state_std, dtype=torch.float32)
    returns, lengths = np.zeros(episodes), np.zeros(episodes, dtype=np.int64)
    for ep in range(episodes):
        env = gym.make(env_id)
        obs, _ = env.reset(seed=seed + ep)
        states = torch.zeros(0, S)
        actions = torch.zeros(0, A)
        rtg = torch.tensor([[target / RTG_SCALE]])
        timesteps = torch.zeros(1, dtype=torch.long)
        for t in range(max_steps):
            state = (torch.as_tensor(obs, dtype=torch.float32) - mean) / std
            states = torch.cat([states, state[None]])
            actions = torch.cat([actions, torch.zeros(1, A)])
            n = min(len(states), K)
            pad = K - n
            window = [states[-n:], actions[-n:], rtg[-n:]]
            s, a, r = (torch.cat([torch.zeros(pad, x.shape[1]), x]) for x in window)
            ts = torch.cat([torch.zeros(pad, dtype=torch.long), timesteps[-n:]])
            mask = torch.cat([torch.zeros(pad, dtype=torch.long), torch.ones(n, dtype=torch.long)])
            pred = model(s[None], a[None], r[None], ts[None], mask[None])[0, -1]
            actions[-1] = pred
            obs, reward, term, trunc, _ = env.step(pred.numpy())
            returns[ep] += reward
            lengths[ep] = t + 1
            rtg = torch.cat([rtg, rtg[-1:] - reward / RTG_SCALE])
            step = min(t + 1, model.cfg.max_ep_len - 1)
            timesteps = torch.cat([timesteps, torch.tensor([step])])
            if term or trunc:
                break
        env.close()
    return EvalResult(returns=returns, lengths=lengths, env_id=env_id)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="random DT, 3 short episodes")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--max-steps", type=int, default=500, help="env steps cap per episode")
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--checkpoint", help="a dtlens checkpoint instead of training one")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    single_thread(args.threads)
    if args.quick:
        args.episodes, args.max_steps, args.train_steps, args.repeats = 3, 30, 0, 1
    t0 = time.perf_counter()
    if args.checkpoint:
        model, mean, std = load_policy(args.checkpoint)
        policy = f"checkpoint {args.checkpoint}"
    else:
        model, mean, std = train_policy(args.train_steps, seed=args.seed)
        policy = (
            f"DT 3 x 128 trained {args.train_steps} steps (batch 32, lr 2e-3) on {DATASET}, "
            f"seed {args.seed}"
        )
    print(f"policy ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    target = target_return(ENV)
    common = dict(episodes=args.episodes, max_steps=args.max_steps, seed=args.seed)
    results: dict[str, EvalResult] = {}

    def run(name: str, fn) -> None:
        results[name] = fn(model, ENV, mean, std, target, **common)

    routes = {
        "dtlens evaluate (batched)": lambda: run("dtlens evaluate (batched)", evaluate),
        "naive, batch 1 (original DT)": lambda: run("naive, batch 1 (original DT)", naive_evaluate),
    }
    for fn in (evaluate, naive_evaluate):  # warm-up: first env creation, first forward passes
        fn(model, ENV, mean, std, target, episodes=1, max_steps=K + 2, seed=args.seed)
    times = alternate(routes, repeats=args.repeats, warmup=0)
    ours, naive = (results[k] for k in routes)
    gap = np.abs(ours.returns - naive.returns) / np.maximum(np.abs(naive.returns), 1e-12)
    rows = []
    for name, res in results.items():
        steps = int(res.lengths.sum())
        rows.append({
            "route": name, "episodes": args.episodes, "max_steps": args.max_steps,
            "env_steps": steps, "seconds": times[name], "steps_per_s": steps / times[name],
            "speedup": times["naive, batch 1 (original DT)"] / times[name],
            "return_mean": res.return_mean, "lengths": res.lengths.tolist(),
            "max_rel_return_diff": float(gap.max()), "lengths_equal":
            bool((ours.lengths == naive.lengths).all()), "policy": policy,
            "repeats": args.repeats,
        })  # fmt: skip
    print_table(rows, target)
    return rows


def print_table(rows: list[dict], target: float) -> None:
    r0 = rows[0]
    print(
        f"\n{ENV} rollouts, {r0['episodes']} episodes (env seeds 0..{r0['episodes'] - 1}), "
        f"cap {r0['max_steps']} steps, target return {target:.0f}, K={K}; policy: {r0['policy']}; "
        f"median of {r0['repeats']}, routes round-robin. Episode lengths {r0['lengths']}; "
        f"returns dtlens vs naive: max relative diff {r0['max_rel_return_diff']:.1e}, "
        f"lengths equal: {r0['lengths_equal']}\n{machine_line()}\n"
    )
    headers = ["route", "env steps", "time (s)", "env steps / s", "speedup vs naive",
               "mean return"]  # fmt: skip
    cells = [
        [
            r["route"],
            r["env_steps"],
            f"{r['seconds']:.2f}",
            f"{r['steps_per_s']:.0f}",
            f"{r['speedup']:.2f}",
            f"{r['return_mean']:.1f}",
        ]
        for r in rows
    ]
    print(markdown_table(headers, cells))


if __name__ == "__main__":
    main()
