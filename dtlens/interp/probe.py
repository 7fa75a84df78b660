"""Linear probes: how much of a feature a ridge regression reads off the residual stream, per
layer and token type, on held-out windows, beside the same probe on shuffled targets.

`linear_probe(activations, target)` fits one probe per (layer, token type) on the windows of a
training split and scores R^2 on the other windows (all positions of a window fall on the same
side, so a probe cannot memorise a window). The control probe fits targets shuffled across
windows: its R^2 reads ~0 (or below) when the probe has no shortcut. The probe analysis
(`dtlens.interp.analyses.probe`) probes a run's residual stream (layer 0: the embeddings, layer i:
after block i - 1) for the state features, the return-to-go and the episode timestep of each
token's timestep.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dtlens.errors import DtlensError
from dtlens.model.dt import TOKEN_TYPES

TARGETS = ("state", "return_to_go", "timestep")


def _split(n: int, test_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean test mask over `n` windows."""
    if not 0 < test_fraction < 1:
        raise DtlensError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = max(1, round(test_fraction * n))
    if n - n_test < 2:
        raise DtlensError(f"a probe needs at least 3 windows, got {n}")
    test = np.zeros(n, bool)
    test[rng.permutation(n)[:n_test]] = True
    return test


def _rows(a: xr.DataArray, first: tuple[str, ...]) -> np.ndarray:
    """(sample, rows, features): `first` dims lead, the rest is the feature axis (or 1)."""
    rest = [d for d in a.dims if d not in first]
    if len(rest) > 1:
        raise DtlensError(f"expected at most one feature dim besides {first}, got {rest}")
    v = a.transpose(*first, *rest).values.astype(np.float64)
    return v.reshape(v.shape[0], -1 if len(first) > 1 else 1, v.shape[-1] if rest else 1)


def _fit_score(x: np.ndarray, y: np.ndarray, keep: np.ndarray, test: np.ndarray, alpha: float):
    """Held-out R^2 (uniform over target features) of a ridge probe y ~ x."""
    train_rows, test_rows = keep & ~test[:, None], keep & test[:, None]
    probe = make_pipeline(StandardScaler(), Ridge(alpha=alpha))
    probe.fit(x[train_rows], y[train_rows])
    return float(r2_score(y[test_rows], probe.predict(x[test_rows])))


def linear_probe(
    activations: xr.DataArray,
    target: xr.DataArray,
    valid: xr.DataArray | None = None,
    alpha: float = 1.0,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> xr.Dataset:
    """Held-out R^2 of ridge probes of `target` from `activations`, and of the shuffled control.

    `activations` has dims (sample, [layer], [position], feature) with a `token_type` coordinate
    along `position`; `target` (sample, [position], [target feature]); `valid` (sample, position)
    marks the positions to use (e.g. a capture's `valid`). Returns `r2` and `r2_shuffled` over
    ([layer], [token_type]).
    """
    if "sample" not in activations.dims or "sample" not in target.dims:
        raise DtlensError("activations and target need a 'sample' dim")
    n = activations.sizes["sample"]
    if target.sizes["sample"] != n:
        raise DtlensError(f"target has {target.sizes['sample']} samples, activations {n}")
    if not np.isfinite(activations.values).all() or not np.isfinite(target.values).all():
        raise DtlensError("activations or target hold NaN or infinite values")
    rng = np.random.default_rng(seed)
    test = _split(n, test_fraction, rng)
    shuffle = rng.permutation(n)
    layers = list(activations["layer"].values) if "layer" in activations.dims else [None]
    by_position = "position" in activations.dims
    types = [t for t in TOKEN_TYPES if t in activations["token_type"]] if by_position else [None]
    kinds = activations["token_type"].values if by_position else None

    def rows(a: xr.DataArray, kind: str | None) -> np.ndarray:
        if "position" not in a.dims:
            return _rows(a, ("sample",))
        return _rows(a.isel(position=kinds == kind), ("sample", "position"))

    r2 = np.empty((len(layers), len(types), 2))
    for j, kind in enumerate(types):
        y = rows(target, kind)
        keep = np.ones(y.shape[:2], bool) if valid is None else rows(valid, kind)[..., 0] > 0
        for i, layer in enumerate(layers):
            x = rows(activations if layer is None else activations.sel(layer=layer), kind)
            ys = np.broadcast_to(y, (*x.shape[:2], y.shape[-1]))
            keeps = np.broadcast_to(keep, x.shape[:2])
            for k, order in enumerate((np.arange(n), shuffle)):
                r2[i, j, k] = _fit_score(x, ys[order], keeps, test, alpha)
    dims = ("layer",) * (layers[0] is not None) + ("token_type",) * by_position
    shape = tuple(len(v) for v, d in ((layers, "layer"), (types, "token_type")) if d in dims)
    coords = {"layer": layers, "token_type": types}
    return xr.Dataset(
        {
            "r2": (dims, r2[..., 0].reshape(shape)),
            "r2_shuffled": (dims, r2[..., 1].reshape(shape)),
        },
        coords={d: coords[d] for d in dims},
        attrs={
            "alpha": alpha,
            "test_fraction": test_fraction,
            "seed": seed,
            "test_samples": int(test.sum()),
        },
    )
