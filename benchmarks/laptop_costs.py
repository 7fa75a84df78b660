"""The laptop study's cost model (`dtlens.experiments.laptop_cuts`): what a K=1 training step and
an evaluation step cost, in K=20 training steps, on this machine.

One process on one torch thread (as each `dtlens reproduce` worker), the `laptop` preset's
model (mini: 3 x 128, 4 heads, the released DT init, the preset's dropout) on
`mini/hopper-medium`, timed round-robin (median of `--repeats`):
- a K=20 and a K=1 training step (`dtlens.train.loop.train_step`, AdamW, clip 0.25, batch 64);
- a K=20 and a K=1 evaluation step as `dtlens.train.evaluate.evaluate` makes it with every
  episode still running: one batched forward of 10 windows of the last K steps (inference mode)
  and one `env.step` of each of the 10 Hopper-v5 environments;
- one epoch of `--epoch-steps` K=20 and K=1 steps through `dtlens.train.loop.train` (no
  evaluation), as a run makes them: the loop's overhead (sampling, logging, the checkpoint)
  included, alternated twice, the `train_time_s` it records.
The ratios to the K=20 training step are the cost model's figures; run it while the other core
is busy (as the study runs: one run per core) and while it is quiet to see that they hold.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/laptop_costs.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import alternate, machine_line, markdown_table, single_thread  # noqa: E402
from dtlens.data import WindowSampler, load_dataset  # noqa: E402
from dtlens.experiments.presets import laptop_train_config  # noqa: E402
from dtlens.train.loop import build_model, train, train_step  # noqa: E402

DATASET, ENV, EPISODES = "mini/hopper-medium", "Hopper-v5", 10


def training_step(cfg, dataset, context_len: int):
    """A callable making one training step of `cfg` at context `context_len`."""
    cfg = cfg.replace(context_len=context_len)
    model = build_model(cfg, dataset.obs_dim, dataset.act_dim).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sampler = WindowSampler(dataset, context_len=context_len, rtg_scale=cfg.rtg_scale)
    rng = np.random.default_rng(0)
    return lambda: train_step(
        model, optimizer, sampler.sample(cfg.batch_size, rng), cfg, cfg.lr, "cpu"
    )


def evaluation_step(cfg, dataset, context_len: int):
    """A callable making one evaluation step with all `EPISODES` episodes alive: one batched
    forward of the last `context_len` steps and one env step per episode."""
    model = build_model(cfg, dataset.obs_dim, dataset.act_dim).eval()
    envs = [gym.make(ENV) for _ in range(EPISODES)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    sampler = WindowSampler(dataset, context_len=context_len, rtg_scale=cfg.rtg_scale)
    batch = sampler.sample(EPISODES, np.random.default_rng(0))
    inputs = (batch.states, batch.actions, batch.returns_to_go, batch.timesteps)

    def step() -> None:
        with torch.inference_mode():
            actions = model(*inputs)[:, -1].float().numpy()
        for env, action in zip(envs, actions, strict=True):
            _, _, term, trunc, _ = env.step(action)
            if term or trunc:
                env.reset()

    return step


def epoch_seconds(cfg, steps: int, repeats: int = 2) -> dict[int, float]:
    """K -> the median `train_time_s` of one epoch of `steps` steps through `train`."""
    cfg = cfg.replace(dataset=DATASET, steps_per_epoch=steps, eval_episodes=0)
    times: dict[int, list[float]] = {20: [], 1: []}
    for _ in range(repeats):
        for k in times:
            with tempfile.TemporaryDirectory() as folder:
                train(cfg.replace(context_len=k), Path(folder) / "run", progress=False)
                with xr.open_dataset(Path(folder) / "run" / "metrics.nc") as m:
                    times[k].append(float(m.train_time_s[-1]))
    return {k: statistics.median(t) for k, t in times.items()}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--epoch-steps", type=int, default=150)
    args = parser.parse_args(argv)
    single_thread(1)
    cfg = laptop_train_config(epochs=1)
    dataset = load_dataset(DATASET)
    fns = {
        "training step, K=20": training_step(cfg, dataset, 20),
        "training step, K=1": training_step(cfg, dataset, 1),
        "evaluation step, K=20": evaluation_step(cfg, dataset, 20),
        "evaluation step, K=1": evaluation_step(cfg, dataset, 1),
    }
    seconds = alternate(fns, args.repeats, warmup=2)
    unit = seconds["training step, K=20"]
    print(
        f"laptop cost model: {cfg.size.n_layers} x {cfg.size.d_model}, batch {cfg.batch_size}, "
        f"{EPISODES} evaluation episodes of {ENV}; median of {args.repeats} round-robin repeats"
    )
    print(machine_line())
    rows = [[name, f"{s * 1e3:.1f}", f"{s / unit:.3f}"] for name, s in seconds.items()]
    epoch = epoch_seconds(cfg, args.epoch_steps)
    rows += [
        [f"training step through `train`, K={k}", f"{s / args.epoch_steps * 1e3:.1f}",
         f"{s / epoch[20]:.3f}"]
        for k, s in epoch.items()
    ]  # fmt: skip
    print(markdown_table(["step", "ms", "in K=20 training steps"], rows))
    return {row[0]: float(row[2]) for row in rows}


if __name__ == "__main__":
    main()
