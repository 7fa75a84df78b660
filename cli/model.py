"""`dtlens model info NAME|PATH`."""

from __future__ import annotations

import typer
from rich.table import Table

from cli.common import console, flag, user_errors
from cli.main import app

model_app = typer.Typer(help="Inspect backbones and Decision Transformers.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("info")
@user_errors
def info(
    name: str = typer.Argument(
        ...,
        help="random, random-paper, gpt2, imagegpt, text, image, a "
        "HF directory, or a dtlens .safetensors checkpoint",
    ),
    imagegpt_norm: str = typer.Option(
        "rms", help="rms (ImageGPT as published) or layernorm (the paper code's GPT2Model loading)"
    ),
    hooks: bool = flag(True, help="List the hook names."),
) -> None:
    """Layers, width, heads, parameters, norm, activation and hook names of a model."""
    from dtlens.model.summary import describe

    rows, hook_names = describe(name, imagegpt_norm=imagegpt_norm)
    table = Table(title=f"model {name}", show_header=False)
    for key, value in rows.items():
        table.add_row(key, str(value))
    console.print(table)
    if hooks:
        console.print(f"[bold]{len(hook_names)} hook points[/] (one line per pattern):")
        for pattern in hook_names:
            console.print(f"  {pattern}", highlight=False)
