"""`dtlens no-context` and `dtlens block-swap`: the paper's training studies.

Each trains its runs into OUT/runs (finished runs are reused) and writes OUT/diagnostics/NAME.nc
and OUT/figures/NAME.png. Training options come from `TrainConfig`, as for `dtlens train`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import D_MODEL, HEADS, LAYERS, console, parse_int_list, parse_names, user_errors
from cli.config_options import config_options
from cli.render import show
from dtlens.model.config import BackboneConfig
from dtlens.train.config import TrainConfig

app = typer.Typer()

STUDY_OPTIONS = [
    "dataset",
    "epochs",
    "steps_per_epoch",
    "batch_size",
    "warmup_steps",
    "lr",
    "seed",
    "eval_episodes",
    "eval_every",
    "eval_max_steps",
    "device",
    "precision",
    "deterministic",
]
OUT = typer.Option(..., "--out", help="Study folder (runs/, diagnostics/, figures/).")
WORKERS = typer.Option(1, help="Parallel runs on a dask LocalCluster (1 = in process).")
SCHEDULER = typer.Option(None, help="Address of an existing dask scheduler.")


def base_config(config: dict, layers: int, d_model: int, heads: int) -> TrainConfig:
    return TrainConfig(**config, size=BackboneConfig.sized(layers, d_model, heads))


def report_outcome(outcome) -> None:
    colour = {"failed": "red", "trained": "green", "done": "dim"}[outcome.status]
    extra = f": {outcome.error.strip().splitlines()[-1]}" if outcome.error else ""
    console.print(f"[{colour}]{outcome.status}[/] {outcome.name} ({outcome.seconds:.0f} s){extra}")


@app.command("no-context")
@user_errors
@config_options(TrainConfig, STUDY_OPTIONS)
def no_context(
    config: dict,
    out: Path = OUT,
    inits: str = typer.Option("random,gpt2", help="Comma-separated inits to compare."),
    contexts: str = typer.Option("1,20", help="Context lengths K (1 = no context)."),
    seeds: str = typer.Option(None, help="Comma-separated seeds (default: --seed)."),
    layers: int = LAYERS,
    d_model: int = D_MODEL,
    heads: int = HEADS,
    workers: int = WORKERS,
    scheduler: str = SCHEDULER,
) -> None:
    """Train each init with K=1 and K=20 (reusing finished runs) and compare convergence."""
    from dtlens.diagnostics.analyses.no_context import summary
    from dtlens.experiments.studies import run_no_context

    ds, _ = run_no_context(
        base_config(config, layers, d_model, heads),
        parse_names(inits),
        out,
        parse_int_list(contexts),
        workers,
        scheduler,
        on_done=report_outcome,
        seeds=parse_int_list(seeds) if seeds else None,
    )
    show(summary(ds))
    console.print(f"wrote {out / 'diagnostics' / 'no_context.nc'}, {out / 'figures'}")


@app.command("block-swap")
@user_errors
@config_options(TrainConfig, STUDY_OPTIONS)
def block_swap(
    config: dict,
    out: Path = OUT,
    donor: str = typer.Option("gpt2", help="Init whose blocks are donated."),
    blocks: str = typer.Option("all", help="Block indices to replace, or all."),
    context: int = typer.Option(1, help="Context length K of every run (paper: 1)."),
    layers: int = LAYERS,
    d_model: int = D_MODEL,
    heads: int = HEADS,
    workers: int = WORKERS,
    scheduler: str = SCHEDULER,
) -> None:
    """A random-init DT with one donor block, for every block, next to all-random and all-donor."""
    from dtlens.diagnostics.analyses.block_swap import summary
    from dtlens.experiments.studies import run_block_swap

    chosen = None if blocks == "all" else parse_int_list(blocks) if blocks.strip() else []
    ds, _ = run_block_swap(
        base_config(config, layers, d_model, heads),
        donor,
        out,
        chosen,
        context,
        workers,
        scheduler,
        on_done=report_outcome,
    )
    show(summary(ds))
    console.print(f"wrote {out / 'diagnostics' / 'block_swap.nc'}, {out / 'figures'}")
