"""`dtlens cka` and `dtlens weight-change`: the paper's representation and weight analyses.

Both read RUN/checkpoints (CKA also reuses or makes RUN/captures) and write
RUN/diagnostics/NAME.nc and RUN/figures/NAME.png.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import DEVICE, flag, parse_int_list, user_errors
from cli.main import app
from cli.render import run_diagnostic


@app.command("cka")
@user_errors
def cka_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    run_b: Path = typer.Argument(None, help="A second run to compare with (default: RUN)."),
    epochs: str = typer.Option(
        "0,-1", help="Epoch of RUN and of RUN_B (or RUN again); one value: both (-1 = last)."
    ),
    kernel: str = typer.Option("linear", help="linear or rbf."),
    debiased: bool = flag(True, "--debiased/--biased", help="Unbiased HSIC (the paper)."),
    embed: bool = flag(True, help="Include the embedding output as layer 'embed'."),
    paper_variant: bool = flag(
        False,
        "--paper-variant",
        help="Also the released code's [:, :, idx] indexing, and its 8 sites per block.",
    ),
    device: str = DEVICE,
) -> None:
    """Layer x layer CKA (epoch 0 vs last by default); prints layer i vs layer i.

    Writes RUN/diagnostics/cka.nc and RUN/figures/cka.png (cka-vs-RUN_B.* for two runs)."""
    from dtlens.train.run import Run

    a = Run(run, device)
    b = a if run_b is None else Run(run_b, device)
    two = b.path.resolve() != a.path.resolve()
    run_diagnostic(
        "cka",
        a,
        stem=f"cka-vs-{b.name}" if two else None,
        epochs=parse_int_list(epochs),
        other=b,
        kernel=kernel,
        debiased=debiased,
        embed=embed,
        paper_variant=paper_variant,
    )


@app.command("weight-change")
@user_errors
def weight_change_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    epochs: str = typer.Option("0,-1", help="Two epochs, before and after (-1 = last)."),
    device: str = DEVICE,
) -> None:
    """Per-tensor L2 distance, relative change and cosine between two epochs' weights.

    Writes RUN/diagnostics/weights.nc and RUN/figures/weights.png."""
    from dtlens.train.run import Run

    run_diagnostic("weights", Run(run, device), epochs=parse_int_list(epochs))
