"""The paper's mutual-information analysis on a run: I(X;T) and I(Y;T) per block.

At the last timestep of each probe window (always a real step: windows are left-padded):

- I(X;T), one value per input token type: X = the raw input of that token (the return-to-go
  scalar, the state vector, the action vector), T = the block's output (`resid_post`) at the
  state position, where the DT reads out its action.
- I(Y;T), one value per token type: Y = the target action, T = the block's output at that
  token's position (return, state, action). The action token embeds Y itself, so I(Y;T) there is
  high by construction; the state position is the informative one.

Every (quantity, block, token type) is estimated with several seeds: `mi` keeps every seed's
value, NaN where the estimator diverged; `mean` and `std` are over the others and `diverged`
counts them. Critics (MINE, InfoNCE) train on half the samples and are scored on the other half;
`train_mean` is their optimistic bound on the training half.
`paper=True` reproduces the paper's protocol: MINE (3 x 400, 1000 iterations, batch 50) trained
and evaluated on the same probe samples, one seed (`preset="paper"` of `mutual_info.estimate`).

`paper_variant=True` adds `paper_mi(quantity, block, context)`: the released code's sites
(``mine-pytorch/util_to_save_mi.py:run_to_save_mi`` on activations saved by
``analysis/section-52-mutual-information/save_activation.py``). T is a block's MLP branch output
(``{block}.mlp.dropout``, eval mode: `mlp_out`), not `resid_post`; for every context position
3 step + i (i = return, state, action; the last action skipped: 3K - 1 positions),
I(X;T) takes X = that token's input at that step and T at position -2 (the last state), and
I(Y;T) takes Y = the last action and T at that position. One seed, no null, on the probe batch
(the released code's 100 samples), with the estimator of the main analysis (`paper=True`: MINE).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from jaxtyping import Float

import dtlens
from dtlens.capture import capture
from dtlens.data.windows import Batch
from dtlens.diagnostics.contract import Diagnostic, Finding, Reads, Table
from dtlens.diagnostics.mutual_info import DEFAULT_METHOD, estimate, permutation_null
from dtlens.errors import DtlensError
from dtlens.model.dt import TOKEN_TYPES
from dtlens.plotting import panels, save_figure
from dtlens.train.run import Run

QUANTITIES = ("I(X;T)", "I(Y;T)")


def default_blocks(n_layers: int) -> list[int]:
    """First, middle and last block (the paper's 0/6/11 for GPT-2, 0/12/23 for ImageGPT)."""
    return sorted({0, n_layers // 2, n_layers - 1})


def last_step(resid: xr.DataArray, token_type: str) -> Float[np.ndarray, "sample d_model"]:
    """The activations at the last timestep's `token_type` position."""
    at = (resid.timestep == resid.timestep.max()) & (resid.token_type == token_type)
    return resid.isel(position=int(np.flatnonzero(at.values)[0])).values


def information(
    resid_post: xr.DataArray,
    batch: Batch,
    method: str | None = None,
    seeds: list[int] | None = None,
    null_shuffles: int = 5,
    **options: Any,
) -> xr.Dataset:
    """I(X;T) and I(Y;T) (see the module docstring) for every `layer` of `resid_post`
    (sample, layer, position, d_model) captured on `batch`, each with a permutation null of
    `null_shuffles` shuffles of X's rows (0: none). `method=None`: the calibrated default."""
    seeds = [0, 1, 2] if seeds is None else list(seeds)
    method_options = options | ({} if method is None else {"method": method})
    inputs = {
        "return": batch.returns_to_go[:, -1],
        "state": batch.states[:, -1],
        "action": batch.actions[:, -1],
    }
    target = batch.actions[:, -1]
    shape = (len(QUANTITIES), resid_post.sizes["layer"], len(TOKEN_TYPES))
    values = np.full((*shape, len(seeds)), np.nan)
    train = np.full(shape, np.nan)
    null = np.full((*shape, max(null_shuffles, 1)), np.nan)
    for b, layer in enumerate(resid_post.layer.values):
        resid = resid_post.sel(layer=layer)
        at_state = last_step(resid, "state")
        for t, token in enumerate(TOKEN_TYPES):
            pairs = ((inputs[token], at_state), (target, last_step(resid, token)))
            for q, (x, y) in enumerate(pairs):
                result = estimate(x, y, seeds=seeds, **method_options)
                values[q, b, t] = result.values
                train[q, b, t] = np.nan if result.train_value is None else result.train_value
                if null_shuffles:
                    null[q, b, t] = permutation_null(x, y, null_shuffles, **method_options)
    values[~np.isfinite(values)] = np.nan
    count = np.isfinite(values).sum(axis=-1)
    mean = np.nansum(values, axis=-1) / np.maximum(count, 1)
    sq = np.nansum((values - mean[..., None]) ** 2, axis=-1)
    null_mean = np.nanmean(null, axis=-1) if null_shuffles else np.full(shape, np.nan)
    dims = ("quantity", "block", "token_type")
    return xr.Dataset(
        {
            "mi": (dims + ("seed",), values),
            "mean": (dims, np.where(count > 0, mean, np.nan)),
            "std": (dims, np.where(count > 1, np.sqrt(sq / np.maximum(count - 1, 1)), np.nan)),
            "diverged": (dims, len(seeds) - count),
            "train_mean": (dims, train),
            "null": (dims + ("shuffle",), null),
            "null_mean": (dims, null_mean),
            "above_null": (dims, np.where(count > 0, mean, np.nan) - null_mean),
        },
        coords={
            "quantity": list(QUANTITIES),
            "block": resid_post.layer.values,
            "token_type": list(TOKEN_TYPES),
            "seed": seeds,
            "shuffle": np.arange(null.shape[-1]),
        },
        attrs={
            "method": method or DEFAULT_METHOD,
            "options": json.dumps(options, sort_keys=True),
            "null_shuffles": null_shuffles,
            "units": "nats",
        },
    )


def released_positions(steps: int) -> list[tuple[int, int]]:
    """(step, token index) of the released MI's context positions: every token of `steps`
    timesteps but the last action."""
    return [(t, i) for t in range(steps) for i in range(3) if (t, i) != (steps - 1, 2)]


def paper_information(
    mlp_out: xr.DataArray,
    batch: Batch,
    method: str | None = None,
    seed: int = 0,
    **options: Any,
) -> xr.DataArray:
    """`paper_mi(quantity, block, context)`, the released MI (see the module docstring), for
    every `layer` of `mlp_out` (sample, layer, position, d_model) captured on `batch`; NaN where
    the estimator fails (a constant input at a padded step), as the released code's."""
    method_options = options | ({} if method is None else {"method": method})
    inputs = (batch.returns_to_go, batch.states, batch.actions)
    target = batch.actions[:, -1]
    positions = released_positions(batch.states.shape[1])
    out = np.full((len(QUANTITIES), mlp_out.sizes["layer"], len(positions)), np.nan)
    for b, layer in enumerate(mlp_out.layer.values):
        t = mlp_out.sel(layer=layer).values
        for c, (step, i) in enumerate(positions):
            pairs = ((inputs[i][:, step], t[:, -2]), (target, t[:, 3 * step + i]))
            for q, (x, y) in enumerate(pairs):
                try:  # as the released try/except: NaN where the estimator fails
                    out[q, b, c] = estimate(x, y, seeds=[seed], **method_options).values[0]
                except DtlensError:
                    pass
    out[~np.isfinite(out)] = np.nan
    return xr.DataArray(
        out,
        dims=("quantity", "block", "context"),
        coords={
            "quantity": list(QUANTITIES),
            "block": mlp_out.layer.values,
            "context": [3 * step + i for step, i in positions],
            "context_step": ("context", [step for step, _ in positions]),
            "context_token": ("context", [TOKEN_TYPES[i] for _, i in positions]),
        },
    )


def compute_mutual_info(
    run: Run,
    epoch: int = -1,
    blocks: list[int] | None = None,
    method: str | None = None,
    seeds: int = 3,
    seed: int = 0,
    samples: int | None = None,
    null_shuffles: int = 5,
    paper: bool = False,
    paper_variant: bool = False,
    **options: Any,
) -> xr.Dataset:
    """I(X;T) and I(Y;T) of `run`'s checkpoint `epoch` (-1: last) at `blocks` (default first,
    middle, last) on its probe batch (or `samples` windows drawn like it), with `seeds` seeds
    from `seed` and a permutation null. `paper=True`: MINE with the paper's protocol, one seed.
    `paper_variant`: also `paper_mi`, on the released code's sites."""
    if paper:
        if method not in (None, "mine"):
            raise DtlensError(f"--paper reproduces the paper's MINE; it cannot use {method}")
        method, options, seeds = "mine", {"preset": "paper"} | options, 1
    if seeds < 1:
        raise DtlensError(f"--seeds must be at least 1, got {seeds}")
    if null_shuffles < 0:
        raise DtlensError(f"--null-shuffles must be at least 0, got {null_shuffles}")
    epoch = run.resolve_epochs([epoch])[0]
    model = run.load_model(epoch)
    n_layers = model.cfg.n_layers
    blocks = default_blocks(n_layers) if blocks is None else list(dict.fromkeys(blocks))
    bad = [b for b in blocks if not 0 <= b < n_layers]
    if bad:
        raise DtlensError(f"no block {bad} in a {n_layers}-block model (blocks 0..{n_layers - 1})")
    batch = run.windows(samples)
    acts = capture(model, batch, hooks=[f"backbone.blocks.{b}.hook_resid_post" for b in blocks])
    ds = information(
        acts.resid_post.sel(layer=blocks),
        batch,
        method,
        list(range(seed, seed + seeds)),
        null_shuffles,
        **options,
    )
    if paper_variant:
        probe = run.windows()
        mlp_out = capture(model, probe, hooks=[f"backbone.blocks.{b}.hook_mlp_out" for b in blocks])
        ds["paper_mi"] = paper_information(
            mlp_out.mlp_out.sel(layer=blocks), probe, method, seed, **options
        )
    t = run.train_config
    ds.attrs |= {
        "run": run.name,
        "epoch": epoch,
        "init": t.init,
        "dataset": t.dataset,
        "samples": len(batch),
        "paper": int(paper),
        "probe_hash": acts.attrs["probe_hash"],
        "dtlens_version": dtlens.__version__,
    }
    return ds


def plot_mutual_info(ds: xr.Dataset, path: str | Path) -> Path:
    """One panel per quantity: bars per block and token type, error bars = std over seeds."""
    fig, axes = panels(1, len(ds.quantity), size=(4.2, 3.2))
    blocks = [f"block {b}" for b in ds.block.values]
    x = np.arange(len(blocks))
    width = 0.8 / len(ds.token_type)
    for ax, quantity in zip(axes[0], ds.quantity.values, strict=True):
        q = ds.sel(quantity=quantity)
        for i, token in enumerate(ds.token_type.values):
            t = q.sel(token_type=token)
            offset = (i - (len(ds.token_type) - 1) / 2) * width
            ax.bar(x + offset, t["mean"], width, yerr=np.nan_to_num(t["std"]), label=str(token))
            if "null_mean" in t:
                ax.scatter(x + offset, t["null_mean"], marker="_", s=80, color="black", zorder=3)
            for j, n in enumerate(t["diverged"].values):
                if n:
                    ax.annotate(f"{n} NaN", (x[j] + offset, 0), fontsize=6, ha="center")
        ax.set_xticks(x, blocks, fontsize=8)
        ax.set_ylabel("nats (black dash: permutation null)", fontsize=8)
        what = "input token X" if quantity == QUANTITIES[0] else "position of T"
        ax.set_title(f"{quantity} by {what}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"{ds.attrs.get('run', '')} epoch {ds.attrs.get('epoch', '')}: {ds.attrs['method']}, "
        f"{ds.sizes['seed']} seed(s)",
        fontsize=9,
    )
    return save_figure(fig, path)


def summary(ds: xr.Dataset) -> Table:
    rows = []
    for quantity in ds.quantity.values:
        for block in ds.block.values:
            for token in ds.token_type.values:
                c = ds.sel(quantity=quantity, block=block, token_type=token)
                rows.append(
                    [
                        str(quantity),
                        int(block),
                        str(token),
                        float(c["mean"]),
                        float(c["std"]),
                        float(c["null_mean"]),
                        float(c["above_null"]),
                        int(c["diverged"]),
                    ]
                )
    if "paper_mi" in ds:
        for quantity in ds.quantity.values:
            for block in ds.block.values:
                v = ds["paper_mi"].sel(quantity=quantity, block=block).values
                spread = float(np.nanstd(v)) if np.isfinite(v).any() else np.nan
                rows.append(
                    [
                        str(quantity),
                        int(block),
                        f"paper: mlp_out, {len(v)} positions",
                        float(np.nanmean(v)) if np.isfinite(v).any() else np.nan,
                        spread,
                        "",
                        "",
                        int(np.isnan(v).sum()),
                    ]
                )
    title = (
        f"mutual information of {ds.attrs['run']} epoch {ds.attrs['epoch']} (nats; "
        f"{ds.attrs['method']}, {ds.sizes['seed']} seed(s), {ds.attrs['samples']} samples, "
        f"null of {ds.attrs['null_shuffles']} shuffles)"
    )
    header = ["quantity", "block", "token", "MI", "± std", "null", "MI above null", "diverged"]
    return Table(title, header, rows)


def paper_mean(ds: xr.Dataset) -> float:
    """Mean over quantities, blocks and context positions of the released MI (`paper_mi`) when
    the paper variant was computed; else `mean_above_null`."""
    if "paper_mi" not in ds:
        return mean_above_null(ds)
    return float(np.nanmean(ds["paper_mi"].values))


def mean_above_null(ds: xr.Dataset) -> float:
    """Mean over quantities, blocks and token types of the MI above its permutation null (the
    raw MI when no null was computed)."""
    above = ds["above_null"] if int(ds.attrs.get("null_shuffles", 0)) else ds["mean"]
    return float(above.mean())


DIAGNOSTIC = Diagnostic(
    name="mutual_info",
    title="2. Information about the data (mutual information)",
    compute=compute_mutual_info,
    plot=plot_mutual_info,
    summary=summary,
    finding=Finding(
        claim=(
            "Pretrained models hold less information about the data: MINE estimates of I(X;T) and "
            "I(Y;T) are 1-5 nats for random init, lower for GPT-2, ~0 for ImageGPT."
        ),
        short="pretrained < random",
        statistic="mean MI, I(X;T) and I(Y;T); with the paper variant the released sites' "
        "(MLP branch output, 3K - 1 context positions, probe batch), else dtlens's",
        expect="less",
        value=paper_mean,
        correct=mean_above_null,
        correct_statistic="mean MI above the permutation null of resid_post at the last "
        "timestep, I(X;T) and I(Y;T), blocks and tokens",
    ),
    reads=Reads(),
    options=lambda settings, run: {
        "blocks": settings.mi_blocks,
        "seeds": settings.mi_seeds,
        "samples": settings.mi_samples,
        "paper_variant": settings.paper_variants,
    },
)
