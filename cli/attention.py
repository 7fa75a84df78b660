"""`dtlens attention-distance RUN`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cli.common import console, parse_int_list, user_errors
from cli.main import app


@app.command("attention-distance")
@user_errors
def attention_distance_cmd(
    run: Path = typer.Argument(..., help="A run folder."),
    epochs: str = typer.Option(None, help="Epochs to compare (default: every checkpoint)."),
    context: int = typer.Option(20, help="Probe windows of K steps (paper: 20, on K=1 runs)."),
    samples: int = typer.Option(None, help="Probe windows (default: the run's probe size)."),
    paper_variant: bool = typer.Option(False, help="Also the released code's formula."),
) -> None:
    """Mean attention distance per block and head across epochs, and its change."""
    from dtlens.diagnostics.attention_run import attention_distances, plot_attention
    from dtlens.io import save_netcdf
    from dtlens.train.run import Run

    r = Run(run)
    ds = attention_distances(
        r, parse_int_list(epochs) if epochs else None, context, samples, paper_variant
    )
    nc = save_netcdf(ds, r.subdir("diagnostics") / "attention.nc")
    png = plot_attention(ds, r.subdir("figures") / "attention.png")
    table = Table("block", *[f"epoch {int(e)}" for e in ds.epoch.values], "|change| at last")
    for layer in ds.layer.values:
        d = ds.distance_timestep.sel(layer=layer).mean("head").values
        last = float(ds.change_timestep.sel(layer=layer).isel(epoch=-1).mean())
        table.add_row(str(layer), *[f"{x:.3f}" for x in d], f"{last:.3f}")
    console.print(f"attention distance (timesteps, mean over heads), probed with K={context}")
    console.print(table)
    console.print(f"wrote {nc}, {png}")
