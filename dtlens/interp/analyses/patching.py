"""The patching analysis: `activation_patching` on a run's probe windows (corrupted windows,
or a donor model's activations), its figure and table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from dtlens.diagnostics.contract import Diagnostic, Table
from dtlens.interp.inputs import run_attrs
from dtlens.interp.patching import activation_patching, corrupt_last_state, load_donor
from dtlens.plotting import panels, save_figure
from dtlens.train.run import Run


def site_label(hook: str, layer: int, head: int, position: int) -> str:
    parts = [f"L{layer}" if layer >= 0 else "", f"H{head}" if head >= 0 else ""]
    return "".join(parts) + f" {hook}" + (f" @{position}" if position >= 0 else "")


def labels(ds: xr.Dataset) -> list[str]:
    coords = (ds[c].values for c in ("hook", "layer", "head", "position"))
    return [
        site_label(str(h), int(b), int(hd), int(p)) for h, b, hd, p in zip(*coords, strict=True)
    ]


def compute_patching(
    run: Run,
    donor: str | Path | None = None,
    epoch: int = -1,
    samples: int | None = None,
    hooks: Sequence[str] = ("attn_out", "mlp_out", "z"),
    positions: bool = False,
    seed: int = 0,
) -> xr.Dataset:
    """Patching on `run`'s checkpoint `epoch` over its probe windows. Without a donor: clean =
    the windows, corrupted = the same windows with the last state of another window (seeded).
    With a donor (a run folder or checkpoint): the donor's activations on the same windows."""
    (epoch,) = run.resolve_epochs([epoch])
    model, batch = run.load_model(epoch), run.windows(samples)
    at = list(range(3 * batch.timesteps.shape[1])) if positions else None
    if donor is None:
        ds = activation_patching(model, batch, corrupt_last_state(batch, seed), hooks, at)
        setup = {"corrupted": f"last state from another window (seed {seed})", "donor": ""}
    else:
        donor_model = load_donor(donor, run.device)
        ds = activation_patching(model, batch, batch, hooks, at, donor=donor_model)
        setup = {"corrupted": "none (same windows)", "donor": str(donor)}
    return ds.assign_attrs(setup | run_attrs(run, epoch))


def plot_patching(ds: xr.Dataset, path: str | Path) -> Path:
    """Recovered fraction per site: bars, or layer x position maps per hook when per position."""
    per_position = bool((ds["position"].values >= 0).any())
    if not per_position:
        fig, axes = panels(1, 1, size=(max(4.0, 0.3 * ds.sizes["site"]), 3.2))
        axes[0, 0].bar(labels(ds), ds["recovered"].values, color="C0")
        axes[0, 0].tick_params(axis="x", rotation=90, labelsize=7)
        axes[0, 0].set(ylabel="fraction of the gap recovered")
    else:
        hooks = list(dict.fromkeys(ds["hook"].values))
        fig, axes = panels(len(hooks), 1, size=(7.0, 2.4))
        for ax, hook in zip(axes[:, 0], hooks, strict=True):
            part = ds.isel(site=ds["hook"].values == hook)
            rows = [
                f"{b} {h}" for b, h in zip(part["layer"].values, part["head"].values, strict=True)
            ]
            names = list(dict.fromkeys(rows))
            grid = np.full((len(names), int(part["position"].max()) + 1), np.nan)
            for row, position, value in zip(
                rows, part["position"].values, part["recovered"].values, strict=True
            ):
                grid[names.index(row), position] = value
            image = ax.imshow(grid, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
            ax.set_yticks(
                range(len(names)), [site_label("", *map(int, n.split()), -1) for n in names]
            )
            ax.set(title=hook, xlabel="position (R, s, a per step)")
            fig.colorbar(image, ax=ax)
    fig.suptitle(
        f"activation patching of {ds.attrs.get('run', '')}, epoch {ds.attrs.get('epoch', '')}",
        fontsize=10,
    )
    return save_figure(fig, path)


def summary(ds: xr.Dataset) -> Table:
    gap = float(np.sqrt(((ds["clean_action"] - ds["corrupted_action"]) ** 2).mean()))
    order = np.argsort(-np.abs(np.nan_to_num(ds["recovered"].values)))[:20]
    names = labels(ds)
    rows = [[names[i], float(ds["recovered"].values[i])] for i in order]
    title = (
        f"activation patching of {ds.attrs.get('run', '')} (epoch {ds.attrs.get('epoch', '')}; "
        f"corrupted: {ds.attrs.get('corrupted', '')}; donor: {ds.attrs.get('donor') or 'itself'}"
        f"; RMS gap {gap:.3g}), top sites"
    )
    return Table(title, ["site", "recovered fraction"], rows)


DIAGNOSTIC = Diagnostic(
    name="patching",
    title="Activation patching",
    compute=compute_patching,
    plot=plot_patching,
    summary=summary,
)
