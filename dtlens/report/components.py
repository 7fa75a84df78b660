"""The report's "Which components carry the difference" section: the interp analyses
(`dtlens.interp.registry.INTERP`) of the language- and random-init K=20 runs, over seeds.

These comparisons are not the paper's claims, so their findings ask `expect="two-sided"`:
`dtlens.stats.compare` gives the difference of means, its 95% Welch interval and a two-sided p;
the section says **language > random** when the interval lies above 0, **language < random** when
it lies below, and **no difference shown** otherwise (or with fewer than 2 seeds a side).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dtlens.interp.analyses import ROLES
from dtlens.interp.registry import INTERP
from dtlens.interp.viewer import VIEW_NAME
from dtlens.report.document import Doc
from dtlens.stats import Comparison

TITLE = "Which components carry the difference"


def direction(c: Comparison, a: str, b: str) -> str:
    """What a two-sided comparison of a with b shows, in words."""
    if c.expect != "two-sided":
        raise ValueError(f"direction reads two-sided comparisons, not expect={c.expect!r}")
    if c.verdict != "holds":
        return "no difference shown"
    return f"{a} > {b}" if c.effect > 0 else f"{a} < {b}"


def _mean(v: np.ndarray) -> float:
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def components_section(doc: Doc, study: Any) -> tuple[list[list[str]], dict[str, Comparison]]:
    """The section for one dataset's `study` (a `dtlens.report.report.Study`); returns its rows
    of the report's summary table and each analysis's comparison, by name."""
    doc.h(TITLE, 3)
    doc.p(
        "Beyond the paper: `dtlens.interp` on the K=20 runs of the language and random inits, "
        "every seed. These are not the paper's claims, so each comparison is two-sided: "
        "**language > random** when the 95% Welch interval of the difference of means lies "
        "above 0, **language < random** when it lies below, **no difference shown** otherwise."
    )
    first = study.seeds[0]
    views = [
        f"[{who}, seed {first}]({(run / 'figures' / VIEW_NAME).relative_to(study.root).as_posix()})"
        for who in ROLES
        if (run := study.run_dir("main", who, first)) and (run / "figures" / VIEW_NAME).is_file()
    ]
    if views:
        doc.p("Attention viewers (every head on probe windows): " + ", ".join(views) + ".")
    rows, comparisons = [], {}
    for diag in (d for d in INTERP.values() if d.finding is not None and d.reads is not None):
        f = diag.finding
        doc.h(diag.title, 4)
        doc.p(f"*Question:* {f.claim}")
        if diag.scope == "study":
            doc.figure(diag.png_path(study.folder), diag.title, study.root)
        else:
            for who in ROLES:
                run = study.run_dir("main", who, first)
                if run is not None:
                    doc.figure(
                        diag.png_path(run), f"{diag.name}, {who} init, seed {first}", study.root
                    )
        values = study.per_seed(diag)
        c = f.compare(values.get(f.a, []), values.get(f.b, []))
        comparisons[diag.name] = c
        seen = direction(c, f.a, f.b)
        doc.table(
            ["donor" if diag.scope == "study" else "init"]
            + [f"seed {seed}" for seed in study.seeds]
            + ["mean"],
            [[who, *map(float, v), _mean(v)] for who, v in values.items()],
        )
        interval = (
            f"{c.effect:+.3g} [{c.ci[0]:+.3g}, {c.ci[1]:+.3g}]" if np.isfinite(c.ci[0]) else "n/a"
        )
        p = f"{c.p:.2g}" if np.isfinite(c.p) else "n/a"
        doc.p(
            f"Statistic: {f.statistic}. {f.a} - {f.b}: {interval}, two-sided p {p}, "
            f"{c.n_a} vs {c.n_b} seeds → **{seen}**."
        )
        means = ", ".join(
            f"{who} {_mean(v):.3g}" for who, v in values.items() if np.isfinite(v).any()
        )
        rows.append(
            [
                diag.title,
                "(not in the paper; two-sided)",
                means,
                interval,
                p,
                f"**{seen}**",
            ]
        )
    return rows, comparisons
