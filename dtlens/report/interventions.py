"""The report's "What the policy needs" section: each component of the language- and random-init
K=20 runs ablated during evaluation rollouts (`dtlens.interp.analyses.ablation`), and whether losing
it costs the two inits a different share of their normalized return, over seeds.

Per component and seed the statistic is `score_change`, the mean over episodes of the paired
difference ablated - unablated normalized score. Language vs random is a question beyond the
paper, so `dtlens.stats.compare` reads it two-sided (`dtlens.report.components.direction`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from dtlens.interp.analyses import ROLES
from dtlens.interp.analyses.ablation import DIAGNOSTIC as ABLATION
from dtlens.report.components import direction
from dtlens.report.document import Doc
from dtlens.stats import Comparison, compare

TITLE = "What the policy needs"


def _per_seed(results: list[xr.Dataset | None], component: str, variable: str) -> np.ndarray:
    """`variable` of `component` in each seed's result (NaN where it is missing)."""
    return np.asarray(
        [
            float(ds[variable].sel(component=component).mean())
            if ds is not None and component in ds["component"].values
            else np.nan
            for ds in results
        ],
        dtype=float,
    )


def _cell(v: np.ndarray, sign: str = "+") -> str:
    """'mean (seed, seed, ...)' with one decimal."""
    seeds = ", ".join(f"{x:{sign}.1f}" if np.isfinite(x) else "n/a" for x in v)
    mean = f"{np.nanmean(v):{sign}.1f}" if np.isfinite(v).any() else "n/a"
    return f"{mean} ({seeds})"


def policy_section(doc: Doc, study: Any) -> dict[str, Comparison]:
    """The section for one dataset's `study` (a `dtlens.report.report.Study`); returns each
    component's comparison, by component name."""
    doc.h(TITLE, 3)
    results = {
        who: [
            ABLATION.load(run) if (run := study.run_dir("main", who, seed)) else None
            for seed in study.seeds
        ]
        for who in ROLES
    }
    found = [ds for per_role in results.values() for ds in per_role if ds is not None]
    if not found:
        doc.p("*(not available: no ablation results)*")
        return {}
    first = found[0]
    attrs = first.attrs
    doc.p(
        f"Beyond the paper: each component of the K=20 runs {attrs['how']}-ablated in turn "
        f"(statistics over the run's probe windows) during {attrs['episodes']} evaluation episodes "
        f"of at most {attrs['max_steps']} steps, paired with the unablated policy on the same "
        "environment seeds. Per seed: the mean change of normalized score, ablated - unablated. "
        "Language vs random is two-sided: **language > random** (losing the component costs "
        "the language init less) when the 95% Welch interval over seeds lies above 0, "
        "**language < random** when it lies below, **no difference shown** otherwise. One "
        f"run's: `dtlens ablation RUN --components {','.join(map(str, first['component'].values))}"
        f" --how {attrs['how']} --episodes {attrs['episodes']} --max-steps {attrs['max_steps']}`."
    )
    for who in ROLES:
        run = study.run_dir("main", who, study.seeds[0])
        if run is not None:
            doc.figure(
                ABLATION.png_path(run), f"ablation, {who} init, seed {study.seeds[0]}", study.root
            )
    components = list(dict.fromkeys(str(c) for ds in found for c in ds["component"].values))
    a, b = ROLES  # the roles compared
    baseline = [
        _cell(
            np.asarray(
                [np.nan if ds is None else float(ds["baseline_score"].mean()) for ds in results[w]]
            ),
            sign="",
        )
        for w in ROLES
    ]
    rows: list[list[object]] = [["(none: unablated score)", *baseline, "", "", ""]]
    comparisons = {}
    for name in components:
        values = {w: _per_seed(results[w], name, "score_change") for w in ROLES}
        c = compare(values[a], values[b], expect="two-sided")
        comparisons[name] = c
        interval = (
            f"{c.effect:+.1f} [{c.ci[0]:+.1f}, {c.ci[1]:+.1f}]" if np.isfinite(c.ci[0]) else "n/a"
        )
        p = f"{c.p:.2g}" if np.isfinite(c.p) else "n/a"
        rows.append(
            [name, _cell(values[a]), _cell(values[b]), interval, p, f"**{direction(c, a, b)}**"]
        )
    doc.table(
        [
            "ablated",
            f"{a}: score change, mean (per seed)",
            f"{b}: score change, mean (per seed)",
            f"{a} - {b} [95% CI]",
            "two-sided p",
            "reading",
        ],
        rows,
    )
    return comparisons
