"""Attention distance of a run across fine-tuning epochs (paper analysis 7).

The paper trains with K=1 and probes with K=20 windows: the question is how far back a model
*would* look, and how much fine-tuning changes that. dtlens reads each head's own causal,
padding-masked pattern (`hook_pattern`); `paper_variant=True` adds the released code's formula
(one d_model-wide "head" rebuilt from q and k, softmax before the causal mask, mean over the whole
T x T matrix) so both can be shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import einops
import numpy as np
import xarray as xr

from dtlens.capture.activations import capture
from dtlens.data import load_dataset, probe_batch
from dtlens.data.windows import Batch
from dtlens.diagnostics.attention import attention_distance, paper_variant_from_qk
from dtlens.train.run import Run


def probe_windows(run: Run, context_len: int = 20, samples: int | None = None) -> Batch:
    """Windows of `context_len` steps drawn as the run's probe (same dataset, seed, state
    normalisation), whatever context the run was trained with."""
    t, data = run.config["train"], run.config["data"]
    return probe_batch(
        load_dataset(t["dataset"], env_id=t.get("env_id")),
        n=samples or t["probe_size"],
        context_len=context_len,
        seed=t["probe_seed"],
        rtg_scale=t["rtg_scale"],
        max_ep_len=t["max_ep_len"],
        state_mean=np.asarray(data["state_mean"]),
        state_std=np.asarray(data["state_std"]),
    )


def attention_distances(
    run: Run,
    epochs: Sequence[int] | None = None,
    context_len: int = 20,
    samples: int | None = None,
    paper_variant: bool = False,
) -> xr.Dataset:
    """Per epoch, layer and head: mean attention distance in tokens and timesteps (mean over
    valid queries, then samples), and its change |d(e) - d(first epoch)|."""
    epochs = run.resolve_epochs(list(epochs) if epochs is not None else None)
    batch = probe_windows(run, context_len, samples)
    hooks = ["pattern", "q", "k"] if paper_variant else ["pattern"]
    per_epoch = []
    for epoch in epochs:
        cap = capture(run.load_model(epoch), batch, hooks)
        valid = cap["valid"].values[:, None, :]  # (sample, 1, query) against (sample, layer, ...)
        d = attention_distance(cap["pattern"].values, query_mask=valid)  # (sample, layer, head)
        out = {"distance": (("layer", "head"), np.nanmean(d, axis=0))}
        if paper_variant:
            out["paper_distance"] = ("layer", _paper_variant(cap).mean(axis=0))
        per_epoch.append(xr.Dataset(out, coords={"layer": cap.layer.values}))
    ds = xr.concat(per_epoch, dim=xr.DataArray(epochs, dims="epoch", name="epoch"))
    ds["distance_timestep"] = ds["distance"] / 3
    ds["change"] = abs(ds["distance"] - ds["distance"].isel(epoch=0))
    ds["change_timestep"] = ds["change"] / 3
    if paper_variant:
        ds["paper_change"] = abs(ds["paper_distance"] - ds["paper_distance"].isel(epoch=0))
    ds.attrs.update(
        run=run.name,
        init=run.config["train"]["init"],
        context_len=context_len,
        trained_context_len=run.config["train"]["context_len"],
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
    from the first epoch at the last one; the paper variant's change dashed if present."""
    from dtlens.report.figures import panels, save_figure

    fig, axes = panels(1, 2, size=(4.5, 3.4))
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
    if "paper_change" in ds:
        ax.plot(ds.layer, last.paper_change / 3, color="C3", ls="--", label="paper's formula")
    ax.set(
        xlabel="block",
        ylabel="|change| (timesteps)",
        title=f"epoch {int(ds.epoch[0])} -> {int(ds.epoch[-1])}",
    )
    ax.legend(fontsize=7)
    fig.suptitle(
        f"{ds.attrs.get('run', '')}: trained with K={ds.attrs.get('trained_context_len')}"
        f", probed with K={ds.attrs.get('context_len')}",
        fontsize=9,
    )
    return save_figure(fig, path)
