"""Where the budget rule would be met: a power law a + b t^-c fitted to each budget run's curve
in budget.json (per task, learning rate and metric), the rule's gap (the window's error at B
against 4 x B) projected from it at each candidate, and the smallest B it projects within the
tolerance. Evidence for choosing a budget (results/laptop/PLAN.md), not a rule: the rule reads
measured errors only.

    .venv/bin/python scripts/budget_projection.py [results/laptop/budget.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.optimize import curve_fit

from dtlens.experiments.laptop_budget import BUDGET_FILE, METRICS
from dtlens.io import load_json

#: Epochs that end before this step are left out of the fit (the 1,000-step warm-up and after).
FIT_FROM = 1500
#: The largest B searched, in steps.
SEARCH_TO = 10**9


def power_law(t: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a + b * t ** (-c)


def fit(curve: list[float], epoch_steps: int) -> tuple[float, float, float]:
    """(a, b, c) of the per-epoch errors, each taken at its epoch's middle step."""
    middles = (np.arange(len(curve)) + 0.5) * epoch_steps
    keep = middles + epoch_steps / 2 >= FIT_FROM
    params, _ = curve_fit(
        power_law, middles[keep], np.asarray(curve)[keep], p0=(0.01, 1.0, 0.5),
        bounds=([0.0, 0.0, 0.01], [np.inf, np.inf, 3.0]), maxfev=20_000,
    )  # fmt: skip
    return tuple(float(p) for p in params)


def window_error(params, step: int, rule: dict) -> float:
    """The rule's error at `step` under the fitted law: the mean over the window's epochs."""
    e = rule["epoch_steps"]
    middles = step - e / 2 - e * np.arange(rule["window"] // e)
    return float(np.mean(power_law(middles, *params)))


def projected_gap(params, b: int, rule: dict) -> float:
    long = window_error(params, b * rule["factor"], rule)
    return (window_error(params, b, rule) - long) / long


def projected_budget(params, rule: dict) -> int | None:
    """The smallest B (whole epochs, searched on a doubling grid then bisected) whose projected
    gap is within the tolerance; None below `SEARCH_TO`."""
    e, ok = rule["epoch_steps"], lambda b: abs(projected_gap(params, b, rule)) <= rule["tolerance"]
    low, high = rule["window"] // e, rule["window"] // e
    while not ok(high * e):
        low, high = high, high * 2
        if high * e > SEARCH_TO:
            return None
    while high - low > 1:  # the gap shrinks as B grows: the first epoch count within tolerance
        mid = (low + high) // 2
        low, high = (low, mid) if ok(mid * e) else (mid, high)
    return high * e


def main(path: Path) -> None:
    for task, entries in load_json(path).items():
        for rate, entry in sorted(entries.items(), key=lambda kv: float(kv[0])):
            rule = entry["rule"]
            for metric in METRICS:
                curve = entry["curves"][metric]
                params = fit(curve, rule["epoch_steps"])
                gaps = ", ".join(
                    f"{b}: {projected_gap(params, b, rule):+.0%}" for b in rule["candidates"]
                )
                b = projected_budget(params, rule)
                print(
                    f"{task} lr {rate} {metric} ({len(curve)} epochs): a={params[0]:.4f} "
                    f"b={params[1]:.3g} c={params[2]:.3f}; projected gap {gaps}; within "
                    f"{rule['tolerance']:.0%} at B = {b if b else f'> {SEARCH_TO:.0e}'}"
                )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else BUDGET_FILE)
