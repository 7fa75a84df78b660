"""`dtlens cka` and `dtlens weight-change`: the paper's representation and weight analyses."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cli.common import console, parse_int_list, user_errors
from cli.main import app


@app.command("cka")
@user_errors
def cka_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    run_b: Path = typer.Argument(None, help="A second run to compare with (default: RUN)."),
    epochs: str = typer.Option(
        "0,-1", help="Epoch of RUN and of RUN_B (or RUN again); one value: both (-1 = last)."
    ),
    kernel: str = typer.Option("linear", help="linear or rbf."),
    debiased: bool = typer.Option(True, "--debiased/--biased", help="Unbiased HSIC (the paper)."),
    embed: bool = typer.Option(True, help="Include the embedding output as layer 'embed'."),
    paper_variant: bool = typer.Option(
        False, "--paper-variant", help="Also the released code's [:, :, idx] indexing."
    ),
) -> None:
    """Layer x layer CKA (epoch 0 vs last by default); prints layer i vs layer i."""
    from dtlens.diagnostics.layer_cka import diagonal, layer_labels, run_layer_cka
    from dtlens.errors import DtlensError
    from dtlens.train.run import Run

    values = parse_int_list(epochs)
    if len(values) not in (1, 2):
        raise DtlensError(f"--epochs takes one or two epochs, got {values}")
    a = Run(run)
    b = a if run_b is None else Run(run_b)
    ds, nc, png = run_layer_cka(a, values[0], b, values[-1], kernel, debiased, embed, paper_variant)
    for variant in ds["variant"].values:
        diag = diagonal(ds, str(variant))
        table = Table(
            "layer",
            *diag["token_type"].values,
            title=f"CKA {variant}: {ds.attrs['run_a']} epoch {ds.attrs['epoch_a']} vs "
            f"{ds.attrs['run_b']} epoch {ds.attrs['epoch_b']} (same layer)",
        )
        for label, row in zip(layer_labels(diag["layer"].values), diag.values.T, strict=True):
            table.add_row(label, *(f"{v:.3f}" for v in row))
        console.print(table)
    console.print(f"wrote {nc}, {png}", highlight=False)


@app.command("weight-change")
@user_errors
def weight_change_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    epochs: str = typer.Option("0,-1", help="Two epochs, before and after (-1 = last)."),
) -> None:
    """Per-tensor L2 distance, relative change and cosine between two epochs' weights."""
    from dtlens.diagnostics.weights import aggregate, run_weight_change
    from dtlens.train.run import Run

    ds, nc, png = run_weight_change(Run(run), parse_int_list(epochs))
    agg = aggregate(ds, "block")
    table = Table(
        "block",
        "parameters",
        "L2 distance",
        "relative",
        "cosine",
        title=f"weight change of {ds.attrs['run']}: epoch {ds.attrs['epoch_before']} -> "
        f"{ds.attrs['epoch_after']}",
    )
    for i, block in enumerate(agg["block"].values):
        table.add_row(
            "outside blocks" if block == -1 else str(block),
            str(int(agg["numel"].values[i])),
            f"{agg['l2'].values[i]:.4g}",
            f"{agg['relative'].values[i]:.4g}",
            f"{agg['cosine'].values[i]:.6f}",
        )
    console.print(table)
    console.print(f"wrote {nc}, {png}", highlight=False)
