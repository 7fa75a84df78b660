"""Presets of the reproduction: `mini` (offline, CPU, minutes; Hopper), `mini-tasks` (`mini` on
the three tasks), `laptop` (results/laptop/PLAN.md: runs that converge, the controls; hours on
CPU) and `paper` (PAPER.md, a GPU)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from dtlens.errors import DtlensError
from dtlens.experiments.laptop_budget import (
    BUDGET_FILE,
    LAPTOP_TASKS,
    PAPER_LR,
    BudgetRule,
    read_budgets,
)
from dtlens.experiments.laptop_cuts import CUT_TASKS, choose_cuts
from dtlens.experiments.preset import CONTROLS, Preset
from dtlens.model.config import MINI, BackboneConfig
from dtlens.train.config import TrainConfig
from dtlens.train.device import check_device

#: The mini budget (see `mini`): epochs x steps per epoch at batch 64, evaluated every N epochs.
MINI_EPOCHS, MINI_STEPS, MINI_EVAL_EVERY = 5, 30, 5
GPT2_SIZE = BackboneConfig(n_layers=12, d_model=768, n_heads=12, d_mlp=3072, act_fn="gelu_new")
PAPER_ENVS = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5", "walker2d": "Walker2d-v5"}


def mini() -> Preset:
    """The embedded default: a Hopper-v5 dataset shipped with dtlens, 3-block d=128 backbones
    (random, language-pretrained `text`, image-pretrained `image`) and the controls of what
    language pretraining gives (`CONTROLS`), three seeds per compared condition, a short
    fine-tuning budget (150 steps: a smoke of the pipeline, not a converged study). The learning
    rate is 10x the paper's (1e-3) with a short warm-up, since the budget is ~1% of the paper's
    steps; evaluation (10 episodes per run) runs after the last epoch only. `make demo` leaves
    the controls out (`--controls none`): with them the study takes 18 min on 2 quiet cores."""
    epochs = MINI_EPOCHS
    return Preset(
        name="mini",
        datasets={"hopper": "mini/hopper-medium"},
        env_ids={"hopper": None},
        random="random",
        language="text",
        image="image",
        extra={c: c for c in CONTROLS},
        train=TrainConfig(
            epochs=epochs,
            steps_per_epoch=MINI_STEPS,
            warmup_steps=20,
            lr=1e-3,
            eval_episodes=10,
            eval_every=MINI_EVAL_EVERY,
            eval_max_steps=1000,
            size=MINI,
            seed=666,
        ),
        seeds=(666, 42, 7),
        block_swap_epochs={"hopper": epochs},
        block_swap_size=MINI,
        attention_epochs=(0, 1, 2, 4, epochs),
        gradient_epoch=1,
        mi_seeds=1,  # the default estimator is deterministic up to tie-breaking
    )


def mini_tasks() -> Preset:
    """`mini` on the paper's three tasks: the shipped Hopper, HalfCheetah and Walker2d medium
    datasets (`mini/<task>-medium`), with mini's backbones, budget and seeds."""
    return dataclasses.replace(
        mini(),
        name="mini-tasks",
        datasets={task: f"mini/{task}-medium" for task in PAPER_ENVS},
        env_ids=dict.fromkeys(PAPER_ENVS),
        block_swap_epochs=dict.fromkeys(PAPER_ENVS, MINI_EPOCHS),
    )


def laptop_train_config(epochs: int, lr: float = PAPER_LR) -> TrainConfig:
    """The laptop study's fine-tuning (results/laptop/PLAN.md): the paper's optimiser (AdamW,
    weight decay 1e-4, clip 0.25, batch 64, a 1,000-step warm-up then constant) at learning rate
    `lr` (the paper's 1e-4 unless the budget rule chose another), mini's model size, `epochs`
    epochs of 500 steps, 10 evaluation episodes after the last epoch only."""
    return TrainConfig(
        epochs=epochs,
        steps_per_epoch=BudgetRule().epoch_steps,
        warmup_steps=1000,
        lr=lr,
        weight_decay=1e-4,
        grad_clip=0.25,
        batch_size=64,
        eval_episodes=10,
        eval_every=epochs,  # after the last epoch only
        eval_max_steps=1000,
        size=MINI,
        seed=666,
    )


def laptop(budget_file: str | Path = BUDGET_FILE, tasks: Sequence[str] | None = None) -> Preset:
    """results/laptop/PLAN.md: `mini`'s backbones and model size on the three tasks' shipped
    medium datasets, `laptop_train_config` at the study's learning rate, each task's budget B
    from `dtlens laptop-budget` (`budget_file`, which needs every task's budget to fix the
    learning rate), every run's held-out action error on `mini/<task>-medium-heldout` logged,
    the controls synthetic, shuffled:text and matched:text as K=20 roles, seeds
    666, 42, 7, block replacement on every block, and language vs random with `--dt-init gpt2`
    on Hopper. When `tasks` include HalfCheetah or Walker2d, the PLAN's rule cuts conditions
    there (`dtlens.experiments.laptop_cuts.choose_cuts`, decided on the whole study)."""
    chosen = [t for t in tasks or LAPTOP_TASKS if t in LAPTOP_TASKS]  # narrow() names others
    lr, budgets = read_budgets(budget_file)
    preset = _laptop({t: budgets[t] for t in chosen}, lr)
    if not set(chosen) & set(CUT_TASKS):
        return preset  # Hopper keeps every condition
    cuts, note = choose_cuts(_laptop(budgets, lr))
    return dataclasses.replace(preset, cuts=cuts, cut_note=note)


def _laptop(budgets: dict[str, int], lr: float) -> Preset:
    """The laptop preset, uncut, with the budget B (steps) of each task in `budgets`, at
    learning rate `lr`."""
    steps = BudgetRule().epoch_steps
    epochs = {t: b // steps for t, b in budgets.items()}
    return Preset(
        name="laptop",
        datasets={t: f"mini/{t}-medium" for t in LAPTOP_TASKS},
        env_ids=dict.fromkeys(LAPTOP_TASKS),
        heldouts={t: f"mini/{t}-medium-heldout" for t in LAPTOP_TASKS},
        random="random",
        language="text",
        image="image",
        extra={c: c for c in CONTROLS},
        train=laptop_train_config(max(epochs.values(), default=1), lr),
        seeds=(666, 42, 7),
        task_epochs=epochs,
        block_swap_epochs=epochs,
        block_swap_size=MINI,
        attention_epochs=(0, 1, 2, 4),  # steps 0, 500, 1,000, 2,000: within every candidate B
        gradient_epoch=1,
        mi_seeds=1,
        gpt2_init={"hopper": ("random", "language")},
    )


def paper(gpt2: str | Path, imagegpt: str | Path, d4rl_dir: str | Path) -> Preset:
    """PAPER.md: GPT-2, ImageGPT and the paper's 1-head ReLU random init on D4RL medium-v2,
    40 epochs x 2500 steps, seeds 666 and 42. D4RL's MuJoCo 2.1 environments cannot be built
    here; evaluation uses gymnasium's v5 environments of the same tasks."""
    d4rl_dir = Path(d4rl_dir)
    datasets = {env: str(d4rl_dir / f"{env}-medium-v2.hdf5") for env in PAPER_ENVS}
    return Preset(
        name="paper",
        datasets=datasets,
        env_ids=dict(PAPER_ENVS),
        random="random-paper",
        language=str(gpt2),
        image=str(imagegpt),
        train=TrainConfig(),
        seeds=(666, 42),
        block_swap_epochs={"hopper": 10, "halfcheetah": 5, "walker2d": 5},
        block_swap_size=GPT2_SIZE,
        attention_epochs=(0, 1, 4, 10, 40),
    )


def check_paper_inputs(
    gpt2: str | None,
    imagegpt: str | None,
    d4rl_dir: str | None,
    tasks: Sequence[str] = tuple(PAPER_ENVS),
) -> None:
    """Every input of the paper preset on `tasks`, checked before any run starts."""
    missing = []
    for flag, value in (("--gpt2", gpt2), ("--imagegpt", imagegpt), ("--d4rl-dir", d4rl_dir)):
        if not value:
            missing.append(f"{flag} is required")
    if missing:
        raise DtlensError("the paper preset needs its inputs: " + "; ".join(missing))
    for flag, path in (("--gpt2", gpt2), ("--imagegpt", imagegpt)):
        if not (Path(path) / "config.json").is_file():
            raise DtlensError(f"{flag} {path}: no HF model directory (config.json missing)")
    for env in tasks:
        f = Path(d4rl_dir) / f"{env}-medium-v2.hdf5"
        if not f.is_file():
            raise DtlensError(f"--d4rl-dir {d4rl_dir}: missing {f.name}")


PRESETS = ("mini", "mini-tasks", "laptop", "paper")


def narrow(
    preset: Preset,
    tasks: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    controls: Sequence[str] | None = None,
) -> Preset:
    """`preset` on the given tasks (dataset labels), seeds and controls (its roles beyond random,
    language and image; empty: none) only (None: all of them)."""
    datasets = preset.datasets
    if tasks is not None:
        unknown = [t for t in tasks if t not in datasets]
        if unknown or not tasks:
            raise DtlensError(
                f"--tasks {','.join(tasks)}: the {preset.name} preset's tasks are "
                f"{', '.join(datasets)}"
            )
        datasets = {t: datasets[t] for t in dict.fromkeys(tasks)}
    if seeds is not None and (not seeds or any(s < 0 for s in seeds)):
        raise DtlensError(f"--seeds must be seeds >= 0, got {list(seeds)}")
    extra = preset.extra
    if controls is not None:
        unknown = [c for c in controls if c not in extra]
        if unknown:
            raise DtlensError(
                f"--controls {','.join(controls)}: the {preset.name} preset's controls are "
                f"{', '.join(extra) or '(none)'}"
            )
        extra = {c: extra[c] for c in dict.fromkeys(controls)}
    return dataclasses.replace(
        preset,
        datasets=datasets,
        extra=extra,
        cuts={
            t: tuple(c for c in cut if c not in preset.extra or c in extra)
            for t, cut in preset.cuts.items()
        },  # fmt: skip
        seeds=preset.seeds if seeds is None else tuple(dict.fromkeys(seeds)),
    )


def get(
    name: str,
    gpt2: str | None = None,
    imagegpt: str | None = None,
    d4rl_dir: str | None = None,
    device: str = "auto",
    tasks: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    controls: Sequence[str] | None = None,
    precision: str = "fp32",
    deterministic: bool = False,
    budget_file: str | Path = BUDGET_FILE,
) -> Preset:
    """The preset `name` on `tasks`, `seeds` and `controls` (None: its own), its inputs checked,
    its runs on `device` (checked here: one clear line when it is missing) in `precision`."""
    if name == "mini":
        preset = mini()
    elif name == "mini-tasks":
        preset = mini_tasks()
    elif name == "laptop":
        preset = laptop(budget_file, tasks)
    elif name == "paper":
        chosen = [t for t in tasks or PAPER_ENVS if t in PAPER_ENVS]  # narrow() names others
        check_paper_inputs(gpt2, imagegpt, d4rl_dir, chosen)
        preset = paper(gpt2, imagegpt, d4rl_dir)
    else:
        raise DtlensError(f"unknown preset {name!r}: expected one of {', '.join(PRESETS)}")
    train = preset.train.replace(
        device=check_device(device), precision=precision, deterministic=deterministic
    )
    return narrow(dataclasses.replace(preset, train=train), tasks, seeds, controls)
