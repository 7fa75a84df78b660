"""The return_sweep analysis: `return_sweep` of a run's checkpoint over return-to-go targets,
its figure and table."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import xarray as xr

from dtlens.data.scores import target_return
from dtlens.diagnostics.contract import Diagnostic, Table
from dtlens.interp.inputs import run_attrs
from dtlens.interp.rollouts import Rollouts, return_sweep
from dtlens.plotting import panels, save_figure
from dtlens.train.run import Run

#: The default targets of the return sweep, as fractions of the environment's default target.
SWEEP_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)


def compute_return_sweep(
    run: Run,
    epoch: int = -1,
    targets: Sequence[float] | None = None,
    episodes: int | None = None,
    seed: int = 0,
    max_steps: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> xr.Dataset:
    """`return_sweep` of `run`'s checkpoint `epoch` (default targets: 0 to 1.25 x the
    environment's default target), with the run's name, epoch, init and dataset in its attrs."""
    (epoch,) = run.resolve_epochs([epoch])
    if targets is None:
        top = target_return(Rollouts.of(run).env_id)
        targets = [f * top for f in SWEEP_FRACTIONS]
    ds = return_sweep(
        run, targets, episodes, seed, epoch=epoch, max_steps=max_steps, progress=progress
    )
    return ds.assign_attrs(run_attrs(run, epoch))


def plot_return_sweep(ds: xr.Dataset, path: str | Path) -> Path:
    """Achieved return (mean and std over episodes) against the return-to-go target."""
    fig, axes = panels(1, 1, size=(4.0, 3.4))
    ax = axes[0, 0]
    target = ds["target"].values
    ax.errorbar(target, ds["return_mean"], yerr=ds["return_std"], fmt="o-", capsize=3)
    ax.plot(target, target, color="grey", ls=":", label="achieved = target")
    ax.set(xlabel="return-to-go target", ylabel="achieved return")
    ax.legend(fontsize=7)
    ax.set_title(
        f"return sweep of {ds.attrs.get('run', '')}, epoch {ds.attrs.get('epoch', '')} "
        f"({ds.attrs.get('episodes', '')} episodes)",
        fontsize=8,
    )
    return save_figure(fig, path)


def summary(ds: xr.Dataset) -> Table:
    rows = [
        [float(t), float(m), float(s), float(n)]
        for t, m, s, n in zip(
            ds["target"].values,
            ds["return_mean"].values,
            ds["return_std"].values,
            ds["score_mean"].values,
            strict=True,
        )
    ]
    title = f"return sweep of {ds.attrs.get('run', '')} (epoch {ds.attrs.get('epoch', '')})"
    return Table(title, ["target", "return", "std", "score"], rows)


DIAGNOSTIC = Diagnostic(
    name="return_sweep",
    title="Achieved return against the return-to-go target",
    compute=compute_return_sweep,
    plot=plot_return_sweep,
    summary=summary,
)
