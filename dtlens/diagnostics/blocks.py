"""Single-block replacement (paper analysis 6): a random-init DT with one donor block."""

from __future__ import annotations

import xarray as xr

from dtlens.diagnostics.curves import area_under_curve, ema, stack_runs
from dtlens.train.run import Run


def compare_blocks(runs: dict[str, Run], alpha: float = 0.8) -> xr.Dataset:
    """EMA-smoothed curves and areas under them for labelled runs ("random", "block 0", ...,
    "donor"). Lower action error AUC and higher return AUC mean faster learning."""
    ds = stack_runs(runs, dim="variant")
    out = xr.Dataset(coords={"variant": list(runs), "epoch": ds.epoch.values})
    for var in ("action_error", "return_mean", "score_mean"):
        if var not in ds:
            continue
        smoothed = xr.apply_ufunc(
            ema,
            ds[var],
            input_core_dims=[["epoch"]],
            output_core_dims=[["epoch"]],
            kwargs={"alpha": alpha},
            vectorize=True,
        )
        out[var] = ds[var]
        out[f"{var}_smoothed"] = smoothed
        out[f"auc_{var}"] = area_under_curve(smoothed)
    out.attrs.update(ema=alpha, analysis="block-swap")
    return out
