"""Steering a policy along the return-to-go direction: evaluation rollouts with the residual
stream pushed towards the representation of high-return windows (or away from it).

The direction is `steering_vector` of the run's probe windows whose last return-to-go lies above
the median against those below it, at the residual stream after `layer` blocks and the tokens of
`positions`. `RUN/diagnostics/steering.nc` holds, per `scale`, what `rollout_effect` measures
(`score` (scale, episode), `baseline_score`, `score_change`, `score_change_ci`), with the layer,
positions and the vector's norm in its attrs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from dtlens.diagnostics.contract import Diagnostic, Table
from dtlens.errors import DtlensError
from dtlens.interp.inputs import run_attrs
from dtlens.interp.interventions import steer, steering_vector
from dtlens.interp.rollouts import Rollouts, change_errors, change_table, rollout_effect
from dtlens.plotting import panels, save_figure
from dtlens.train.run import Run

DEFAULT_SCALES = (-2.0, -1.0, 1.0, 2.0)


def return_split(run: Run, samples: int | None = None):
    """The run's probe windows whose last return-to-go lies above the median, and those below."""
    windows = run.windows(samples)
    rtg = windows.returns_to_go[:, -1, 0]
    median = rtg.median()
    high, low = torch.nonzero(rtg > median)[:, 0], torch.nonzero(rtg < median)[:, 0]
    if not len(high) or not len(low):
        raise DtlensError(
            f"{run.path}: the probe windows' returns-to-go do not split at the median"
        )
    return windows.index(high), windows.index(low)


def compute_steering(
    run: Run,
    epoch: int = -1,
    layer: int | None = None,
    scales: Sequence[float] = DEFAULT_SCALES,
    positions: str = "state",
    episodes: int | None = None,
    seed: int = 0,
    samples: int | None = None,
    max_steps: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> xr.Dataset:
    """Rollouts of `run`'s checkpoint `epoch` steered by `scale` x the high - low return-to-go
    direction after `layer` blocks (default: the middle one), for every scale, paired with the
    baseline on the same env seeds; episodes of at most `max_steps` (default: the run's)."""
    (epoch,) = run.resolve_epochs([epoch])
    if not scales:
        raise DtlensError("steering needs at least one scale")
    model = run.load_model(epoch)
    layer = model.cfg.n_layers // 2 if layer is None else layer
    vector = steering_vector(model, *return_split(run, samples), layer, positions)
    interventions = {
        f"{s:g}": (lambda m, s=s: steer(m, layer, vector, positions, s)) for s in scales
    }
    ds = rollout_effect(
        model,
        interventions,
        episodes,
        seed,
        rollouts=Rollouts.of(run, max_steps),
        progress=progress,
    )
    ds = ds.rename(intervention="scale").assign_coords(scale=np.asarray(scales, dtype=float))
    return ds.assign_attrs(
        run_attrs(run, epoch)
        | {"layer": layer, "positions": positions, "vector_norm": float(vector.norm())}
    )


def plot_steering(ds: xr.Dataset, path: str | Path) -> Path:
    """The change of normalized score against the steering scale, with 95% intervals."""
    fig, axes = panels(1, 1, size=(4.0, 3.2))
    ax = axes[0, 0]
    ax.errorbar(ds["scale"], ds["score_change"], yerr=change_errors(ds), fmt="o-", capsize=3)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="scale (x high - low return-to-go direction)", ylabel="score change")
    ax.set_title(
        f"steering {ds.attrs.get('run', '')} after {ds.attrs.get('layer', '')} blocks at "
        f"{ds.attrs.get('positions', '')} tokens (|v| = {ds.attrs.get('vector_norm', 0):.2f})",
        fontsize=8,
    )
    return save_figure(fig, path)


def summary(ds: xr.Dataset) -> Table:
    title = (
        f"steering {ds.attrs.get('run', '')} (epoch {ds.attrs.get('epoch', '')}) after "
        f"{ds.attrs.get('layer', '')} blocks, baseline score "
        f"{float(ds['baseline_score'].mean()):.1f} over {ds.attrs.get('episodes', '')} episodes"
    )
    return change_table(ds, "scale", title)


DIAGNOSTIC = Diagnostic(
    name="steering",
    title="Steering along the return-to-go direction",
    compute=compute_steering,
    plot=plot_steering,
    summary=summary,
)
