"""The cross_patching analysis (study scope): each block output of a language-init run patched
into the random-init run of the same seed, against another seed's random run as control."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr

from dtlens.diagnostics.contract import Diagnostic, Finding, RunKey, Table
from dtlens.errors import DtlensError
from dtlens.interp.analyses import READS
from dtlens.interp.analyses.patching import labels
from dtlens.interp.patching import activation_patching
from dtlens.plotting import grouped_bars, panels, save_figure
from dtlens.train.run import Run

#: What the reproduction patches across runs: each block's attention and MLP output.
BLOCK_OUTPUTS = ("attn_out", "mlp_out")
#: Probe windows it patches on (the first of the recipient's), to keep `make demo` short.
CROSS_SAMPLES = 50


def _cross_pairs(runs: Mapping[RunKey, Run]) -> list[tuple[int, dict[str, Run], Run]]:
    """Per seed with a random and a language run: the recipient (random, seed) and its donors:
    the language run of the same seed and, as a control, the random run of the next seed (none
    with a single seed)."""
    by_role = {(key.role, key.seed): run for key, run in runs.items()}
    seeds = sorted(seed for role, seed in by_role if role == "random")
    pairs = []
    for i, seed in enumerate(seeds):
        if ("language", seed) not in by_role:
            continue
        donors = {"language": by_role[("language", seed)]}
        if len(seeds) > 1:
            donors["random"] = by_role[("random", seeds[(i + 1) % len(seeds)])]
        pairs.append((seed, donors, by_role[("random", seed)]))
    if not pairs:
        raise DtlensError("cross-run patching needs a language and a random run of one seed")
    return pairs


def compute_cross_patching(
    runs: Mapping[RunKey, Run], samples: int | None = CROSS_SAMPLES
) -> xr.Dataset:
    """Each block's attention and MLP output of a donor run patched into a random-init run on
    the recipient's first `samples` probe windows (at most the probe): donors are the language
    run of the same seed and (control) another seed's random run. `recovered(donor, seed, site)`."""
    pairs, parts = _cross_pairs(runs), []
    for _, donors, recipient in pairs:
        n = None if samples is None else min(samples, recipient.train_config.probe_size)
        model, batch = recipient.load_model(-1), recipient.windows(n)
        per_donor = [
            activation_patching(model, batch, batch, BLOCK_OUTPUTS, donor=d.load_model(-1))[
                ["recovered"]
            ]
            for d in donors.values()
        ]
        parts.append(xr.concat(per_donor, dim=xr.DataArray(list(donors), dims="donor")))
    seeds = [seed for seed, _, _ in pairs]
    ds = xr.concat(parts, dim=xr.DataArray(seeds, dims="seed"))
    return ds.assign_attrs(hooks=",".join(BLOCK_OUTPUTS), recipient="random")


def plot_cross_patching(ds: xr.Dataset, path: str | Path) -> Path:
    fig, axes = panels(1, 1, size=(max(4.0, 0.6 * ds.sizes["site"]), 3.2))
    mean = ds["recovered"].mean("seed")
    grouped_bars(
        axes[0, 0],
        labels(ds),
        {f"{d} donor": mean.sel(donor=d).values for d in ds["donor"].values},
        "donor block outputs patched into random-init runs",
        "fraction of the gap recovered",
    )
    axes[0, 0].tick_params(axis="x", rotation=45)
    return save_figure(fig, path)


def summary(ds: xr.Dataset) -> Table:
    names = labels(ds)
    rows = [
        [f"{d} -> random", names[i], *ds["recovered"].sel(donor=d).isel(site=i).values.tolist()]
        for d in ds["donor"].values
        for i in range(ds.sizes["site"])
    ]
    header = ["donor", "site", *(f"seed {s}" for s in ds["seed"].values)]
    return Table("fraction of the donor-recipient action gap recovered per site", header, rows)


def donor_recovery(ds: xr.Dataset, role: str) -> np.ndarray:
    """Per seed: the recovered fraction of `role`'s donor run, mean over the patched sites."""
    if role not in ds["donor"]:
        return np.full(ds.sizes["seed"], np.nan)
    return ds["recovered"].sel(donor=role).mean("site").values


DIAGNOSTIC = Diagnostic(
    name="cross_patching",
    title="Block outputs patched across runs",
    compute=compute_cross_patching,
    plot=plot_cross_patching,
    summary=summary,
    scope="study",
    finding=Finding(
        claim=(
            "Does a language-pretrained run's block activity, patched into a random-init run, "
            "move its action toward the donor's by a different fraction than another random "
            "run's does?"
        ),
        short="donor activity recovered",
        statistic=(
            "fraction of the donor-recipient action gap recovered by one block output (attention "
            "or MLP) of the donor, mean over block outputs"
        ),
        expect="two-sided",  # a question, not a claim of the paper
        per_seed=donor_recovery,
    ),
    reads=READS,
)
