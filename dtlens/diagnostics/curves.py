"""Learning curves of finished runs: smoothing, area under the curve, time to converge."""

from __future__ import annotations

import numpy as np
import xarray as xr

from dtlens.io import open_netcdf
from dtlens.train.run import Run

CURVES = ("action_error", "return_mean", "score_mean")


def ema(x: np.ndarray, alpha: float = 0.8) -> np.ndarray:
    """Exponential moving average s_t = alpha s_{t-1} + (1 - alpha) x_t, s_0 = x_0 (as the
    paper's and TensorBoard's smoothing); NaNs are carried over, not smoothed into."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    s = np.nan
    for i, v in enumerate(x):
        s = v if np.isnan(s) else (s if np.isnan(v) else alpha * s + (1 - alpha) * v)
        out[i] = s
    return out


def steps_to_fraction(loss: np.ndarray, fraction: float = 0.9, alpha: float = 0.8) -> int:
    """First step (1-based) at which the EMA-smoothed loss has made `fraction` of its total
    decrease, from its first to its last smoothed value. A loss that never decreases: len."""
    s = ema(loss, alpha)
    drop = s[0] - s[-1]
    if not np.isfinite(drop) or drop <= 0:
        return len(s)
    reached = np.flatnonzero(s <= s[0] - fraction * drop)
    return int(reached[0]) + 1


def run_curves(run: Run) -> xr.Dataset:
    """A run's per-epoch curves (action error, return, normalized score) and per-step loss."""
    with open_netcdf(run.path / "metrics.nc") as ds:
        ds = ds.load()
    keep = [v for v in (*CURVES, "loss") if v in ds]
    return ds[keep]


def stack_runs(runs: dict[str, Run], dim: str = "run") -> xr.Dataset:
    """Curves of several runs along a new dimension `dim`, padded with NaN to the longest."""
    parts = [run_curves(r).expand_dims({dim: [label]}) for label, r in runs.items()]
    return xr.concat(parts, dim=dim, join="outer")


def area_under_curve(curve: xr.DataArray, dim: str = "epoch") -> xr.DataArray:
    """Mean of a curve over `dim` (epochs are evenly spaced, so this is the normalised AUC)."""
    return curve.mean(dim, skipna=True)


def last_finite(x: np.ndarray) -> float:
    """The last finite value of `x`, NaN if none."""
    finite = x[np.isfinite(x)]
    return float(finite[-1]) if finite.size else float("nan")
