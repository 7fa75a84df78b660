"""`dtlens capture`: activations and attention of a run's checkpoints on its probe batch."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import DEVICE, console, parse_int_list, parse_names, user_errors

app = typer.Typer()


@app.command("capture")
@user_errors
def capture_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    epochs: str = typer.Option(
        None, help="Comma-separated epochs (-1 = last); default first,last."
    ),
    hooks: str = typer.Option(
        "tokens,resid_post,pattern",
        help="Comma-separated hook names: short (resid_post, pattern, attn_out, mlp_out, tokens, "
        "...) or full (backbone.blocks.{i}.hook_resid_post, backbone.blocks.2.attn.hook_pattern).",
    ),
    samples: int = typer.Option(
        None, help="Samples (default: the probe batch; more are drawn as the probe was)."
    ),
    out: Path = typer.Option(None, help="Folder for epoch-NNNN.nc (default RUN/captures)."),
    chunk: int = typer.Option(256, help="Samples per chunk written to disk."),
    batch_size: int = typer.Option(256, help="Samples per forward pass."),
    device: str = DEVICE,
) -> None:
    """Capture hooks of each epoch's checkpoint to RUN/captures/epoch-NNNN.nc."""
    from dtlens.capture import capture_run
    from dtlens.train.run import Run

    paths = capture_run(
        Run(run, device),
        parse_int_list(epochs) if epochs else None,
        parse_names(hooks),
        samples=samples,
        out=out,
        chunk=chunk,
        batch_size=batch_size,
    )
    for path in paths:
        console.print(f"wrote {path}", highlight=False)
