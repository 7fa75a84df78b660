"""`dtlens attention-distance RUN`.

Reads RUN/checkpoints; writes RUN/diagnostics/attention.nc and RUN/figures/attention.png.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import DEVICE, flag, parse_int_list, user_errors
from cli.main import app
from cli.render import run_diagnostic


@app.command("attention-distance")
@user_errors
def attention_distance_cmd(
    run: Path = typer.Argument(..., help="A run folder."),
    epochs: str = typer.Option(None, help="Epochs to compare (default: every checkpoint)."),
    context: int = typer.Option(20, help="Probe windows of K steps (paper: 20, on K=1 runs)."),
    samples: int = typer.Option(None, help="Probe windows (default: the run's probe size)."),
    paper_variant: bool = flag(False, help="Also the released code's formula."),
    device: str = DEVICE,
) -> None:
    """Mean attention distance per block and head across epochs, and its change."""
    from dtlens.train.run import Run

    run_diagnostic(
        "attention",
        Run(run, device),
        epochs=parse_int_list(epochs) if epochs else None,
        context_len=context,
        samples=samples,
        paper_variant=paper_variant,
    )
