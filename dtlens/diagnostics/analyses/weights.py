"""Weight change of a run between two epochs (the paper's analysis 3), on the Diagnostic contract.

Writes `RUN/diagnostics/weights.nc` and `RUN/figures/weights.png`; the estimator is
`dtlens.diagnostics.weights.weight_change`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from dtlens.diagnostics.contract import Diagnostic, Finding, Reads, Table
from dtlens.diagnostics.weights import KINDS, aggregate, weight_change
from dtlens.errors import DtlensError
from dtlens.plotting import grouped_bars, panels, save_figure
from dtlens.train.run import Run


def compute_weight_change(run: Run, epochs: Sequence[int] = (0, -1)) -> xr.Dataset:
    """Weight change of `run` between two epochs (-1 = last)."""
    if len(epochs) != 2:
        raise DtlensError(f"weight change compares two epochs, got {list(epochs)}")
    first, last = run.resolve_epochs(list(epochs))
    t = run.train_config
    return weight_change(run.load_model(first), run.load_model(last)).assign_attrs(
        run=run.name, epoch_before=first, epoch_after=last, init=t.init, dataset=t.dataset
    )


def plot_weight_change(ds: xr.Dataset, path: Path) -> Path:
    """Cosine similarity and relative change per block (groups) and kind (bars)."""
    blocks = np.unique(ds["block"].values)
    kinds = [k for k in KINDS if k in ds["kind"].values]
    per_kind = {
        k: aggregate(ds.isel(tensor=ds["kind"].values == k), "block").reindex(block=blocks)
        for k in kinds
    }
    labels = ["outside" if b == -1 else str(b) for b in blocks]
    fig, axes = panels(1, 2, size=(max(4.0, 0.35 * len(blocks) * len(kinds)), 3.2))
    for ax, var, title in zip(
        axes[0],
        ("cosine", "relative"),
        ("cosine(before, after)", "||after - before|| / ||before||"),
        strict=True,
    ):
        grouped_bars(ax, labels, {k: agg[var].values for k, agg in per_kind.items()}, title, var)
    fig.suptitle(
        f"weight change of {ds.attrs.get('run', '')}: epoch {ds.attrs.get('epoch_before', '')} "
        f"-> {ds.attrs.get('epoch_after', '')}",
        fontsize=10,
    )
    return save_figure(fig, path)


def summary(ds: xr.Dataset) -> Table:
    agg = aggregate(ds, "block")
    rows = [
        [
            "outside blocks" if block == -1 else str(block),
            int(agg["numel"].values[i]),
            float(agg["l2"].values[i]),
            float(agg["relative"].values[i]),
            float(agg["cosine"].values[i]),
        ]
        for i, block in enumerate(agg["block"].values)
    ]
    title = (
        f"weight change of {ds.attrs.get('run', '')}: epoch {ds.attrs.get('epoch_before', '')} "
        f"-> {ds.attrs.get('epoch_after', '')}"
    )
    return Table(title, ["block", "parameters", "L2 distance", "relative", "cosine"], rows)


def backbone_relative_change(ds: xr.Dataset) -> float:
    """||after - before|| / ||before|| of all backbone weights together."""
    return float(aggregate(ds, "part").sel(part="backbone")["relative"])


DIAGNOSTIC = Diagnostic(
    name="weights",
    title="3. Weight change",
    compute=compute_weight_change,
    plot=plot_weight_change,
    summary=summary,
    finding=Finding(
        claim=("Pretrained weights barely move during fine-tuning (cosine similarity ~1)."),
        short="pretrained move less",
        statistic="relative change of all backbone weights, epoch 0 to last",
        expect="less",
        value=backbone_relative_change,
    ),
    reads=Reads(),
)
