"""`dtlens pretrain text|image`: build the mini preset's embedded backbones."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cli.common import console, user_errors
from cli.main import app
from dtlens.pretrain import STEPS

pretrain_app = typer.Typer(
    help="Pretrain the mini preset's tiny language (text) and image backbones.",
    no_args_is_help=True,
)
app.add_typer(pretrain_app, name="pretrain")

SEED = typer.Option(0, help="Seeds the initialisation and the batches.")
OUT = typer.Option(
    None,
    help="Output .safetensors (default: $DTLENS_CACHE/backbones/NAME.safetensors; "
    "dtlens/assets/backbones/NAME.safetensors refreshes the committed asset).",
)


@pretrain_app.command("text")
@user_errors
def text_cmd(
    steps: int = typer.Option(STEPS["text"], min=1, help="Optimiser steps."),
    seed: int = SEED,
    out: Path | None = OUT,
) -> None:
    """GPT-2 family (LayerNorm, gelu_new), characters of Python's documentation topics."""
    from dtlens.pretrain import text

    console.print(summary("text", text.build(steps=steps, seed=seed, out=out)))


@pretrain_app.command("image")
@user_errors
def image_cmd(
    steps: int = typer.Option(STEPS["image"], min=1, help="Optimiser steps."),
    seed: int = SEED,
    out: Path | None = OUT,
) -> None:
    """ImageGPT family (RMS norm, quick_gelu), pixels of scikit-learn's 8x8 digits."""
    from dtlens.pretrain import image

    console.print(summary("image", image.build(steps=steps, seed=seed, out=out)))


def summary(kind: str, result) -> Table:
    m = result.meta
    gain = m["unigram_loss"] - m["heldout_loss"]
    table = Table(title=f"pretrained {kind} backbone", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("family", m["family"]),
        ("corpus", m["corpus"]),
        ("held-out loss", f"{m['heldout_loss']:.3f} nats/token"),
        ("unigram baseline", f"{m['unigram_loss']:.3f} nats/token"),
        ("gain over unigram", f"{gain:.3f} nats/token"),
        ("held-out tokens", f"{m['heldout_tokens']:,}"),
        ("steps x batch", f"{m['steps']:,} x {m['batch_size']}"),
        ("seed", str(m["seed"])),
        ("time", f"{m['wall_seconds']:.1f} s"),
        ("file", str(result.path)),
        ("size", f"{result.size_bytes / 1e6:.2f} MB"),
        ("rebuild", m["command"]),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table
