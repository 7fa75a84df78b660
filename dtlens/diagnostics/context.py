"""Training without context (paper analysis 5): K=1 vs K=20 convergence per init."""

from __future__ import annotations

import numpy as np
import xarray as xr

from dtlens.diagnostics.curves import CURVES, ema, stack_runs, steps_to_fraction
from dtlens.train.run import Run


def compare_context(
    runs: dict[tuple[str, int], Run], fraction: float = 0.9, alpha: float = 0.8
) -> xr.Dataset:
    """Curves of runs keyed by (init, context), along a `run` dim with `init` and `context`
    coordinates, and how fast each converges: `steps_to_fraction` is the first step at which the
    EMA-smoothed action error has made `fraction` of its total decrease; `final_*` are the last
    evaluated epoch's values."""
    ds = stack_runs({f"{init} K={k}": r for (init, k), r in runs.items()})
    ds = ds.assign_coords(init=("run", [i for i, _ in runs]), context=("run", [k for _, k in runs]))
    loss = [ds["loss"].sel(run=r).values for r in ds.run.values]
    ds["loss_smoothed"] = (("run", "step"), np.stack([ema(x, alpha) for x in loss]))
    ds["steps_to_fraction"] = (
        "run",
        [steps_to_fraction(x[np.isfinite(x)], fraction, alpha) for x in loss],
    )
    for var in CURVES:
        if var in ds:
            ds[f"final_{var}"] = (
                "run",
                [_last_finite(ds[var].sel(run=r).values) for r in ds.run.values],
            )
    ds.attrs.update(fraction=fraction, ema=alpha, analysis="no-context")
    return ds


def _last_finite(x: np.ndarray) -> float:
    finite = x[np.isfinite(x)]
    return float(finite[-1]) if finite.size else float("nan")
