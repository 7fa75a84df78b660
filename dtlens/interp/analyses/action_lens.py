"""The action_lens analysis: `action_lens` on a run's probe windows, its figure, table and
finding (the half-error depth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from dtlens.diagnostics.contract import Diagnostic, Finding, Table
from dtlens.interp.analyses import READS
from dtlens.interp.inputs import run_attrs
from dtlens.interp.lens import action_lens
from dtlens.plotting import panels, save_figure
from dtlens.train.run import Run

#: The lens error's "half-way" point: where it first falls half of the way to the output's.
HALF = 0.5


def half_error_depth(ds: xr.Dataset) -> float:
    """The depth (in blocks, interpolated between layers) where the lens error first falls half
    of the way from the embeddings' error to the output's; 0 when the blocks do not lower it."""
    e = ds["error"].values
    goal = e[-1] + HALF * (e[0] - e[-1])
    if e[0] <= goal:
        return 0.0
    i = int(np.flatnonzero(e <= goal)[0])
    return float(i - 1 + (e[i - 1] - goal) / (e[i - 1] - e[i]))


def compute_lens(run: Run, epoch: int = -1, samples: int | None = None) -> xr.Dataset:
    """The action lens of `run`'s checkpoint `epoch` (-1: the last) on its probe windows."""
    (epoch,) = run.resolve_epochs([epoch])
    ds = action_lens(run.load_model(epoch), run.windows(samples))
    return ds.assign_attrs(run_attrs(run, epoch) | {"samples": ds.sizes["sample"]})


def plot_lens(ds: xr.Dataset, path: str | Path) -> Path:
    """The lens error per layer, and each action dimension's lens reading of one sample."""
    fig, axes = panels(1, 2, size=(3.6, 3.0))
    layers = ds["layer"].values
    axes[0, 0].plot(layers, ds["error"].values, "o-")
    axes[0, 0].axvline(half_error_depth(ds), color="grey", ls=":", label="half-error depth")
    axes[0, 0].set(xlabel="blocks passed", ylabel="action MSE", title="lens error", yscale="log")
    axes[0, 0].legend(fontsize=7)
    for d in ds["action_dim"].values:
        line = axes[0, 1].plot(layers, ds["action"].isel(sample=0, action_dim=d), "o-")
        target = float(ds["target"].isel(sample=0, action_dim=d))
        axes[0, 1].axhline(target, color=line[0].get_color(), ls=":")
    axes[0, 1].set(xlabel="blocks passed", ylabel="action", title="sample 0 (dotted: target)")
    for ax in axes[0]:
        ax.set_xticks(layers)
    fig.suptitle(
        f"action lens of {ds.attrs.get('run', '')}, epoch {ds.attrs.get('epoch', '')}", fontsize=10
    )
    return save_figure(fig, path)


def summary(ds: xr.Dataset) -> Table:
    final = ds["action"].isel(layer=-1)
    rows = [
        [
            "embeddings" if layer == 0 else f"after block {layer - 1}",
            float(ds["error"].sel(layer=layer)),
            float(abs(ds["action"].sel(layer=layer) - final).mean()),
        ]
        for layer in ds["layer"].values
    ]
    title = (
        f"action lens of {ds.attrs.get('run', '')} (epoch {ds.attrs.get('epoch', '')}), "
        f"half-error depth {half_error_depth(ds):.2f} blocks"
    )
    return Table(title, ["layer", "action MSE", "mean |action - output|"], rows)


DIAGNOSTIC = Diagnostic(
    name="action_lens",
    title="Action lens",
    compute=compute_lens,
    plot=plot_lens,
    summary=summary,
    finding=Finding(
        claim=(
            "Is the action decided at a different depth in a language-pretrained DT than in a "
            "random-init one?"
        ),
        short="half-error depth",
        statistic=(
            "blocks (interpolated) until the action lens's MSE falls half of the way from the "
            "embeddings' to the output's"
        ),
        expect="two-sided",  # a question, not a claim of the paper
        value=half_error_depth,
    ),
    reads=READS,
)
