"""`dtlens gradients RUN`: per-sample gradient norms, clipping, per-tensor shares, confusion.

Reads RUN/checkpoints; writes RUN/diagnostics/gradients.nc and RUN/figures/gradients.png.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import DEVICE, flag, user_errors
from cli.main import app
from cli.render import run_diagnostic


@app.command("gradients")
@user_errors
def gradients_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    epoch: int = typer.Option(1, help="Checkpoint epoch (-1 = last); the paper: 1."),
    samples: int = typer.Option(100, help="Probe samples for the norms."),
    confusion_samples: int = typer.Option(50, help="Samples for gradient confusion."),
    clip: float = typer.Option(0.25, help="Per-sample clip value (as clip_grad_norm_), > 0."),
    eval_mode: bool = flag(
        False, "--eval-mode", help="Dropout off (the paper: train mode, dropout on)."
    ),
    seed: int = typer.Option(0, help="Seed of the dropout masks."),
    chunk_size: int = typer.Option(
        16, help="Samples per vmapped pass, at most (fewer where activations would pass 512 MiB)."
    ),
    paper_variant: bool = flag(
        False,
        "--paper-variant",
        help="Also the released code's norm, confusion and share (block tensors only).",
    ),
    device: str = DEVICE,
) -> None:
    """Per-sample gradient norms before/after clipping, top tensors, gradient confusion."""
    from dtlens.train.run import Run

    run_diagnostic(
        "gradients",
        Run(run, device),
        epoch=epoch,
        samples=samples,
        confusion_samples=confusion_samples,
        clip=clip,
        train_mode=not eval_mode,
        seed=seed,
        chunk_size=chunk_size,
        paper_variant=paper_variant,
    )
