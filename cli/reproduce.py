"""`dtlens reproduce` and `dtlens report`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from cli.common import console, flag, parse_int_list, parse_names, user_errors
from cli.config_options import field_default
from dtlens.experiments.budget import BUDGETS, DEFAULT_BUDGET
from dtlens.train.config import TrainConfig, help_text

app = typer.Typer()

BUDGET_HELP = "; ".join(f"{name}: {b.description}" for name, b in BUDGETS.items())


@app.command("reproduce")
@user_errors
def reproduce_cmd(
    out: Path = typer.Option(
        None, "--out", help="Folder for runs, diagnostics and the report (not with --dry-run)."
    ),
    preset: str = typer.Option(
        "mini",
        help="mini (offline, CPU; Hopper), mini-tasks (mini on Hopper, HalfCheetah, Walker2d), "
        "laptop (results/laptop/PLAN.md; needs `dtlens laptop-budget`) or paper (PAPER.md, a GPU).",
    ),
    budget_file: Path = typer.Option(
        Path("results/laptop/budget.json"), help="laptop: the budgets `dtlens laptop-budget` wrote."
    ),
    gpt2: str = typer.Option(None, help="paper: local HF GPT-2 directory."),
    imagegpt: str = typer.Option(None, help="paper: local HF ImageGPT directory."),
    d4rl_dir: str = typer.Option(None, help="paper: folder with {env}-medium-v2.hdf5 files."),
    budget: str = typer.Option(DEFAULT_BUDGET, help=BUDGET_HELP),
    tasks: str = typer.Option(None, help="Only these tasks, e.g. hopper,walker2d (default: all)."),
    seeds: str = typer.Option(None, help="Only these seeds, e.g. 666 (default: the preset's)."),
    controls: str = typer.Option(
        None,
        help="Only these of the preset's controls (K=20 inits beside random, language and image), "
        "e.g. synthetic,shuffled:text; 'none' for none (default: the preset's).",
    ),
    dry_run: bool = flag(
        False, "--dry-run", help="Print the plan, projected time and disk use; write nothing."
    ),
    workers: int = typer.Option(
        None,
        help="Parallel runs: a dask LocalCluster of N processes on CPU (default min(2, CPUs)), "
        "one dask-cuda worker per GPU with --device cuda (default: every GPU); 1 = in process.",
    ),
    scheduler: str = typer.Option(None, help="Address of an existing dask scheduler."),
    device: str = typer.Option(
        "auto", help="cpu, cuda (every GPU), cuda:N, mps (auto: cuda when available)."
    ),
    precision: str = typer.Option(
        field_default(TrainConfig, "precision"), help=help_text("precision")
    ),
    deterministic: bool = flag(False, "--deterministic", help=help_text("deterministic")),
) -> None:
    """The whole study in one command: datasets, backbones, runs, diagnostics, report.

    Writes OUT/reproduce.json, OUT/<dataset>/runs/<run>/ (each with diagnostics/ and figures/),
    OUT/<dataset>/{diagnostics,figures}/ for the studies across runs, and OUT/report.{md,html}."""
    from dtlens.errors import DtlensError
    from dtlens.experiments import presets
    from dtlens.experiments.budget import apply_budget, get_budget

    chosen = presets.get(
        preset,
        gpt2,
        imagegpt,
        d4rl_dir,
        device,
        tasks=None if tasks is None else parse_names(tasks),
        seeds=None if seeds is None else parse_int_list(seeds),
        controls=None if controls is None else [] if controls == "none" else parse_names(controls),
        precision=precision,
        deterministic=deterministic,
        budget_file=budget_file,
    )
    chosen = apply_budget(chosen, get_budget(budget))
    if dry_run:
        show_dry_run(chosen, workers, scheduler)
        return
    if out is None:
        raise DtlensError("--out is required (or --dry-run to see the plan)")
    from dtlens.experiments.reproduce import record_command, reproduce
    from dtlens.report.report import write_report

    reproduce(chosen, out, workers, scheduler, log=console.print)
    command = "dtlens " + shlex.join(sys.argv[1:]) if sys.argv[0].endswith("dtlens") else None
    if command:  # the report's first lines name every invocation's
        record_command(out, command)
    report = write_report(out)
    console.print(f"[bold green]report:[/] {report} and {report.with_suffix('.html')}")


def show_dry_run(chosen, workers: int | None, scheduler: str | None) -> None:
    from dtlens.experiments.dry_run import dry_run

    console.print(f"[bold]dry run[/]: preset {chosen.name}, nothing is written; timing steps...")
    planned = dry_run(chosen, workers, scheduler)
    for line in planned.lines():
        console.print(line, soft_wrap=True, highlight=False, markup=False)
    console.print(f"[bold]projected:[/] {planned.summary()}", soft_wrap=True)


@app.command("report")
@user_errors
def report_cmd(
    out: Path = typer.Argument(..., help="A reproduction folder."),
    export: Path = typer.Option(
        None,
        help="Also copy the small files the report is rebuilt from (no checkpoints) to this "
        "folder, e.g. results/laptop, and write the report there.",
    ),
) -> None:
    """Rebuild report.md and report.html from a reproduction's saved results."""
    from dtlens.errors import DtlensError
    from dtlens.report.export import export_results
    from dtlens.report.report import write_report

    if not (out / "reproduce.json").is_file():
        raise DtlensError(f"{out}: not a reproduction folder (no reproduce.json)")
    console.print(f"report: {write_report(out)}")
    if export is not None:
        copied = export_results(out, export)
        console.print(f"exported {len(copied)} files; report: {write_report(export)}")
