"""The attribution analysis: `action_attribution` on a run's probe windows, its figure, table
and finding (the attention share of the action)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from dtlens.diagnostics.contract import Diagnostic, Finding, Table
from dtlens.interp.analyses import READS
from dtlens.interp.attribution import COMPONENT_TYPES, action_attribution
from dtlens.interp.inputs import run_attrs
from dtlens.plotting import heatmap, panels, save_figure
from dtlens.train.run import Run


def shares(ds: xr.Dataset) -> xr.DataArray:
    """Per component type: its share of sum |contribution| over components (mean over samples
    and action dims of the per-(sample, dim) shares)."""
    size = abs(ds["contribution"])
    by_type = size.groupby("component_type").sum("component")
    return (by_type / size.sum("component")).mean(("sample", "action_dim"))


def attention_share(ds: xr.Dataset) -> float:
    """sum |head contributions| / (sum |head| + sum |MLP|): how much of what the blocks write
    into the action comes through attention."""
    size = abs(ds["contribution"]).groupby("component_type").sum("component")
    return float(
        (
            size.sel(component_type="head")
            / (size.sel(component_type=["head", "mlp"]).sum("component_type"))
        ).mean()
    )


def compute_attribution(run: Run, epoch: int = -1, samples: int | None = None) -> xr.Dataset:
    """Action attribution of `run`'s checkpoint `epoch` (-1: the last) on its probe windows."""
    (epoch,) = run.resolve_epochs([epoch])
    ds = action_attribution(run.load_model(epoch), run.windows(samples))
    return ds.assign_attrs(run_attrs(run, epoch) | {"samples": ds.sizes["sample"]})


def plot_attribution(ds: xr.Dataset, path: str | Path) -> Path:
    """Mean |contribution| per block and component (heads, MLP), and the shares per type."""
    blocks = ds.isel(component=ds["layer"].values >= 0)
    layers = np.unique(blocks["layer"].values)
    heads = np.unique(blocks["head"].values[blocks["head"].values >= 0])
    columns = [f"H{h}" for h in heads] + ["MLP"]
    size = abs(blocks["contribution"]).mean(("sample", "action_dim")).values
    grid = np.reshape(size, (len(layers), len(columns)))
    fig, axes = panels(1, 2, size=(4.2, 3.2))
    image = heatmap(
        axes[0, 0],
        grid,
        columns,
        [f"block {i}" for i in layers],
        "mean |contribution|",
        cmap="viridis",
    )
    fig.colorbar(image, ax=axes[0, 0])
    share = shares(ds)
    types = [t for t in COMPONENT_TYPES if t in share["component_type"].values]
    axes[0, 1].bar(types, [float(share.sel(component_type=t)) for t in types], color="C0")
    axes[0, 1].set(ylabel="share of sum |contribution|", title="per component type")
    fig.suptitle(
        f"action attribution of {ds.attrs.get('run', '')}, epoch {ds.attrs.get('epoch', '')}",
        fontsize=10,
    )
    return save_figure(fig, path)


def summary(ds: xr.Dataset) -> Table:
    size = abs(ds["contribution"])
    share = (size / size.sum("component")).mean(("sample", "action_dim"))
    mean = ds["contribution"].mean(("sample", "action_dim"))
    rows = [
        [
            str(c),
            str(t),
            float(size.sel(component=c).mean()),
            float(mean.sel(component=c)),
            float(share.sel(component=c)),
        ]
        for c, t in zip(ds["component"].values, ds["component_type"].values, strict=True)
    ]
    title = (
        f"action attribution of {ds.attrs.get('run', '')} (epoch {ds.attrs.get('epoch', '')}), "
        f"attention share {attention_share(ds):.3f}"
    )
    return Table(title, ["component", "type", "mean |contribution|", "mean", "share"], rows)


DIAGNOSTIC = Diagnostic(
    name="attribution",
    title="Direct action attribution",
    compute=compute_attribution,
    plot=plot_attribution,
    summary=summary,
    finding=Finding(
        claim=(
            "Does a language-pretrained DT route a different share of what its blocks write into "
            "the action through attention heads (rather than MLPs) than a random-init one?"
        ),
        short="attention share of the action",
        statistic="sum |head contributions| / sum |head + MLP contributions| to the action",
        expect="two-sided",  # a question, not a claim of the paper
        value=attention_share,
    ),
    reads=READS,
)
