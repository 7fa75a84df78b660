"""`dtlens data ...`: inspect and collect offline RL datasets."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from cli.common import console, user_errors
from dtlens.errors import DtlensError

if TYPE_CHECKING:
    from dtlens.data import OfflineDataset

app = typer.Typer(
    help="Offline RL datasets: D4RL HDF5, Minari, embedded mini/... ids.", no_args_is_help=True
)


def file_hash(source: str, dataset: OfflineDataset) -> str:
    """The sha256 of the dataset's file ('matches the manifest' for a shipped id)."""
    from dtlens.data import EMBEDDED
    from dtlens.data.registry import DERIVED
    from dtlens.io import file_sha256

    if source in EMBEDDED:
        return f"{dataset.metadata['sha256']} (matches the manifest)"
    if source in DERIVED:
        return f"{dataset.metadata['sha256']} (of the arrays built from its parts; matches)"
    path = Path(dataset.metadata.get("path", ""))
    return file_sha256(path) if path.is_file() else "n/a (not a single file)"


def summary_table(dataset: OfflineDataset, title: str) -> Table:
    from dtlens.data import normalized_score

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


@app.command()
@user_errors
def info(
    source: str = typer.Argument(..., help="A .hdf5 file, a Minari id or folder, or mini/<name>."),
    env: str | None = typer.Option(None, help="Check the dims against this gymnasium env id."),
) -> None:
    """Print a dataset's size, returns, normalized score, dims and file sha256."""
    from dtlens.data import load_dataset

    dataset = load_dataset(source, env_id=env)
    console.print(summary_table(dataset, source))
    if dataset.metadata.get("description"):
        console.print(f"made as: {dataset.metadata['description']}", highlight=False)
    console.print(f"sha256 {file_hash(source, dataset)}", highlight=False, soft_wrap=True)


SPEC_OPTIONS = ("env", "quality", "transitions", "seed", "noise", "policy")


@app.command()
@user_errors
def collect(
    ctx: typer.Context,
    dataset_id: str | None = typer.Option(
        None, "--id", help="Rebuild an embedded id (mini/...) from its registered spec."
    ),
    env: str = typer.Option("Hopper-v5", help="A gymnasium MuJoCo env id."),
    quality: str = typer.Option("medium", help="random, medium or expert (embedded policies)."),
    transitions: int = typer.Option(100_000, help="Exact number of transitions."),
    seed: int = typer.Option(0),
    noise: float = typer.Option(None, help="Std of Gaussian action noise (default: 0.1)."),
    policy: str | None = typer.Option(None, help="Policy name or path stem (overrides quality)."),
    out: str | None = typer.Option(
        None,
        help="Output D4RL .hdf5 file (required without --id; with it, default "
        "$DTLENS_CACHE/datasets/mini-<name>.hdf5).",
    ),
    update_manifest: bool = typer.Option(
        False, help="With --id: rewrite the shipped asset and its manifest entry."
    ),
) -> None:
    """Collect a D4RL-layout dataset with a behaviour policy, or rebuild an embedded id and say
    whether it has the shipped bytes."""
    from dtlens.data import EMBEDDED, load_dataset
    from dtlens.data.collect import DEFAULT_NOISE, collect_to_file
    from dtlens.data.registry import DERIVED, rebuild_embedded
    from dtlens.io import file_sha256

    start = time.perf_counter()
    if dataset_id is not None:
        given = [f"--{name}" for name in SPEC_OPTIONS if _given(ctx, name)]
        if given:
            raise DtlensError(f"--id takes its spec from the registry: drop {', '.join(given)}")
        if dataset_id in DERIVED:
            record_derived_cmd(dataset_id, out, update_manifest)
            return
        path, verdict = rebuild_embedded(dataset_id, out, update_manifest, progress=True)
        transitions = EMBEDDED[dataset_id].transitions
    elif update_manifest:
        raise DtlensError("--update-manifest needs --id (it refreshes a shipped dataset)")
    elif out is None:
        raise DtlensError("--out is required unless --id is given")
    else:
        noise = DEFAULT_NOISE if noise is None else noise
        path = collect_to_file(out, env, quality, transitions, seed, noise, policy, progress=True)
        verdict = f"sha256 {file_sha256(path)}"
    seconds = time.perf_counter() - start
    console.print(f"wrote {path} in {seconds:.1f} s ({transitions / seconds:,.0f} steps/s)")
    console.print(verdict, highlight=False, soft_wrap=True)
    if update_manifest:
        console.print(f"updated the manifest entry of {dataset_id}")
    console.print(summary_table(load_dataset(path), str(path)))


def record_derived_cmd(dataset_id: str, out: str | None, update_manifest: bool) -> None:
    """`collect --id` of a derived id: build it from its parts and record its hash."""
    from dtlens.data.registry import record_derived

    if not update_manifest:
        raise DtlensError(
            f"{dataset_id} is built from its parts on load: --update-manifest records its hash"
        )
    path, verdict = record_derived(dataset_id, out)
    console.print(verdict, highlight=False, soft_wrap=True)
    console.print(
        f"updated the manifest entry of {dataset_id}" + (f", wrote {path}" if path else "")
    )


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option `name` was set on the command line (or by env var), not defaulted."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name != "DEFAULT"
