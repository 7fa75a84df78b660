"""Training without context (paper analysis 5): K=1 vs K=20 convergence per init and seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from dtlens.diagnostics.contract import Diagnostic, Finding, Reads, RunKey, Table
from dtlens.diagnostics.curves import CURVES, ema, last_finite, stack_runs, steps_to_fraction
from dtlens.plotting import panels, save_figure
from dtlens.train.run import Run


def compare_context(
    runs: dict[RunKey, Run], fraction: float = 0.9, alpha: float = 0.8
) -> xr.Dataset:
    """Curves of runs keyed by (init or role, seed, K), along a `run` dim with `init`, `context` and
    `seed` coordinates, and how fast each converges: `steps_to_fraction` is the first step at
    which the EMA-smoothed action error has made `fraction` of its total decrease; `final_*` are
    the last evaluated epoch's values."""
    ds = stack_runs({f"{k.role} K={k.context} s{k.seed}": r for k, r in runs.items()})
    ds = ds.assign_coords(
        init=("run", [k.role for k in runs]),
        context=("run", [k.context for k in runs]),
        seed=("run", [k.seed for k in runs]),
    )
    loss = [ds["loss"].sel(run=r).values for r in ds.run.values]
    ds["loss_smoothed"] = (("run", "step"), np.stack([ema(x, alpha) for x in loss]))
    ds["steps_to_fraction"] = (
        "run",
        [steps_to_fraction(x[np.isfinite(x)], fraction, alpha) for x in loss],
    )
    for var in CURVES:
        if var in ds:
            ds[f"final_{var}"] = ("run", [last_finite(ds[var].sel(run=r).values) for r in ds.run])
    ds.attrs.update(fraction=fraction, ema=alpha, analysis="no-context")
    return ds


def plot_context(ds: xr.Dataset, path: str | Path) -> Path:
    """Smoothed action error per step and normalized score per epoch; K=1 dashed."""
    fig, axes = panels(1, 2, size=(5.5, 4))
    axes = axes[0]
    colours = {init: f"C{i}" for i, init in enumerate(dict.fromkeys(ds.init.values.tolist()))}
    for run in ds.run.values:
        r = ds.sel(run=run)
        style = dict(color=colours[str(r.init.values)], ls="--" if int(r.context) == 1 else "-")
        axes[0].plot(ds.step, r.loss_smoothed, label=str(run), lw=0.8, **style)
        if "score_mean" in ds:
            axes[1].plot(ds.epoch, r.score_mean, marker="o", ms=3, label=str(run), **style)
    axes[0].set(xlabel="step", ylabel="action MSE (EMA)", yscale="log", title="action error")
    axes[1].set(xlabel="epoch", ylabel="D4RL normalized score", title="evaluation")
    axes[0].legend(fontsize=6)
    fig.suptitle("Training without context (K=1, dashed) vs with context")
    return save_figure(fig, path)


def summary(ds: xr.Dataset) -> Table:
    rows = [
        [
            str(x.init.values),
            int(x.context),
            int(x.seed),
            float(x.final_action_error),
            float(x.get("final_score_mean", np.nan)),
            int(x.steps_to_fraction),
        ]
        for x in (ds.sel(run=r) for r in ds.run.values)
    ]
    header = ["init", "K", "seed", "final action MSE", "final score", "steps to 90% of the drop"]
    return Table("training without context", header, rows)


def score_lost(ds: xr.Dataset, role: str) -> np.ndarray:
    """Per seed of `role`: final normalized score at K=20 minus at K=1 (seeds with both)."""
    if "final_score_mean" not in ds:
        return np.array([])
    pick = ds.init.values == role
    by = {
        (int(k), int(s)): float(v)
        for k, s, v in zip(
            ds.context.values[pick],
            ds.seed.values[pick],
            ds.final_score_mean.values[pick],
            strict=True,
        )
    }
    seeds = sorted({s for _, s in by if (1, s) in by and (20, s) in by})
    return np.array([by[(20, s)] - by[(1, s)] for s in seeds])


DIAGNOSTIC = Diagnostic(
    name="no_context",
    title="5. Training without context",
    compute=compare_context,
    plot=plot_context,
    summary=summary,
    finding=Finding(
        claim=(
            "Without context (K=1) GPT-2 converges as fast as with context; random init slows down "
            "(Hopper: 81.3 vs -0.3)."
        ),
        short="pretrained lose less at K=1",
        statistic="normalized score lost without context (K=20 minus K=1), per seed",
        expect="less",
        per_seed=score_lost,
    ),
    scope="study",
    reads=Reads("no_context"),
)
