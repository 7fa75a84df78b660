"""Budgets: how much of a preset's plan runs, defined once for every preset.

`full` is the preset as written. `smoke` keeps the plan (every task, role, init and model size,
K=20 and K=1, the probe seed and MI estimator) and shrinks what costs time: one epoch of a few
small steps, one short evaluation episode, a small probe, few MI and gradient samples, and block
swap on the first and last block only. It checks that a whole reproduction runs end to end (the
`paper` preset at the real sizes takes minutes on CPU), not any finding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dtlens.errors import DtlensError

if TYPE_CHECKING:  # the CLI reads BUDGETS for its help without loading the presets (torch)
    from dtlens.experiments.presets import Preset


@dataclass(frozen=True)
class Budget:
    """Caps on a preset's plan; None keeps the preset's own value."""

    name: str
    description: str
    epochs: int | None = None
    steps_per_epoch: int | None = None
    batch_size: int | None = None
    eval_episodes: int | None = None
    eval_max_steps: int | None = None
    probe_size: int | None = None
    mi_samples: int | None = None
    mi_seeds: int | None = None
    gradient_samples: int | None = None
    #: Blocks that receive a donor block, counted from the end when negative (None: all).
    block_swap_blocks: tuple[int, ...] | None = None


BUDGETS = {
    "full": Budget("full", "the preset's own epochs, steps, evaluation and probe sizes"),
    "smoke": Budget(
        "smoke",
        "every run of the plan for 1 epoch x 3 steps of batch 4, 1 evaluation episode of 10 "
        "steps, 8 probe windows, MI on 32 windows, gradients on 2, block swap on the first "
        "and last block",
        epochs=1,
        steps_per_epoch=3,
        batch_size=4,
        eval_episodes=1,
        eval_max_steps=10,
        probe_size=8,
        mi_samples=32,
        mi_seeds=1,
        gradient_samples=2,
        block_swap_blocks=(0, -1),
    ),
}
DEFAULT_BUDGET = "full"


def get_budget(name: str) -> Budget:
    if name not in BUDGETS:
        raise DtlensError(f"unknown budget {name!r}: expected one of {', '.join(BUDGETS)}")
    return BUDGETS[name]


def apply_budget(preset: Preset, budget: Budget) -> Preset:
    """`preset` within `budget`: its caps applied, the epochs diagnostics read clipped to the
    epochs that exist (the last one always among them)."""

    def cap(value, limit):
        return value if limit is None else min(value, limit)

    train = preset.train
    changes = {
        k: cap(getattr(train, k), getattr(budget, k))
        for k in ("epochs", "steps_per_epoch", "batch_size", "eval_episodes", "eval_max_steps")
    }
    train = train.replace(**changes, eval_every=cap(train.eval_every, changes["epochs"]))
    last = train.epochs
    blocks = preset.block_swap_blocks
    if budget.block_swap_blocks is not None:
        n = preset.block_swap_size.n_layers
        blocks = tuple(dict.fromkeys(b % n for b in budget.block_swap_blocks))
    gradient_samples = cap(preset.gradient_samples, budget.gradient_samples)
    return dataclasses.replace(
        preset,
        train=train,
        block_swap_epochs={k: cap(v, last) for k, v in preset.block_swap_epochs.items()},
        task_epochs={k: cap(v, last) for k, v in preset.task_epochs.items()},
        block_swap_blocks=blocks,
        attention_epochs=tuple(sorted({e for e in preset.attention_epochs if e < last} | {last})),
        gradient_epoch=cap(preset.gradient_epoch, last),
        probe_size=cap(preset.probe_size, budget.probe_size),
        mi_samples=cap(preset.mi_samples, budget.mi_samples),
        mi_seeds=cap(preset.mi_seeds, budget.mi_seeds),
        gradient_samples=gradient_samples,
        gradient_confusion_samples=min(preset.gradient_confusion_samples, gradient_samples),
    )
