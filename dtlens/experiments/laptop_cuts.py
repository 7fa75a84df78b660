"""The laptop study within 8 hours of this 2-core machine (results/laptop/PLAN.md, "Within 8 hours
of this 2-core machine"): a cost model of a plan and the PLAN's cut rule.

The cost model counts a plan's runs in K=20 training steps of the laptop model (mini, 3 x 128,
batch 64, one torch thread per run), from figures measured once on this machine (AMD EPYC, 2
cores, the other core busy), so that the rule decides the same on any machine:
- a K=20 training step takes `K20_STEP_S` = 0.4 s with both cores busy (~0.25 s on one quiet
  core; 0.32 to 0.40 s measured below at load 7 to 10);
- a K=1 training step costs `STEP_COST[1]` = 0.08 K=20 steps (measured 0.070 to 0.077 for
  `train_step` alone, 0.068 to 0.078 for whole epochs through `train`: rounded up);
- an evaluation step, 10 episodes side by side (one batched forward of the last K steps and 10
  env steps), costs `EVAL_STEP_COST[K]`: 0.05 at K=20 (measured 0.045 to 0.047), 0.01 at K=1
  (0.008 to 0.010); a run evaluates `TrainConfig.evaluations` times, each at most
  `eval_max_steps` steps (an upper bound: episodes may end sooner).
Measured by `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/laptop_costs.py --repeats 30` (the
K=20 step's absolute time there drifts with the load; the ratios held within the ranges above
over three runs on 2026-12-07).
The projected time spreads the plan's runs over `WORKERS` workers (never below its longest run);
the diagnostics come on top and are not counted.

The rule: if the whole study is projected above `HOURS`, cut `cut_order`'s items one after
another on `CUT_TASKS` (Hopper keeps every condition; the budget B and the convergence rule are
never cut) until the projection is within `HOURS` or every item is cut.
"""

from __future__ import annotations

import dataclasses

from dtlens.errors import DtlensError
from dtlens.experiments.preset import Preset
from dtlens.experiments.reproduce import plan
from dtlens.experiments.studies import BLOCK
from dtlens.train.config import TrainConfig

K20_STEP_S = 0.4
#: Context length K -> one training step, in K=20 training steps.
STEP_COST = {20: 1.0, 1: 0.08}
#: Context length K -> one evaluation step of 10 episodes, in K=20 training steps.
EVAL_STEP_COST = {20: 0.05, 1: 0.01}
WORKERS = 2
HOURS = 8.0
CUT_TASKS = ("halfcheetah", "walker2d")
PLAN_FILE = "results/laptop/PLAN.md"


def cut_order(preset: Preset) -> list[tuple[str, ...]]:
    """The PLAN's items, in order: shuffled:text and matched:text, then synthetic, then block
    replacement on all but the first, middle and last block (none with 3 blocks or fewer)."""
    n = preset.block_swap_size.n_layers
    kept = {0, (n - 1) // 2, n - 1}
    blocks = tuple(BLOCK.format(b) for b in range(n) if b not in kept)
    return [("shuffled:text", "matched:text"), ("synthetic",), blocks]


def run_cost(cfg: TrainConfig) -> float:
    """One run of `cfg`, in K=20 training steps."""
    k = cfg.context_len
    if k not in STEP_COST:
        raise DtlensError(f"the laptop cost model has no figure for K={k} (only {list(STEP_COST)})")
    steps = cfg.epochs * cfg.steps_per_epoch * STEP_COST[k]
    return steps + cfg.evaluations * cfg.eval_max_steps * EVAL_STEP_COST[k]


def projected_hours(preset: Preset) -> float:
    """The plan of `preset` on `WORKERS` workers, in hours (diagnostics not counted)."""
    costs = [run_cost(s.cfg) for p in plan(preset) for s in p.specs()]
    return max(sum(costs) / WORKERS, max(costs, default=0.0)) * K20_STEP_S / 3600


def choose_cuts(preset: Preset) -> tuple[dict[str, tuple[str, ...]], str]:
    """(cuts, note): the PLAN's cuts for the whole study `preset` (every task and seed, the
    full budget) and what they are, in words, with the projections that decided them."""
    before = hours = projected_hours(preset)
    tasks = [t for t in CUT_TASKS if t in preset.datasets]
    cut: tuple[str, ...] = ()
    cuts: dict[str, tuple[str, ...]] = {}
    for item in cut_order(preset):
        if hours <= HOURS:
            break
        cut += item
        cuts = {t: cut for t in tasks}
        hours = projected_hours(dataclasses.replace(preset, cuts=cuts))
    projected = f"projected {before:.1f} h on {WORKERS} workers"
    if not cut:
        return {}, f"nothing cut ({PLAN_FILE}): {projected} <= {HOURS:g} h"
    note = (
        f"cut on {', '.join(tasks)} ({PLAN_FILE}): {', '.join(cut)} "
        f"({projected} > {HOURS:g} h with every condition; "
    )
    if hours <= HOURS:
        return cuts, note + f"{hours:.1f} h after the cuts)"
    return cuts, note + f"every item cut, the study still exceeds {HOURS:g} h: {hours:.1f} h)"
