"""`dtlens model info NAME|PATH`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from cli.common import console, flag, user_errors

app = typer.Typer(help="Inspect backbones and Decision Transformers.", no_args_is_help=True)


@app.command("info")
@user_errors
def info(
    name: str = typer.Argument(
        ...,
        help="random, random-paper, gpt2, imagegpt, text, image, synthetic, a "
        "HF directory, a dtlens .safetensors checkpoint, or shuffled:INIT / matched:INIT",
    ),
    imagegpt_norm: str = typer.Option(
        "rms", help="rms (ImageGPT as published) or layernorm (the paper code's GPT2Model loading)"
    ),
    hooks: bool = flag(True, help="List the hook names."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead."),
    curve: Path = typer.Option(
        None, help="Also write the pretraining learning curve figure here (e.g. text-curve.png)."
    ),
) -> None:
    """Layers, width, heads, parameters, norm, activation, hook names and (for a pretrained
    backbone file) how it was pretrained."""
    from dtlens.errors import DtlensError
    from dtlens.model.summary import describe, pretraining_record
    from dtlens.plotting import save_figure
    from dtlens.pretrain.curve import pretraining_curve_figure

    rows, hook_names = describe(name, imagegpt_norm=imagegpt_norm)
    record = pretraining_record(name)
    if curve is not None:
        fig = pretraining_curve_figure(name)
        if fig is None:
            raise DtlensError(f"{name}: no learning curve (only long pretraining runs keep one)")
        save_figure(fig, curve)
    if as_json:
        out = rows | {"pretraining": record} | ({"hooks": hook_names} if hooks else {})
        print(json.dumps(out, indent=2))
        return
    table = Table(title=f"model {name}", show_header=False)
    for key, value in rows.items():
        table.add_row(key, str(value))
    for key, value in (record or {}).items():
        table.add_row(f"pretraining: {key.replace('_', ' ')}", str(value))
    console.print(table)
    if hooks:
        console.print(f"[bold]{len(hook_names)} hook points[/] (one line per pattern):")
        for pattern in hook_names:
            console.print(f"  {pattern}", highlight=False)
