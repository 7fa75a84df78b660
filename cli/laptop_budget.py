"""`dtlens laptop-budget`: the laptop study's fine-tuning budget B of a task (PLAN.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import console, parse_int_list, user_errors
from dtlens.train.config import TrainConfig

app = typer.Typer()


@app.command("laptop-budget")
@user_errors
def laptop_budget_cmd(
    task: list[str] = typer.Option(
        ..., "--task", help="hopper, halfcheetah or walker2d (repeat for several, run in turn)."
    ),
    out: Path = typer.Option(
        Path("results/laptop/budget.json"), "--out", help="budget.json to write (merged)."
    ),
    run_dir: Path = typer.Option(
        None, "--run-dir", help="The budget run's folder (default $DTLENS_CACHE/laptop-budget/)."
    ),
    metric: str = typer.Option(
        "action_error",
        "--metric",
        help="The per-epoch error the rule reads: action_error (the training batches', the "
        "PLAN's) or heldout_action_error (the held-out windows' the run also logs).",
    ),
    lr: float = typer.Option(
        TrainConfig.lr,
        "--lr",
        help="Learning rate of the budget run (the paper's 1e-4; PLAN.md says when another is "
        "tried). Each rate has its own run folder and entry in OUT.",
    ),
    candidates: str = typer.Option(
        None, help="Candidate budgets B in steps, comma-separated (default 2500,5000,10000,20000)."
    ),
    epoch_steps: int = typer.Option(None, hidden=True, help="Testing: steps per epoch."),
    window: int = typer.Option(None, hidden=True, help="Testing: steps averaged."),
    batch_size: int = typer.Option(None, hidden=True, help="Testing: windows per step."),
) -> None:
    """Train the K=20 random-init run of seed 666 to 4 x B, candidate by candidate (2,500, 5,000,
    10,000, 20,000 steps; resumable: a rerun continues), and write the smallest B whose final
    action error is within 5% of the one at 4 x B to OUT, per learning rate, and every budget
    run's curves beside it (OUT with .png). `reproduce --preset laptop` reads OUT: the study's
    rate is the smallest at which every task converged."""
    import dataclasses

    from dtlens.experiments.laptop_budget import BudgetRule, find_budget
    from dtlens.io import load_json
    from dtlens.report.convergence import plot_budgets

    tiny = {
        "candidates": candidates and tuple(parse_int_list(candidates)),
        "epoch_steps": epoch_steps,
        "window": window,
    }
    rule = dataclasses.replace(BudgetRule(metric=metric), **{k: v for k, v in tiny.items() if v})
    changes = {"batch_size": batch_size} if batch_size else {}
    for name in task:
        path = run_dir / name if run_dir and len(task) > 1 else run_dir
        entry = find_budget(name, out, path, rule, log=console.print, lr=lr, **changes)
        console.print(f"[bold]{name}[/]: B = {entry['chosen']} at lr {lr:g} ({out})")
    console.print(f"curves: {plot_budgets(load_json(out), out.with_suffix('.png'))}")
