"""`dtlens reproduce` and `dtlens report`."""

from __future__ import annotations

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
    """The whole study in one command: datasets, backbones, runs, diagnostics, report.

    Writes OUT/reproduce.json, OUT/<dataset>/runs/<run>/ (each with diagnostics/ and figures/),
    OUT/<dataset>/{diagnostics,figures}/ for the studies across runs, and OUT/report.{md,html}."""
    from dtlens.experiments import presets
    from dtlens.experiments.reproduce import reproduce
    from dtlens.report.report import write_report

    chosen = presets.get(preset, gpt2, imagegpt, d4rl_dir, device)
    report = write_report(reproduce(chosen, out, workers, scheduler, log=console.print))
    console.print(f"[bold green]report:[/] {report} and {report.with_suffix('.html')}")


@app.command("report")
@user_errors
def report_cmd(out: Path = typer.Argument(..., help="A reproduction folder.")) -> None:
    """Rebuild report.md and report.html from a reproduction's saved results."""
    from dtlens.errors import DtlensError
    from dtlens.report.report import write_report

    if not (out / "reproduce.json").is_file():
        raise DtlensError(f"{out}: not a reproduction folder (no reproduce.json)")
    console.print(f"report: {write_report(out)}")
