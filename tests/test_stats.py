"""Seed comparisons: verdicts, the Welch interval and p against hand computation and scipy."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from dtlens.errors import DtlensError
from dtlens.stats import Comparison, compare

LOW = [0.10, 0.12, 0.11]
HIGH = [0.30, 0.33, 0.31]


def welch(a, b, level=0.95):
    """Welch's interval from the formula: effect +- t_{(1+level)/2, df} * se."""
    a, b = np.asarray(a), np.asarray(b)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = stats.t.ppf((1 + level) / 2, df) * se
    effect = a.mean() - b.mean()
    return effect - half, effect + half


@pytest.mark.parametrize(
    "a, b, expect, verdict",
    [
        (LOW, HIGH, "less", "holds"),
        (LOW, HIGH, "greater", "contradicted"),
        (HIGH, LOW, "greater", "holds"),
        (HIGH, LOW, "less", "contradicted"),
        ([0.1, 0.3, 0.2], [0.15, 0.25, 0.22], "less", "undetermined"),
        ([0.1, 0.3, 0.2], [0.15, 0.25, 0.22], "greater", "undetermined"),
        (LOW, HIGH, "two-sided", "holds"),
        (HIGH, LOW, "two-sided", "holds"),
        ([0.1, 0.3, 0.2], [0.15, 0.25, 0.22], "two-sided", "undetermined"),
    ],
)
def test_verdicts_in_both_directions(a, b, expect, verdict):
    c = compare(a, b, expect=expect)
    assert c.verdict == verdict
    assert c.effect == pytest.approx(np.mean(a) - np.mean(b))
    assert c.ci[0] < c.effect < c.ci[1]
    alpha = 0.05 if expect == "two-sided" else 0.025
    assert (c.p < alpha) == (verdict == "holds")  # the 95% interval excludes 0 (on that side)


@pytest.mark.parametrize("a, b", [([0.1], HIGH), (LOW, [0.3]), ([0.1], [0.3])])
def test_one_seed_a_side_is_undetermined(a, b):
    c = compare(a, b)
    assert c.verdict == "undetermined"
    assert c.effect == pytest.approx(np.mean(a) - np.mean(b))
    assert math.isnan(c.ci[0]) and math.isnan(c.ci[1]) and math.isnan(c.p)


def test_interval_equals_hand_computed_welch():
    a, b = [1.0, 2.0, 4.0], [3.0, 5.0, 6.0, 9.0]
    # effect = 7/3 - 23/4 = -41/12; se^2 = 7/3 / 3 + 6.25 / 4
    c = compare(a, b, expect="less")
    assert c.effect == pytest.approx(-41 / 12)
    assert c.ci == pytest.approx(welch(a, b))
    assert compare(a, b, level=0.8).ci == pytest.approx(welch(a, b, level=0.8))
    assert c.ci[0] < 0 < c.ci[1] and c.verdict == "undetermined"
    assert c.method == "Welch t, 95% two-sided"


@pytest.mark.parametrize("expect", ["less", "greater", "two-sided"])
def test_p_equals_scipy_welch_test(expect):
    a, b = [0.2, 0.25, 0.31, 0.22], [0.28, 0.35, 0.3]
    ref = stats.ttest_ind(a, b, equal_var=False, alternative=expect)
    assert compare(a, b, expect=expect).p == pytest.approx(ref.pvalue, rel=1e-12)
    assert compare(b, a, expect=expect).p == pytest.approx(
        stats.ttest_ind(b, a, equal_var=False, alternative=expect).pvalue, rel=1e-12
    )


def test_two_sided_is_never_contradicted():
    """A difference on either side answers the two-sided question; the sign says which."""
    for a, b in [(LOW, HIGH), (HIGH, LOW)]:
        c = compare(a, b, expect="two-sided")
        assert c.verdict == "holds" and np.sign(c.effect) == np.sign(np.mean(a) - np.mean(b))
    constant = compare([0.3, 0.3], [0.1, 0.1, 0.1], expect="two-sided")
    assert (constant.verdict, constant.p) == ("holds", 0.0)


def test_nans_are_dropped_and_counted():
    a, b = [0.10, float("nan"), 0.12, 0.11], [0.30, 0.33, float("nan"), 0.31]
    c = compare(a, b)
    ref = compare(LOW, HIGH)
    assert (c.n_a, c.n_b) == (3, 3)
    assert (c.effect, c.ci, c.p, c.verdict) == (ref.effect, ref.ci, ref.p, ref.verdict)
    assert len(c.a) == 4 and math.isnan(c.a[1])
    assert "3 vs 3 seeds (2 NaN dropped)" in c.describe()
    only_one_left = compare([0.1, float("nan")], HIGH)
    assert only_one_left.n_a == 1 and only_one_left.verdict == "undetermined"


@pytest.mark.parametrize(
    "expect, verdict, p",
    [("less", "holds", 0.0), ("greater", "contradicted", 1.0), ("two-sided", "holds", 0.0)],
)
def test_zero_variance_on_both_sides(expect, verdict, p):
    c = compare([0.1, 0.1, 0.1], [0.3, 0.3], expect=expect)
    assert c.ci == (c.effect, c.effect) and c.effect == pytest.approx(-0.2)
    assert (c.verdict, c.p) == (verdict, p)


def test_zero_variance_equal_means_is_undetermined():
    c = compare([0.5, 0.5], [0.5, 0.5, 0.5])
    assert c.verdict == "undetermined" and c.ci == (0.0, 0.0) and math.isnan(c.p)


def test_zero_variance_on_one_side_uses_welch():
    a, b = [0.1, 0.1, 0.1], [0.3, 0.35, 0.31]
    c = compare(a, b)
    assert c.ci == pytest.approx(welch(a, b)) and c.verdict == "holds"


def test_describe_and_json():
    c = compare(LOW, HIGH)
    line = c.describe()
    assert line.startswith("effect -0.203 [") and line.endswith("3 vs 3 seeds: holds")
    assert f"p={c.p:.2g}" in line and "\n" not in line
    d = json.loads(json.dumps(c.to_dict(), allow_nan=False))
    assert d["verdict"] == "holds" and d["ci"] == list(c.ci) and d["a"] == LOW
    one = json.loads(json.dumps(compare([0.1], HIGH).to_dict(), allow_nan=False))
    assert one["ci"] == [None, None] and one["p"] is None
    assert compare([0.1], HIGH).describe() == "effect -0.213, 1 vs 3 seeds: undetermined"


def test_comparison_is_frozen():
    c = compare(LOW, HIGH)
    assert isinstance(c, Comparison)
    with pytest.raises(AttributeError):
        c.verdict = "contradicted"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(a=LOW, b=HIGH, expect="lower"), "expect must be"),
        (dict(a=LOW, b=HIGH, level=95), "level must be"),
        (dict(a=[0.1, float("inf")], b=HIGH), "infinite"),
        (dict(a=[[0.1, 0.2]], b=HIGH), "flat sequence"),
    ],
)
def test_bad_input_is_one_line(kwargs, message):
    with pytest.raises(DtlensError, match=message) as err:
        compare(**kwargs)
    assert "\n" not in str(err.value)


def test_imports_neither_torch_nor_xarray():
    code = "import sys, dtlens.stats; print(any(m in sys.modules for m in ('torch', 'xarray')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
