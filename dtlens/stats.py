"""Comparisons over seeds: does one init beat another on a statistic, given a few seeds each?

`compare(a, b, expect)` takes the per-seed values of one statistic under two inits and returns a
`Comparison`: the effect mean(a) - mean(b), a two-sided Welch t interval for it, the one-sided
p-value in the expected direction, and a verdict:

- "holds": the interval excludes 0 on the expected side (expect="less": high < 0;
  expect="greater": low > 0);
- "contradicted": it excludes 0 on the other side;
- "undetermined": it contains 0, or either side has fewer than 2 values (interval and p NaN).

`expect="two-sided"` asks only whether a and b differ (a question, not a claim with a side): the
verdict is "holds" when the interval excludes 0 on either side (the sign of `effect` says which),
"undetermined" otherwise, never "contradicted"; p is two-sided.

Why Welch t and not a bootstrap: with 3-5 seeds a percentile bootstrap interval of a mean is far
too narrow. It spreads like s * sqrt((n - 1) / n) / sqrt(n) and takes normal quantiles where the
t distribution with few degrees of freedom has much heavier tails: with n = 3 its width is under
half the t interval's (Hesterberg 2015, "What teachers should know about the bootstrap", The
American Statistician 69(4)). Welch's interval does not assume equal variances.

`aggregate({task: (a, b)}, expect)` gives one verdict across tasks whose statistics live on
different scales (see its docstring: Stouffer's combination of the per-task Welch t tests, and the
mean standardised effect with the interval of that test).

NaNs are dropped (a seed that diverged): `n_a`, `n_b` count the values used, while `a`, `b` keep
every value given. Infinite values are refused. When both sides are constant (zero variance) the
t statistic is undefined; then the interval is the point effect (effect, effect) and p is 0 if the
effect lies on the expected side, 1 if on the other (two-sided: 0 either way), and NaN if the
means are equal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy import stats

from dtlens.errors import DtlensError

Expect = Literal["less", "greater", "two-sided"]
Verdict = Literal["holds", "contradicted", "undetermined"]
METHOD = "Welch t"


@dataclass(frozen=True)
class Comparison:
    """The outcome of `compare`: effect = mean(a) - mean(b) with its two-sided interval `ci`."""

    verdict: Verdict
    effect: float
    ci: tuple[float, float]
    p: float
    n_a: int
    n_b: int
    expect: Expect
    method: str
    a: tuple[float, ...]
    b: tuple[float, ...]

    def describe(self) -> str:
        """One line, e.g. "effect -0.12 [-0.2, -0.04], p=0.004, 3 vs 3 seeds: holds"."""
        dropped = len(self.a) + len(self.b) - self.n_a - self.n_b
        parts = [f"effect {self.effect:.3g}"]
        if not math.isnan(self.ci[0]):
            parts[0] += f" [{self.ci[0]:.3g}, {self.ci[1]:.3g}]"
        if not math.isnan(self.p):
            parts.append(f"p={self.p:.2g}")
        seeds = f"{self.n_a} vs {self.n_b} seeds"
        parts.append(seeds + (f" ({dropped} NaN dropped)" if dropped else ""))
        return ", ".join(parts) + f": {self.verdict}"

    def to_dict(self) -> dict:
        """A JSON-ready dict: tuples become lists, NaN becomes None."""
        return {k: _json(v) for k, v in asdict(self).items()}


def _json(v):
    if isinstance(v, tuple | list):
        return [_json(x) for x in v]
    return None if isinstance(v, float) and math.isnan(v) else v


def _values(x: Sequence[float], side: str) -> np.ndarray:
    v = np.asarray(x, dtype=float)
    if v.ndim != 1:
        raise DtlensError(f"compare: {side} must be a flat sequence of per-seed values")
    if np.isinf(v).any():
        raise DtlensError(f"compare: {side} has an infinite value: {v.tolist()}")
    return v[~np.isnan(v)]


def _var_of_mean(v: np.ndarray) -> float:
    """The squared standard error of the mean; exactly 0 for constant values."""
    return 0.0 if np.all(v == v[0]) else float(v.var(ddof=1)) / v.size


def _welch_df(x: np.ndarray, y: np.ndarray) -> float:
    """Welch-Satterthwaite degrees of freedom of mean(x) - mean(y)."""
    va, vb = _var_of_mean(x), _var_of_mean(y)
    return (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))


def _verdict(low: float, high: float, expect: Expect) -> Verdict:
    below, above = high < 0, low > 0
    if expect == "two-sided" and (below or above):
        return "holds"
    if below or above:
        return "holds" if below == (expect == "less") else "contradicted"
    return "undetermined"


def _check(who: str, expect: str, level: float) -> None:
    if expect not in ("less", "greater", "two-sided"):
        raise DtlensError(f"{who}: expect must be 'less', 'greater' or 'two-sided', got {expect!r}")
    if not 0 < level < 1:
        raise DtlensError(f"{who}: level must be in (0, 1), got {level}")


def _t_interval(
    effect: float, se: float, df: float, level: float, expect: Expect
) -> tuple[tuple[float, float], float]:
    """The two-sided t interval of `effect` and its p: one-sided in the expected direction, or
    two-sided."""
    half = float(stats.t.ppf((1 + level) / 2, df)) * se
    t = stats.t(df)
    if expect == "two-sided":
        p = float(2 * t.sf(abs(effect) / se))
    else:
        p = float(t.cdf(effect / se) if expect == "less" else t.sf(effect / se))
    return (effect - half, effect + half), p


def compare(
    a: Sequence[float], b: Sequence[float], expect: Expect = "less", level: float = 0.95
) -> Comparison:
    """Compare per-seed values `a` against `b`, expecting mean(a) `expect` mean(b)."""
    _check("compare", expect, level)
    x, y = _values(a, "a"), _values(b, "b")
    nan = float("nan")
    effect = float(x.mean() - y.mean()) if x.size and y.size else nan
    ci, p = (nan, nan), nan
    if x.size >= 2 and y.size >= 2:
        va, vb = _var_of_mean(x), _var_of_mean(y)
        if va == vb == 0:  # both sides constant: t is undefined
            effect = float(x[0] - y[0])
            ci = (effect, effect)
            expected = {"less": effect < 0, "greater": effect > 0}.get(expect, True)
            p = nan if effect == 0 else 0.0 if expected else 1.0
        else:
            ci, p = _t_interval(effect, math.sqrt(va + vb), _welch_df(x, y), level, expect)
    return Comparison(
        verdict=_verdict(*ci, expect),  # a NaN interval excludes nothing
        effect=effect,
        ci=ci,
        p=p,
        n_a=int(x.size),
        n_b=int(y.size),
        expect=expect,
        method=f"{METHOD}, {level * 100:g}% two-sided",
        a=tuple(float(v) for v in a),
        b=tuple(float(v) for v in b),
    )


AGGREGATE_METHOD = "mean standardised effect over tasks, Stouffer's z of per-task Welch t"


def _z_of_t(t: float, df: float) -> float:
    """The standard normal quantile with the same tail probability as `t` under t(df), accurate in
    both tails."""
    if t > 0:
        return float(stats.norm.isf(stats.t.sf(t, df)))
    return float(stats.norm.ppf(stats.t.cdf(t, df)))


def aggregate(
    per_task: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    expect: Expect = "less",
    level: float = 0.95,
) -> Comparison:
    """One comparison across tasks from each task's per-seed values (a, b).

    The test: each task's Welch t statistic (as in `compare`) is mapped to the standard normal
    quantile of the same tail probability under its t distribution, z_t, and the tasks are
    combined by Stouffer's method, Z = sum_t z_t / sqrt(T), which is standard normal when no task
    differs; p is read from Z (one-sided in the expected direction, or two-sided). For one task
    this is exactly `compare`'s p and verdict.

    The effect: each task's difference of means divided by its pooled within-init standard
    deviation s_t (Cohen's d_t), so that tasks whose statistic lives on another scale count
    equally, averaged over tasks. Its interval is the test-based one (Miettinen 1976): the mean
    d times (1 -+ z_{(1+level)/2} / Z), which excludes 0 exactly when the two-sided test rejects
    at 1 - level, so the verdict reads it as `compare`'s. Where the mean d and Z point opposite
    ways (one task with a very large d, several with smaller ones the other way: the t-to-z map
    compresses large t), size and evidence disagree: the interval is NaN and the verdict
    undetermined, whatever p says.

    Why not a t interval on the mean d_t with each s_t treated as known: with 3 seeds a side the
    per-task t has 4 degrees of freedom and twice the null variance of a z, so such an interval
    called a difference in about 10% of null cases at the 5% level (3 tasks x 3 seeds;
    `tests/test_stats_aggregate.py` checks the calibration). Why not rliable's IQM with stratified
    bootstrap intervals: it needs many runs per task (its bootstrap is the percentile one
    `compare` avoids with 3-5 seeds), and rliable pulls in arch, pandas and seaborn. A task with
    < 2 values a side or zero spread on both sides is left out; `method` names the tasks used and
    `n_a`, `n_b` count their values; `a` and `b` keep every task's values in order.
    """
    _check("aggregate", expect, level)
    used, d, z, n_a, n_b = [], [], [], 0, 0
    for task, (a, b) in per_task.items():
        x, y = _values(a, f"{task} a"), _values(b, f"{task} b")
        if x.size < 2 or y.size < 2:
            continue
        va, vb = _var_of_mean(x), _var_of_mean(y)
        if va == vb == 0:
            continue
        used.append(task)
        n_a, n_b = n_a + x.size, n_b + y.size
        diff = float(x.mean() - y.mean())
        pooled = ((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1)) / (
            x.size + y.size - 2
        )
        d.append(diff / math.sqrt(pooled))
        z.append(_z_of_t(diff / math.sqrt(va + vb), _welch_df(x, y)))
    nan = float("nan")
    effect, ci, p = nan, (nan, nan), nan
    if used:
        effect, big_z = float(np.mean(d)), float(np.sum(z) / math.sqrt(len(z)))
        if expect == "two-sided":
            p = float(2 * stats.norm.sf(abs(big_z)))
        else:
            p = float(stats.norm.cdf(big_z) if expect == "less" else stats.norm.sf(big_z))
        if np.sign(big_z) == np.sign(effect) != 0:  # else the interval stays NaN (see above)
            half = abs(effect / big_z) * float(stats.norm.ppf((1 + level) / 2))
            ci = (effect - half, effect + half)
    every_a = [float(v) for a, _ in per_task.values() for v in a]
    every_b = [float(v) for _, b in per_task.values() for v in b]
    return Comparison(
        verdict=_verdict(*ci, expect),
        effect=effect,
        ci=ci,
        p=p,
        n_a=n_a,
        n_b=n_b,
        expect=expect,
        method=f"{AGGREGATE_METHOD} over {', '.join(used) or 'no task'}, "
        f"{level * 100:g}% two-sided",
        a=tuple(every_a),
        b=tuple(every_b),
    )
