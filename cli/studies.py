"""`dtlens no-context` and `dtlens block-swap`: the paper's training studies."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cli.common import console, parse_int_list, user_errors
from cli.main import app


def base_config(
    dataset,
    epochs,
    steps,
    batch_size,
    warmup,
    lr,
    seed,
    eval_episodes,
    eval_max_steps,
    layers,
    d_model,
    heads,
):
    from dtlens.model.config import BackboneConfig
    from dtlens.train.config import TrainConfig

    return TrainConfig(
        dataset=dataset,
        epochs=epochs,
        steps_per_epoch=steps,
        batch_size=batch_size,
        warmup_steps=warmup,
        lr=lr,
        seed=seed,
        eval_episodes=eval_episodes,
        eval_max_steps=eval_max_steps,
        size=BackboneConfig(n_layers=layers, d_model=d_model, n_heads=heads, d_mlp=4 * d_model),
    )


def report_outcome(outcome) -> None:
    colour = {"failed": "red", "trained": "green", "done": "dim"}[outcome.status]
    extra = f": {outcome.error.strip().splitlines()[-1]}" if outcome.error else ""
    console.print(f"[{colour}]{outcome.status}[/] {outcome.name} ({outcome.seconds:.0f} s){extra}")


COMMON = dict(
    dataset=typer.Option("mini/hopper-medium", help="Embedded id, D4RL .hdf5, or Minari id."),
    out=typer.Option(..., "--out", help="Study folder (runs/, diagnostics/, figures/)."),
    epochs=typer.Option(40),
    steps=typer.Option(2500, "--steps", help="Steps per epoch."),
    batch_size=typer.Option(64),
    warmup=typer.Option(5000),
    lr=typer.Option(1e-4),
    seed=typer.Option(666),
    eval_episodes=typer.Option(10),
    eval_max_steps=typer.Option(1000),
    layers=typer.Option(3, help="Random init: blocks."),
    d_model=typer.Option(128, help="Random init: width."),
    heads=typer.Option(4, help="Random init: heads."),
    workers=typer.Option(1, help="Parallel runs on a dask LocalCluster (1 = in process)."),
    scheduler=typer.Option(None, help="Address of an existing dask scheduler."),
)


@app.command("no-context")
@user_errors
def no_context(
    inits: str = typer.Option("random,gpt2", help="Comma-separated inits to compare."),
    contexts: str = typer.Option("1,20", help="Context lengths K (1 = no context)."),
    dataset: str = COMMON["dataset"],
    out: Path = COMMON["out"],
    epochs: int = COMMON["epochs"],
    steps: int = COMMON["steps"],
    batch_size: int = COMMON["batch_size"],
    warmup: int = COMMON["warmup"],
    lr: float = COMMON["lr"],
    seed: int = COMMON["seed"],
    eval_episodes: int = COMMON["eval_episodes"],
    eval_max_steps: int = COMMON["eval_max_steps"],
    layers: int = COMMON["layers"],
    d_model: int = COMMON["d_model"],
    heads: int = COMMON["heads"],
    workers: int = COMMON["workers"],
    scheduler: str = COMMON["scheduler"],
) -> None:
    """Train each init with K=1 and K=20 (reusing finished runs) and compare convergence."""
    from dtlens.experiments.studies import run_no_context

    base = base_config(
        dataset,
        epochs,
        steps,
        batch_size,
        warmup,
        lr,
        seed,
        eval_episodes,
        eval_max_steps,
        layers,
        d_model,
        heads,
    )
    names = [i.strip() for i in inits.split(",") if i.strip()]
    ds, _ = run_no_context(
        base, names, out, parse_int_list(contexts), workers, scheduler, on_done=report_outcome
    )
    table = Table("init", "K", "final action MSE", "final score", "steps to 90% of the drop")
    for r in ds.run.values:
        x = ds.sel(run=r)
        table.add_row(
            str(x.init.values),
            str(int(x.context)),
            f"{float(x.final_action_error):.4f}",
            f"{float(x.get('final_score_mean', float('nan'))):.1f}",
            str(int(x.steps_to_fraction)),
        )
    console.print(table)
    console.print(
        f"wrote {out / 'diagnostics' / 'no_context.nc'}, {out / 'figures' / 'no_context.png'}"
    )


@app.command("block-swap")
@user_errors
def block_swap(
    donor: str = typer.Option("gpt2", help="Init whose blocks are donated."),
    blocks: str = typer.Option("all", help="Block indices to replace, or all."),
    context: int = typer.Option(1, help="Context length K of every run (paper: 1)."),
    dataset: str = COMMON["dataset"],
    out: Path = COMMON["out"],
    epochs: int = COMMON["epochs"],
    steps: int = COMMON["steps"],
    batch_size: int = COMMON["batch_size"],
    warmup: int = COMMON["warmup"],
    lr: float = COMMON["lr"],
    seed: int = COMMON["seed"],
    eval_episodes: int = COMMON["eval_episodes"],
    eval_max_steps: int = COMMON["eval_max_steps"],
    layers: int = COMMON["layers"],
    d_model: int = COMMON["d_model"],
    heads: int = COMMON["heads"],
    workers: int = COMMON["workers"],
    scheduler: str = COMMON["scheduler"],
) -> None:
    """A random-init DT with one donor block, for every block, next to all-random and all-donor."""
    from dtlens.experiments.studies import run_block_swap

    base = base_config(
        dataset,
        epochs,
        steps,
        batch_size,
        warmup,
        lr,
        seed,
        eval_episodes,
        eval_max_steps,
        layers,
        d_model,
        heads,
    )
    chosen = None if blocks == "all" else parse_int_list(blocks) if blocks.strip() else []
    ds, _ = run_block_swap(
        base, donor, out, chosen, context, workers, scheduler, on_done=report_outcome
    )
    table = Table("variant", "AUC action MSE (EMA)", "AUC return (EMA)")
    for v in ds.variant.values:
        ret = ds.get("auc_return_mean")
        table.add_row(
            str(v),
            f"{float(ds.auc_action_error.sel(variant=v)):.4f}",
            "-" if ret is None else f"{float(ret.sel(variant=v)):.1f}",
        )
    console.print(table)
    console.print(
        f"wrote {out / 'diagnostics' / 'block_swap.nc'}, {out / 'figures' / 'block_swap.png'}"
    )
