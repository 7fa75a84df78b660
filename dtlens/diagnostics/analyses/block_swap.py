"""Single-block replacement (paper analysis 6): a random-init DT with one donor block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from dtlens.diagnostics.contract import Diagnostic, Finding, Reads, RunKey, Table
from dtlens.diagnostics.curves import area_under_curve, ema, stack_runs
from dtlens.plotting import panels, save_figure
from dtlens.train.run import Run

#: The per-seed statistic of the single-block variants together (see `auc_per_seed`).
SINGLE_BLOCKS = "single blocks"


def compare_blocks(runs: dict[RunKey, Run], alpha: float = 0.8) -> xr.Dataset:
    """EMA-smoothed curves and areas under them for runs keyed by (variant as role, seed), variants
    "random", "block 0", ..., "donor": dims (variant, seed, epoch). Lower action error AUC and
    higher return AUC mean faster learning."""
    variants = list(dict.fromkeys(k.role for k in runs))
    seeds = sorted({k.seed for k in runs})
    stacked = stack_runs({f"{k.role}|{k.seed}": r for k, r in runs.items()}, dim="key")
    out = xr.Dataset(coords={"variant": variants, "seed": seeds, "epoch": stacked.epoch.values})
    for var in ("action_error", "return_mean", "score_mean"):
        if var not in stacked:
            continue
        grid = np.full((len(variants), len(seeds), stacked.sizes["epoch"]), np.nan)
        for k, key in zip(runs, stacked.key.values, strict=True):
            grid[variants.index(k.role), seeds.index(k.seed)] = stacked[var].sel(key=key).values
        curve = xr.DataArray(grid, dims=("variant", "seed", "epoch"), coords=out.coords)
        smoothed = xr.apply_ufunc(
            ema,
            curve,
            input_core_dims=[["epoch"]],
            output_core_dims=[["epoch"]],
            kwargs={"alpha": alpha},
            vectorize=True,
        )
        out[var] = curve
        out[f"{var}_smoothed"] = smoothed
        out[f"auc_{var}"] = area_under_curve(smoothed)
    out.attrs.update(ema=alpha, analysis="block-swap")
    return out


def plot_blocks(ds: xr.Dataset, path: str | Path) -> Path:
    """EMA-smoothed action error and return per epoch (mean over seeds), one line per variant."""
    fig, axes = panels(1, 2, size=(5.5, 4))
    axes = axes[0]
    for i, v in enumerate(ds.variant.values):
        style = dict(
            color="black" if v in ("random", "donor") else f"C{i}",
            ls=":" if v == "random" else ("--" if v == "donor" else "-"),
        )
        x = ds.sel(variant=v).mean("seed")
        axes[0].plot(ds.epoch, x.action_error_smoothed, label=str(v), **style)
        if "return_mean_smoothed" in ds:
            axes[1].plot(ds.epoch, x.return_mean_smoothed, label=str(v), **style)
    axes[0].set(xlabel="epoch", ylabel="action MSE (EMA)", yscale="log", title="action error")
    axes[1].set(xlabel="epoch", ylabel="return (EMA)", title="mean return")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"One donor block in a random-init DT (EMA {ds.attrs.get('ema', 0.8)}, "
        f"mean of {ds.sizes['seed']} seed(s))"
    )
    return save_figure(fig, path)


def summary(ds: xr.Dataset) -> Table:
    rows = []
    for v in ds.variant.values:
        x = ds.sel(variant=v)
        ret = (
            x["auc_return_mean"]
            if "auc_return_mean" in ds
            else xr.full_like(x.auc_action_error, np.nan)
        )
        rows.append(
            [
                str(v),
                float(x.auc_action_error.mean()),
                float(x.auc_action_error.std(ddof=1)) if ds.sizes["seed"] > 1 else np.nan,
                float(ret.mean()),
            ]
        )
    header = ["variant", "AUC action MSE (EMA)", "± std over seeds", "AUC return (EMA)"]
    return Table(f"block replacement, {ds.sizes['seed']} seed(s)", header, rows)


def auc_per_seed(ds: xr.Dataset, role: str) -> np.ndarray:
    """Per seed: the action-error AUC of `role` ("random", "block i", "donor"), or for
    SINGLE_BLOCKS the mean over every single-block variant."""
    if role == SINGLE_BLOCKS:
        singles = [v for v in ds.variant.values if str(v).startswith("block")]
        if not singles:
            return np.array([])
        return ds.auc_action_error.sel(variant=singles).mean("variant").values
    if role not in ds.variant.values:
        return np.array([])
    return ds.auc_action_error.sel(variant=role).values


DIAGNOSTIC = Diagnostic(
    name="block_swap",
    title="6. Single-block replacement",
    compute=compare_blocks,
    plot=plot_blocks,
    summary=summary,
    finding=Finding(
        claim=(
            "Replacing one block of a random-init model by the pretrained one already speeds up "
            "learning (action error, mean return); only block 1 fails."
        ),
        short="one pretrained block speeds learning",
        statistic="action-error AUC (EMA 0.8) of the single-block swaps (mean over blocks) vs "
        "all-random, per seed",
        expect="less",
        a=SINGLE_BLOCKS,
        b="random",
        per_seed=auc_per_seed,
    ),
    scope="study",
    reads=Reads("block_swap"),
)
