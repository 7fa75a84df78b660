"""Train the behaviour policies of the embedded datasets with stable-baselines3 SAC.

    python scripts/train_policies.py --env Walker2d-v5 --timesteps 1000000 --seed 0 \
        --out ~/.cache/dtlens/policies/walker2d --max-minutes 60

Every `--eval-every` steps the deterministic actor is evaluated and saved under `OUT/checkpoints/`,
and the whole SAC state (networks, optimisers, entropy coefficient, the filled part of the replay
buffer) under `OUT/resume/`: the same command run again continues from there, across sessions (the
environment restarts its episode; nothing else is lost). Training ends at `--timesteps`, or once
`--target-score` is reached (the D4RL normalized score of the mean evaluation return, on
`TARGET_EVALS` evaluations in a row), and pauses after `--max-minutes` of this invocation; the
export runs once training has ended (`--export-only` forces it); SIGTERM or SIGINT saves the state
and stops. Then the replay buffer is written to `OUT/replay.hdf5` (D4RL layout) and `export` picks
the *expert* (the best of the 5 top checkpoints re-evaluated over 10 fresh episodes) and the
*medium* (the earlier checkpoint that moves forward nearest to where D4RL's medium data sit
relative to its expert data: `D4RL_MEDIUM_FRACTION` of the expert's normalized score),
evaluates both over 10 episodes, writes them to `dtlens/assets/policies/` and the replay buffer up
to the medium checkpoint to `OUT/<env>-medium-replay.hdf5`. `export` can be rerun alone:

    python scripts/train_policies.py --out runs/policies/hopper --export-only
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dtlens.data.d4rl import read_d4rl, write_d4rl
from dtlens.data.policy import (
    POLICY_DIR,
    MLPPolicy,
    evaluate_policy,
    record_policy,
    rollout_stats,
)
from dtlens.data.scores import normalized_score
from dtlens.io import load_json, save_json, write_atomic
from dtlens.paths import portable_path
from dtlens.stopping import stop_signal

#: Evaluations in a row at or above `--target-score` that end training (5-episode means are noisy).
TARGET_EVALS = 2
#: D4RL's medium-v2 data as a fraction of its expert-v2 data, in normalized score (D4RL's dataset
#: statistics: hopper ~44 / ~108, halfcheetah ~41 / ~93, walker2d ~62 / ~108): D4RL's "a third of
#: the expert" in raw return lands at 0.4-0.6 of the expert's normalized score. The medium
#: checkpoint is taken there, within `MEDIUM_TOLERANCE`: wide enough that the band cannot fall
#: between two checkpoints 10k steps apart (HalfCheetah climbs 13.6 points from 50k to 60k there;
#: 10% missed both at an expert of 85).
D4RL_MEDIUM_FRACTION = {"hopper": 44 / 108, "halfcheetah": 41 / 93, "walker2d": 62 / 108}
MEDIUM_TOLERANCE = 0.2
BUFFER_KEYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def actor_policy(model, env_id: str) -> MLPPolicy:
    """The SAC actor's deterministic action tanh(mu(obs)) as an `MLPPolicy`."""
    actor = model.policy.actor
    linears = [m for m in actor.latent_pi if isinstance(m, torch.nn.Linear)] + [actor.mu]
    weights = [(m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()) for m in linears]
    return MLPPolicy(weights, env_id=env_id)


def target_reached(rows: list[dict], env_id: str, score: float | None) -> bool:
    """Whether the last `TARGET_EVALS` evaluations' mean returns all score at least `score`."""
    last = rows[-TARGET_EVALS:]
    return (
        score is not None
        and len(last) == TARGET_EVALS
        and all(normalized_score(env_id, r["return_mean"]) >= score for r in last)
    )


def train(args: argparse.Namespace) -> bool:
    """Train (or continue) SAC; True once `--timesteps` steps are done or the target reached."""
    import gymnasium as gym
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    torch.set_num_threads(1)
    out = Path(args.out)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    log_path = out / "eval.jsonl"
    resume = out / "resume"
    start = time.time()
    env = gym.make(args.env)
    if (resume / "state.json").is_file():
        state = load_json(resume / "state.json")
        model = SAC.load(resume / "sac.zip", env=env, device="cpu")
        load_buffer(model.replay_buffer, resume / "buffer.npz")
        minutes_before = state["minutes"]
        print(
            f"resuming at step {model.num_timesteps} ({minutes_before:.0f} min so far)", flush=True
        )
    else:
        log_path.write_text("")
        model = SAC(
            "MlpPolicy",
            env,
            policy_kwargs={"net_arch": args.hidden},
            learning_starts=args.learning_starts,
            buffer_size=args.timesteps,
            seed=args.seed,
            device="cpu",
            verbose=0,
        )
        minutes_before = 0.0

    def minutes() -> float:
        return minutes_before + (time.time() - start) / 60

    def checkpoint() -> None:
        resume.mkdir(exist_ok=True)
        write_atomic(resume / "sac.zip", lambda tmp: save_to(tmp, model.save))
        save_buffer(model.replay_buffer, resume / "buffer.npz")
        save_json({"step": model.num_timesteps, "minutes": minutes()}, resume / "state.json")

    class EvalAndStop(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % args.eval_every == 0:
                policy = actor_policy(self.model, args.env)
                returns = evaluate_policy(
                    policy, args.env, episodes=args.eval_episodes, seed=10_000
                )
                policy.save(out / "checkpoints" / f"step-{self.num_timesteps:08d}", extra={})
                row = {
                    "step": self.num_timesteps,
                    "return_mean": float(np.mean(returns)),
                    "return_std": float(np.std(returns)),
                    "minutes": minutes(),
                }
                with log_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
                checkpoint()
                if target_reached(read_rows(log_path), args.env, args.target_score):
                    return False
            return not stop.requested and (time.time() - start) / 60 < args.max_minutes

    remaining = args.timesteps - model.num_timesteps
    if remaining > 0 and not target_reached(read_rows(log_path), args.env, args.target_score):
        with stop_signal() as stop:  # SIGTERM/SIGINT: checkpoint, then stop
            model.learn(
                total_timesteps=remaining, callback=EvalAndStop(), reset_num_timesteps=False
            )
        checkpoint()
    if target_reached(read_rows(log_path), args.env, args.target_score):
        print(f"target score {args.target_score} reached at step {model.num_timesteps}")
    elif model.num_timesteps < args.timesteps:
        print(f"stopped at step {model.num_timesteps} of {args.timesteps}: run again to continue")
        return False
    save_replay(model.replay_buffer, out / "replay.hdf5", args)
    save_json(
        {"args": vars(args), "steps": model.num_timesteps, "minutes": minutes()},
        out / "train.json",
    )
    return True


def save_buffer(buffer, path: Path) -> None:
    """The filled rows of an SB3 replay buffer (no wrap-around: its size is the step budget)."""
    n = buffer.buffer_size if buffer.full else buffer.pos
    arrays = {key: getattr(buffer, key)[:n] for key in BUFFER_KEYS}
    write_atomic(path, lambda tmp: save_to(tmp, lambda f: np.savez(f, **arrays)))


def save_to(path: Path, writer) -> None:
    """`writer(file)` on `path` opened for writing (SB3 and numpy would add their own suffix)."""
    with path.open("wb") as f:
        writer(f)


def load_buffer(buffer, path: Path) -> None:
    with np.load(path) as arrays:
        n = len(arrays["rewards"])
        for key in BUFFER_KEYS:
            getattr(buffer, key)[:n] = arrays[key]
    buffer.pos, buffer.full = n % buffer.buffer_size, n == buffer.buffer_size


def save_replay(buffer, path: Path, args: argparse.Namespace) -> None:
    """The SAC replay buffer (no wrap-around: its size is the step budget) in D4RL layout."""
    n = buffer.buffer_size if buffer.full else buffer.pos
    dones = buffer.dones[:n, 0].astype(bool)
    timeouts = buffer.timeouts[:n, 0].astype(bool)
    arrays = {
        "observations": buffer.observations[:n, 0],
        "next_observations": buffer.next_observations[:n, 0],
        "actions": buffer.actions[:n, 0],
        "rewards": buffer.rewards[:n, 0],
        "terminals": dones & ~timeouts,
        "timeouts": timeouts,
    }
    meta = {"env_id": args.env, "policy": "sac-replay", "quality": "replay", "seed": args.seed}
    write_d4rl(path, arrays, meta)


def export(args: argparse.Namespace) -> None:
    """Pick expert and medium checkpoints, evaluate them, write them to the assets folder."""
    out = Path(args.out)
    rows = read_rows(out / "eval.jsonl")
    train_info = json.loads((out / "train.json").read_text())
    targs = train_info["args"]
    best = pick_expert(rows, out, targs["env"])
    medium = pick_medium(rows, best, out, targs["env"])
    command = (
        f"python scripts/train_policies.py --env {targs['env']} --timesteps {train_info['steps']} "
        f"--seed {targs['seed']} --eval-every {targs['eval_every']} "
        f"--eval-episodes {targs['eval_episodes']} --learning-starts {targs['learning_starts']} "
        f"--hidden {','.join(map(str, targs['hidden']))} "
        + (f"--target-score {targs['target_score']} " if targs.get("target_score") else "")
        + f"--out {portable_path(targs['out'])}"
    )
    random_returns = evaluate_policy(None, targs["env"], episodes=10, seed=0)
    env_name = targs["env"].split("-")[0].lower()
    summary = {"random": float(np.mean(random_returns))}
    for quality, row in (("expert", best), ("medium", medium)):
        policy = MLPPolicy.load(out / "checkpoints" / f"step-{row['step']:08d}")
        returns = evaluate_policy(policy, targs["env"], episodes=10, seed=0)
        summary[quality] = float(np.mean(returns))
        extra = {
            "quality": quality,
            "training_step": row["step"],
            "selection_return_mean": row.get("selection_return_mean", row["return_mean"]),
            "return_mean": float(np.mean(returns)),
            "return_std": float(np.std(returns)),
            "return_episodes": len(returns),
            "return_eval": "deterministic tanh(mu), env.reset(seed=0..9)",
            "trainer": "stable-baselines3 SAC, default hyperparameters, "
            f"net_arch {targs['hidden']}",
            "command": command,
        }
        policy.save(POLICY_DIR / f"{env_name}-{quality}", extra=extra)
        record_policy(f"{env_name}-{quality}")
    # medium-replay: the replay buffer up to the medium checkpoint (too large to embed)
    replay = read_d4rl(out / "replay.hdf5")
    arrays = {k: v[: medium["step"]] for k, v in replay.arrays().items()}
    meta = {"env_id": targs["env"], "policy": "sac-replay", "quality": "medium-replay"}
    write_d4rl(out / f"{env_name}-medium-replay.hdf5", arrays, meta | {"seed": targs["seed"]})
    print(json.dumps(summary, indent=2))


def read_rows(path: Path) -> list[dict]:
    """The evaluations logged so far (eval.jsonl), oldest first."""
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def pick_expert(rows: list[dict], out: Path, env_id: str, top: int = 5) -> dict:
    """Re-evaluate the `top` checkpoints over 10 fresh episodes (5-episode scores are noisy)."""
    candidates = sorted(rows, key=lambda r: r["return_mean"])[-top:]
    for row in candidates:
        policy = MLPPolicy.load(out / "checkpoints" / f"step-{row['step']:08d}")
        row["selection_return_mean"] = float(
            np.mean(evaluate_policy(policy, env_id, episodes=10, seed=20_000))
        )
    return max(candidates, key=lambda r: r["selection_return_mean"])


def pick_medium(rows: list[dict], expert: dict, out: Path, env_id: str) -> dict:
    """The earlier checkpoint nearest `D4RL_MEDIUM_FRACTION` of the expert's normalized score
    that moves forward: a policy that only balances in place earns ~1 per step and fills a
    dataset with standing."""
    fraction = D4RL_MEDIUM_FRACTION[env_id.split("-")[0].lower()]
    target = fraction * normalized_score(env_id, expert["selection_return_mean"])
    earlier = [r for r in rows if r["step"] < expert["step"]]
    for row in sorted(
        earlier, key=lambda r: abs(normalized_score(env_id, r["return_mean"]) - target)
    ):
        policy = MLPPolicy.load(out / "checkpoints" / f"step-{row['step']:08d}")
        stats = rollout_stats(policy, env_id, episodes=10, seed=20_000)
        row["selection_return_mean"] = float(stats["returns"].mean())
        score = normalized_score(env_id, row["selection_return_mean"])
        if stats["x_position"].mean() > 1.0 and abs(score - target) <= MEDIUM_TOLERANCE * target:
            return row
    raise SystemExit(
        f"no earlier checkpoint within {MEDIUM_TOLERANCE:.0%} of {target:.1f} normalized "
        f"({fraction:.2f} of the expert's) moves forward"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--timesteps", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=10_000)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--learning-starts", type=int, default=10_000)
    parser.add_argument(
        "--hidden",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[256, 256],
        help="hidden layer widths of actor and critics (D4RL's SAC: 256,256)",
    )
    parser.add_argument(
        "--target-score",
        type=float,
        default=None,
        help="end training once the D4RL normalized score of the evaluation return reaches this",
    )
    parser.add_argument("--max-minutes", type=float, default=float("inf"))
    parser.add_argument("--out", default="runs/policies/hopper")
    parser.add_argument("--export-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.export_only:
        print("command:", shlex.join([sys.executable, *sys.argv]), flush=True)
        if not train(args):
            return
    export(args)


if __name__ == "__main__":
    main()
