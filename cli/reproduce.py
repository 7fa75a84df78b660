"""`dtlens reproduce` and `dtlens report`."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import typer

from cli.common import console, user_errors
from cli.main import app


@app.command("reproduce")
@user_errors
def reproduce_cmd(
    out: Path = typer.Option(..., "--out", help="Folder for runs, diagnostics and the report."),
    preset: str = typer.Option("mini", help="mini (offline, CPU) or paper (PAPER.md, a GPU)."),
    gpt2: str = typer.Option(None, help="paper: local HF GPT-2 directory."),
    imagegpt: str = typer.Option(None, help="paper: local HF ImageGPT directory."),
    d4rl_dir: str = typer.Option(None, help="paper: folder with {env}-medium-v2.hdf5 files."),
    workers: int = typer.Option(
        min(2, os.cpu_count() or 1), help="Parallel runs on a dask LocalCluster (1 = in process)."
    ),
    scheduler: str = typer.Option(None, help="Address of an existing dask scheduler."),
    device: str = typer.Option("auto", help="cpu, cuda, ... (auto: cuda when available)."),
) -> None:
    """The whole study in one command: datasets, backbones, runs, diagnostics, report."""
    from dtlens.errors import DtlensError
    from dtlens.experiments import presets
    from dtlens.experiments.reproduce import reproduce

    if preset == "mini":
        chosen = presets.mini()
    elif preset == "paper":
        presets.check_paper_inputs(gpt2, imagegpt, d4rl_dir)
        chosen = presets.paper(gpt2, imagegpt, d4rl_dir)
    else:
        raise DtlensError(f"unknown preset {preset!r}: expected mini or paper")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = dataclasses.replace(chosen, train=chosen.train.replace(device=device))
    report = reproduce(chosen, out, workers, scheduler, log=console.print)
    console.print(f"[bold green]report:[/] {report} and {report.with_suffix('.html')}")


@app.command("report")
@user_errors
def report_cmd(out: Path = typer.Argument(..., help="A reproduction folder.")) -> None:
    """Rebuild report.md and report.html from a reproduction's saved results."""
    from dtlens.report.report import write_report

    if not (out / "reproduce.json").is_file():
        from dtlens.errors import DtlensError

        raise DtlensError(f"{out}: not a reproduction folder (no reproduce.json)")
    console.print(f"report: {write_report(out)}")
