"""`dtlens gradients RUN`: per-sample gradient norms, clipping, per-tensor shares, confusion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from cli.common import console, user_errors
from cli.main import app


@app.command("gradients")
@user_errors
def gradients_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    epoch: int = typer.Option(1, help="Checkpoint epoch (-1 = last); the paper: 1."),
    samples: int = typer.Option(100, help="Probe samples for the norms."),
    confusion_samples: int = typer.Option(50, help="Samples for gradient confusion."),
    clip: float = typer.Option(0.25, help="Per-sample clip value (as clip_grad_norm_)."),
    eval_mode: bool = typer.Option(
        False, "--eval-mode", help="Dropout off (the paper: train mode, dropout on)."
    ),
    seed: int = typer.Option(0, help="Seed of the dropout masks."),
    chunk_size: int = typer.Option(16, help="Samples per vmapped pass."),
) -> None:
    """Per-sample gradient norms before/after clipping, top tensors, gradient confusion."""
    from dtlens.diagnostics.gradient_run import analyse_gradients, top_tensors
    from dtlens.train.run import Run

    r = Run(run)
    ds = analyse_gradients(
        r, epoch, samples, confusion_samples, clip, not eval_mode, seed, chunk_size
    )
    table = Table(
        "per-sample norm",
        "min",
        "median",
        "mean",
        "max",
        title=f"gradients of {ds.attrs['run']} epoch {ds.attrs['epoch']} "
        f"({ds.sizes['sample']} samples, {'eval' if eval_mode else 'train'} mode)",
    )
    for var, label in (("norm", "before clipping"), ("norm_clipped", f"after clipping {clip}")):
        v = ds[var].values
        table.add_row(label, *(f"{f(v):.4g}" for f in (np.min, np.median, np.mean, np.max)))
    console.print(table)
    clipped = float((ds["clip_coef"].values < 1).mean())
    console.print(f"clipped samples: {clipped:.0%}")
    console.print(
        f"gradient confusion (min pairwise cosine, {ds.attrs['n_confusion']} samples): "
        f"{float(ds['confusion']):.4f}; median cosine {float(ds['cosine'].median()):.4f}"
    )
    top = top_tensors(ds, 5)
    shares = Table("tensor", "mean share of squared norm", title="top 5 tensors")
    for name, share in zip(top.tensor.values, top["share_mean"].values, strict=True):
        shares.add_row(str(name), f"{share:.1%}")
    console.print(shares)
    console.print(
        f"wrote {r.path / 'diagnostics' / 'gradients.nc'}, {r.path / 'figures' / 'gradients.png'}",
        highlight=False,
    )
