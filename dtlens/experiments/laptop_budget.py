"""The laptop study's fine-tuning budget B per task, from random-init runs alone
(results/laptop/PLAN.md, "The budget B").

The K=20 random-init run of seed 666 is trained candidate by candidate to 4 x B (`train`
with resume: a rerun continues, a kill loses at most one epoch). B is the smallest candidate
whose final action error, the training action MSE averaged over the `window` steps that end at
B, is within `tolerance` of the same average over the steps that end at 4 x B. The run also
logs the action error on the fixed held-out windows of `mini/TASK-medium-heldout` after every
epoch, which tells a model still learning the behaviour policy from one fitting its own
windows (`metric` applies the rule to it instead). Budget runs are made per learning rate
(PLAN.md, "the learning rate": the paper's 1e-4 has no B at laptop scale), and the study's rate
is the smallest at which every task's run converged. Epochs are `epoch_steps` long: epochs of
500 steps make every candidate (2,500 included) and its 4 x B end on an epoch, and the
1,000-step window is then the mean of the last two epochs' per-epoch error. The choice is
written to `budget.json`, one entry per task and learning rate, which the `laptop` preset reads.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dtlens.errors import DtlensError
from dtlens.io import load_json, open_netcdf, save_json
from dtlens.model.config import MINI
from dtlens.paths import cache_root, portable_path
from dtlens.train.config import TrainConfig
from dtlens.train.loop import train

#: The command that writes budget.json (named in the preset's error when a task is missing).
COMMAND = "dtlens laptop-budget"
LAPTOP_TASKS = ("hopper", "halfcheetah", "walker2d")
BUDGET_FILE = Path("results/laptop/budget.json")
METRICS = ("action_error", "heldout_action_error")
#: The paper's learning rate (`TrainConfig`'s default), the budget runs' default.
PAPER_LR: float = TrainConfig.lr

Log = Callable[[str], None]


@dataclass(frozen=True)
class BudgetRule:
    """The PLAN's rule: candidates (steps), the factor of the long run, the tolerance, the steps
    averaged at each end, the epoch length of the budget run, and the per-epoch error it reads
    (`action_error`, the training batches', the PLAN's; `heldout_action_error`, the held-out
    windows')."""

    candidates: tuple[int, ...] = (2500, 5000, 10000, 20000)
    factor: int = 4
    tolerance: float = 0.05
    window: int = 1000
    epoch_steps: int = 500
    metric: str = "action_error"

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise DtlensError(f"--metric {self.metric}: expected one of {', '.join(METRICS)}")
        steps = [*self.candidates, *(c * self.factor for c in self.candidates)]
        if self.window % self.epoch_steps or any(s % self.epoch_steps for s in steps):
            raise DtlensError(
                f"every candidate, its x{self.factor} and the {self.window}-step window must be "
                f"whole epochs of {self.epoch_steps} steps"
            )
        if list(self.candidates) != sorted(set(self.candidates)) or self.window > min(steps):
            raise DtlensError("candidates must increase and be at least one window long")


def error_at(action_error: Sequence[float], step: int, rule: BudgetRule) -> float:
    """The mean action error over the `rule.window` steps that end at `step`, from the per-epoch
    `action_error` (epoch i ends at i x epoch_steps)."""
    last = step // rule.epoch_steps
    first = last - rule.window // rule.epoch_steps
    if last > len(action_error):
        raise DtlensError(f"no action error at step {step}: the run has {len(action_error)} epochs")
    return float(np.mean(action_error[first:last]))


def converged(error: float, error_long: float, tolerance: float) -> bool:
    """Whether `error` (at B) is within `tolerance` (relative) of `error_long` (at 4 x B)."""
    return abs(error - error_long) <= tolerance * abs(error_long)


def choose(action_error: Sequence[float], rule: BudgetRule) -> tuple[int | None, dict[str, dict]]:
    """(B, per candidate {error, error_long, converged}) for the candidates `action_error`
    reaches to 4 x B, in order; B is the first that converged (None: none of those read)."""
    rows: dict[str, dict] = {}
    for b in rule.candidates:
        if b * rule.factor > len(action_error) * rule.epoch_steps:
            break
        e, e_long = error_at(action_error, b, rule), error_at(action_error, b * rule.factor, rule)
        ok = converged(e, e_long, rule.tolerance)
        rows[str(b)] = {"error": e, "error_long": e_long, "converged": ok}
        if ok:
            return b, rows
    return None, rows


def budget_config(task: str, rule: BudgetRule, **changes) -> TrainConfig:
    """The PLAN's budget run of `task`: K=20, random init, seed 666, the paper's optimiser (its
    learning rate unless `changes` set `lr`), a 1,000-step warm-up, no evaluation, only epoch 0
    kept besides the latest, the held-out windows of `mini/{task}-medium-heldout` logged."""
    return TrainConfig(
        init="random",
        dataset=f"mini/{task}-medium",
        heldout=f"mini/{task}-medium-heldout",
        size=MINI,
        context_len=20,
        batch_size=64,
        lr=PAPER_LR,
        weight_decay=1e-4,
        warmup_steps=1000,
        steps_per_epoch=rule.epoch_steps,
        epochs=rule.candidates[0] * rule.factor // rule.epoch_steps,
        grad_clip=0.25,
        seed=666,
        eval_episodes=0,
        keep_epochs=(0,),
    ).replace(**changes)


def train_command(cfg: TrainConfig, out: Path) -> str:
    """The `dtlens train` command of the budget run (the PLAN's, with its epoch length)."""
    args = [
        "--init", cfg.init, "--dataset", cfg.dataset,
        *(["--heldout", cfg.heldout] if cfg.heldout else []),
        "--layers", str(cfg.size.n_layers), "--d-model", str(cfg.size.d_model),
        "--heads", str(cfg.size.n_heads), "--context", str(cfg.context_len),
        "--batch-size", str(cfg.batch_size), "--lr", str(cfg.lr),
        "--weight-decay", str(cfg.weight_decay), "--warmup", str(cfg.warmup_steps),
        "--epochs", str(cfg.epochs), "--steps", str(cfg.steps_per_epoch),
        "--clip", str(cfg.grad_clip), "--seed", str(cfg.seed), "--eval-episodes", "0",
        "--keep-epochs", ",".join(map(str, cfg.keep_epochs or ())),
    ]  # fmt: skip
    return f"dtlens train --out {portable_path(out)} {shlex.join(args)}"


def lr_key(lr: float) -> str:
    """A learning rate as budget.json and the run folders name it (1e-4 -> "0.0001")."""
    return f"{lr:g}"


def budget_run_dir(task: str, lr: float = PAPER_LR) -> Path:
    """The budget run's folder (named for the held-out windows it logs: runs of the PLAN's first
    version, in `{task}-random-s666`, did not; and for its learning rate, unless the paper's)."""
    suffix = "" if lr == PAPER_LR else f"-lr{lr_key(lr)}"
    return cache_root() / "laptop-budget" / f"{task}-random-s666-heldout{suffix}"


def find_budget(
    task: str,
    out: str | Path = BUDGET_FILE,
    run_dir: str | Path | None = None,
    rule: BudgetRule = BudgetRule(),
    log: Log = print,
    lr: float = PAPER_LR,
    **changes,
) -> dict:
    """Train `task`'s budget run at learning rate `lr` candidate by candidate until one converges
    (or the candidates run out), writing `out`'s entry for `task` and `lr` after each; returns
    that entry. `changes` adjust the run's config (tests: tiny batches)."""
    if task not in LAPTOP_TASKS:
        raise DtlensError(f"--task {task}: expected one of {', '.join(LAPTOP_TASKS)}")
    base = budget_config(task, rule, lr=lr, **changes)  # validated before anything is written
    out, path = Path(out), Path(run_dir or budget_run_dir(task, lr))
    path.parent.mkdir(parents=True, exist_ok=True)
    entry: dict = {}
    for b in rule.candidates:
        cfg = base.replace(epochs=b * rule.factor // rule.epoch_steps)
        done = _epochs_done(path)
        if done < cfg.epochs:  # train's bar shows the steps; each epoch is checkpointed
            log(
                f"{task}: candidate {b}: training steps "
                f"{done * rule.epoch_steps}..{b * rule.factor}"
            )
            train(cfg, path, resume=done > 0, progress=True)
        curves = {m: _errors(path, m) for m in METRICS}
        chosen, rows = choose(curves[rule.metric], rule)
        entry = {
            "chosen": chosen,
            "candidates": rows,
            "rule": {
                "candidates": list(rule.candidates),
                "factor": rule.factor,
                "tolerance": rule.tolerance,
                "window": rule.window,
                "epoch_steps": rule.epoch_steps,
                "metric": rule.metric,
            },
            "run": portable_path(path),
            "command": train_command(cfg, path),
            "curves": {m: c.tolist() for m, c in curves.items()},  # per epoch, to plot
        }
        row = rows[str(b)]
        log(
            f"{task}: error at {b} = {row['error']:.5f}, at {b * rule.factor} = "
            f"{row['error_long']:.5f}: {'converged' if row['converged'] else 'not converged'}"
        )
        _save_entry(out, task, lr, entry)
        if chosen is not None:
            log(f"{task}: B = {chosen} steps at lr {lr_key(lr)} -> {out}")
            return entry
    log(f"{task}: no candidate converged at lr {lr_key(lr)} ({out})")
    return entry


def _epochs_done(path: Path) -> int:
    return len(_errors(path, "action_error")) if (path / "metrics.nc").is_file() else 0


def _errors(path: Path, metric: str) -> np.ndarray:
    with open_netcdf(path / "metrics.nc") as ds:
        return ds[metric].values.astype(float)


def _save_entry(out: Path, task: str, lr: float, entry: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    found = load_json(out) if out.is_file() else {}  # tasks and rates run one at a time or apart
    found[task] = found.get(task, {}) | {lr_key(lr): entry}
    save_json(found, out)


def study_lr(budgets: dict) -> str | None:
    """The study's learning rate (its `lr_key`) in a loaded budget.json: the smallest at which
    every laptop task's budget run converged (PLAN.md); None if there is none yet."""
    rates = sorted({lr for entries in budgets.values() for lr in entries}, key=float)
    for lr in rates:
        if all(budgets.get(t, {}).get(lr, {}).get("chosen") for t in LAPTOP_TASKS):
            return lr
    return None


def read_budgets(path: str | Path = BUDGET_FILE) -> tuple[float, dict[str, int]]:
    """(the study's learning rate, the chosen B in steps of every laptop task) from `path`; one
    clear error naming the command that makes what is missing."""
    path = Path(path)
    found = load_json(path) if path.is_file() else {}
    for task in LAPTOP_TASKS:
        if not found.get(task):
            raise DtlensError(
                f"{path}: {task} has no budget; run `{COMMAND} --task {task} --out {path}` first"
            )
    lr = study_lr(found)
    if lr is None:
        tried = "; ".join(
            f"{t}: " + ", ".join(f"lr {k} {e['chosen'] or 'none'}" for k, e in found[t].items())
            for t in LAPTOP_TASKS
        )
        raise DtlensError(
            f"{path}: no learning rate has a converged budget on every task ({tried}); "
            f"run `{COMMAND} --task TASK --lr LR --out {path}` (results/laptop/PLAN.md)"
        )
    return float(lr), {t: int(found[t][lr]["chosen"]) for t in LAPTOP_TASKS}
