"""Figures of learning curves: no-context comparison and block replacement."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from dtlens.report.figures import panels, save_figure


def plot_context(ds: xr.Dataset, path: str | Path) -> Path:
    """Smoothed action error per step and normalized score per epoch; K=1 dashed."""
    fig, axes = panels(1, 2, size=(5.5, 4))
    axes = axes[0]
    colours = {init: f"C{i}" for i, init in enumerate(dict.fromkeys(ds.init.values.tolist()))}
    for run in ds.run.values:
        r = ds.sel(run=run)
        style = dict(color=colours[str(r.init.values)], ls="--" if int(r.context) == 1 else "-")
        axes[0].plot(ds.step, r.loss_smoothed, label=str(run), **style)
        if "score_mean" in ds:
            axes[1].plot(ds.epoch, r.score_mean, marker="o", label=str(run), **style)
    axes[0].set(xlabel="step", ylabel="action MSE (EMA)", yscale="log", title="action error")
    axes[1].set(xlabel="epoch", ylabel="D4RL normalized score", title="evaluation")
    axes[0].legend(fontsize=8)
    fig.suptitle("Training without context (K=1, dashed) vs with context")
    return save_figure(fig, path)


def plot_blocks(ds: xr.Dataset, path: str | Path) -> Path:
    """EMA-smoothed action error and return per epoch, one line per variant."""
    fig, axes = panels(1, 2, size=(5.5, 4))
    axes = axes[0]
    for i, v in enumerate(ds.variant.values):
        style = dict(
            color="black" if v in ("random", "donor") else f"C{i}",
            ls=":" if v == "random" else ("--" if v == "donor" else "-"),
        )
        axes[0].plot(ds.epoch, ds.action_error_smoothed.sel(variant=v), label=str(v), **style)
        if "return_mean_smoothed" in ds:
            axes[1].plot(ds.epoch, ds.return_mean_smoothed.sel(variant=v), label=str(v), **style)
    axes[0].set(xlabel="epoch", ylabel="action MSE (EMA)", yscale="log", title="action error")
    axes[1].set(xlabel="epoch", ylabel="return (EMA)", title="mean return")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"One donor block in a random-init DT (EMA {ds.attrs.get('ema', 0.8)})")
    return save_figure(fig, path)
