"""Attention distance of a run across fine-tuning epochs (paper analysis 7).

The paper trains with K=1 and probes with K=20 windows: the question is how far back a model
*would* look, and how much fine-tuning changes that. dtlens reads each head's own causal,
padding-masked pattern (`hook_pattern`), and its `change` is that of the mean over samples,
|mean d_e - mean d_0|. `paper_variant=True` adds the released code's computation
(``analysis/section-56-dependence-on-context/compute_attention_distance.py``): each sample's
distance by the released formula (one d_model-wide "head" rebuilt from q and k, softmax before the
causal mask, mean over the whole T x T matrix; `paper_distance`) and each sample's own change
|d_e - d_0| (`paper_change`), which the paper's figure box-plots per block.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import einops
import numpy as np
import xarray as xr

from dtlens.capture.activations import capture
from dtlens.diagnostics.attention import (
    attention_distance,
    change_of_mean,
    mean_over_samples,
    paper_variant_from_qk,
    per_sample_change,
)
from dtlens.diagnostics.contract import Diagnostic, Finding, Reads, Table
from dtlens.plotting import panels, save_figure
from dtlens.train.run import Run


def attention_distances(
    run: Run,
    epochs: Sequence[int] | None = None,
    context_len: int = 20,
    samples: int | None = None,
    paper_variant: bool = False,
) -> xr.Dataset:
    """Per epoch, layer and head: mean attention distance in tokens and timesteps (mean over
    valid queries, then samples), and its change |mean d(e) - mean d(first epoch)|. With
    `paper_variant`, per epoch, sample and layer: the released `paper_distance` and its
    per-sample change `paper_change` = |d(e) - d(first epoch)|; `paper_change_mean` averages that
    over samples (the released figure shows its spread; both in the released units)."""
    have = run.epochs()
    if epochs is not None:  # epochs past the run's last (a preset's schedule) are skipped
        epochs = [e for e in epochs if e == -1 or e <= have[-1]] if have else list(epochs)
    epochs = run.resolve_epochs(list(epochs) if epochs is not None else None)
    batch = run.windows(samples, context_len)
    hooks = ["pattern", "q", "k"] if paper_variant else ["pattern"]
    per_epoch, first, paper_first = [], None, None
    for epoch in epochs:
        cap = capture(run.load_model(epoch), batch, hooks)
        pattern, valid = cap["pattern"].values, cap["valid"].values
        layers = pattern.swapaxes(0, 1)  # float64 copies of one layer at a time
        d = np.stack([attention_distance(p, query_mask=valid) for p in layers], 1)  # s, l, head
        first = d if first is None else first
        out = {
            "distance": (("layer", "head"), mean_over_samples(d)),
            "change": (("layer", "head"), change_of_mean(d, first)),
        }
        if paper_variant:
            paper = _paper_variant(cap)  # (sample, layer)
            paper_first = paper if paper_first is None else paper_first
            out["paper_distance"] = (("sample", "layer"), paper)
            out["paper_change"] = (("sample", "layer"), per_sample_change(paper, paper_first))
        per_epoch.append(xr.Dataset(out, coords={"layer": cap.layer.values}))
    ds = xr.concat(per_epoch, dim=xr.DataArray(epochs, dims="epoch", name="epoch"))
    ds["distance_timestep"] = ds["distance"] / 3
    ds["change_timestep"] = ds["change"] / 3
    if paper_variant:
        ds["paper_change_mean"] = ds["paper_change"].mean("sample")
    ds.attrs.update(
        run=run.name,
        init=run.train_config.init,
        context_len=context_len,
        trained_context_len=run.train_config.context_len,
        samples=len(batch),
    )
    return ds


def _paper_variant(cap: xr.Dataset) -> np.ndarray:
    """(sample, layer): the released code's distance from q and k with the heads concatenated
    (exactly the q and k slices of GPT-2's c_attn output), padding ignored as the code does."""
    q = einops.rearrange(cap["q"].values, "s l p h d -> s l p (h d)")
    k = einops.rearrange(cap["k"].values, "s l p h d -> s l p (h d)")
    return paper_variant_from_qk(q, k)


def plot_attention(ds: xr.Dataset, path: str | Path) -> Path:
    """Mean distance (over heads, in timesteps) per block across epochs, and each head's change
    from the first epoch at the last one; with the paper variant, a third panel box-plots the
    released per-sample change per block, as the paper's figure."""
    paper = "paper_change" in ds
    fig, axes = panels(1, 3 if paper else 2, size=(4.5, 3.4))
    ax = axes[0, 0]
    for layer in ds.layer.values:
        ax.plot(
            ds.epoch,
            ds.distance_timestep.sel(layer=layer).mean("head"),
            marker="o",
            label=f"block {layer}",
        )
    ax.set(xlabel="epoch", ylabel="attention distance (timesteps)", title="mean over heads")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    last = ds.isel(epoch=-1)
    for layer in ds.layer.values:
        heads = last.change_timestep.sel(layer=layer).values
        ax.scatter(np.full(len(heads), layer), heads, s=12, color="C0")
    ax.plot(ds.layer, last.change_timestep.mean("head"), color="C0", label="per head (mean)")
    span = f"epoch {int(ds.epoch[0])} -> {int(ds.epoch[-1])}"
    ax.set(xlabel="block", ylabel="|change of the mean| (timesteps)", title=span)
    ax.legend(fontsize=7)
    if paper:
        ax = axes[0, 2]
        ax.boxplot(last.paper_change.transpose("sample", "layer").values)
        ax.set_xticks(range(1, ds.sizes["layer"] + 1), [str(int(x)) for x in ds.layer.values])
        ax.set(xlabel="block", ylabel="per-sample |d_e - d_0|", title=f"paper's formula, {span}")
    fig.suptitle(
        f"{ds.attrs.get('run', '')}: trained with K={ds.attrs.get('trained_context_len')}"
        f", probed with K={ds.attrs.get('context_len')}",
        fontsize=9,
    )
    return save_figure(fig, path)


def summary(ds: xr.Dataset) -> Table:
    paper = "paper_change" in ds
    rows = []
    for layer in ds.layer.values:
        d = ds.distance_timestep.sel(layer=layer).mean("head").values
        last = float(ds.change_timestep.sel(layer=layer).isel(epoch=-1).mean())
        row = [int(layer), *map(float, d), last]
        if paper:
            per_sample = ds.paper_change.sel(layer=layer).isel(epoch=-1).values
            row += [float(per_sample.mean()), float(np.median(per_sample))]
        rows.append(row)
    title = (
        f"attention distance of {ds.attrs['run']} (timesteps, mean over heads), probed with "
        f"K={ds.attrs['context_len']}, {ds.attrs['samples']} samples"
    )
    if paper:
        title += "; paper's formula: per-sample |d_e - d_0| in the released units"
    header = ["block", *[f"epoch {int(e)}" for e in ds.epoch.values], "|change|"]
    if paper:
        header += ["paper |change|, mean", "paper |change|, median"]
    return Table(title, header, rows)


def mean_change(ds: xr.Dataset) -> float:
    """Mean over blocks and heads of |mean d(last epoch) - mean d(0)|, in timesteps."""
    return float(ds.change_timestep.isel(epoch=-1).mean())


def paper_mean_change(ds: xr.Dataset) -> float:
    """The statistic of the paper's figure when the paper variant was computed: the mean over
    samples and blocks of each sample's |d_e - d_0| by the released formula (`paper_change`,
    released units), first epoch to last; else `mean_change`."""
    if "paper_change" not in ds:
        return mean_change(ds)
    return float(ds.paper_change.isel(epoch=-1).mean())


DIAGNOSTIC = Diagnostic(
    name="attention",
    title="7. Attention distance during fine-tuning",
    compute=attention_distances,
    plot=plot_attention,
    summary=summary,
    finding=Finding(
        claim=(
            "The attention distance of pretrained models changes less during fine-tuning (GPT-2 ~0 "
            "except block 1) than random init's (0.05-0.12)."
        ),
        short="pretrained change less",
        statistic="change of attention distance, epoch 0 to last, K=1 runs; with the paper "
        "variant the released figure's (mean over samples and blocks of the per-sample "
        "|d_e - d_0|, released formula and units), else dtlens's",
        expect="less",
        value=paper_mean_change,
        correct=mean_change,
        correct_statistic="mean over blocks and heads of |mean d_e - mean d_0| (timesteps), "
        "each head's own masked pattern",
    ),
    reads=Reads("no_context", roles=("random", "language"), context=1),
    options=lambda settings, run: {
        "epochs": settings.attention_epochs,
        "paper_variant": settings.paper_variants,
    },
)
