"""`dtlens data ...`: inspect and collect offline RL datasets."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from cli.common import console, user_errors
from cli.main import app
from dtlens.data import OfflineDataset, load_dataset, normalized_score
from dtlens.data.collect import DEFAULT_NOISE, collect_to_file
from dtlens.errors import DtlensError

data_app = typer.Typer(
    help="Offline RL datasets: D4RL HDF5, Minari, embedded mini/... ids.", no_args_is_help=True
)
app.add_typer(data_app, name="data")


def summary_table(dataset: OfflineDataset, title: str) -> Table:
    stats = dataset.stats()
    try:
        score = f"{normalized_score(dataset.env_id or dataset.name, stats['return_mean']):.1f}"
    except DtlensError:
        score = "n/a (no reference scores)"
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", justify="right")
    rows = [
        ("env id", dataset.env_id or "unknown"),
        ("episodes", f"{stats['episodes']:,}"),
        ("transitions", f"{stats['transitions']:,}"),
        ("return mean", f"{stats['return_mean']:.1f}"),
        ("return std", f"{stats['return_std']:.1f}"),
        ("return min", f"{stats['return_min']:.1f}"),
        ("return max", f"{stats['return_max']:.1f}"),
        ("normalized score (mean)", score),
        ("observation dim", str(dataset.obs_dim)),
        ("action dim", str(dataset.act_dim)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


@data_app.command()
@user_errors
def info(
    source: str = typer.Argument(..., help="A .hdf5 file, a Minari id or folder, or mini/<name>."),
    env: str | None = typer.Option(None, help="Check the dims against this gymnasium env id."),
) -> None:
    """Print a dataset's size, returns, normalized score and dims."""
    console.print(summary_table(load_dataset(source, env_id=env), source))


@data_app.command()
@user_errors
def collect(
    env: str = typer.Option("Hopper-v5", help="A gymnasium MuJoCo env id."),
    quality: str = typer.Option("medium", help="random, medium or expert (embedded policies)."),
    transitions: int = typer.Option(100_000, help="Exact number of transitions."),
    seed: int = typer.Option(0),
    noise: float = typer.Option(DEFAULT_NOISE, help="Std of Gaussian action noise."),
    policy: str | None = typer.Option(None, help="Policy name or path stem (overrides quality)."),
    out: str = typer.Option(..., help="Output D4RL .hdf5 file."),
) -> None:
    """Collect a D4RL-layout dataset with a behaviour policy."""
    start = time.perf_counter()
    path = collect_to_file(out, env, quality, transitions, seed, noise, policy, progress=True)
    seconds = time.perf_counter() - start
    console.print(f"wrote {path} in {seconds:.1f} s ({transitions / seconds:,.0f} steps/s)")
    console.print(summary_table(load_dataset(path), str(path)))
