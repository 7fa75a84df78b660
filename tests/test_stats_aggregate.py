"""`dtlens.stats.aggregate`: one verdict across tasks, by hand and against `compare`."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from dtlens.errors import DtlensError
from dtlens.stats import aggregate, compare

# Two tasks on different scales whose a is below b: d = -3 and -2 (pooled sds 1 and 2).
TASKS = {
    "hopper": ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]),
    "walker2d": ([0.0, 2.0, 4.0], [4.0, 6.0, 8.0]),
}


def test_two_tasks_by_hand():
    # Effect (-3 - 2) / 2; variance (1/4)(2/3 + 2/3) = 1/3; each of the 4 means contributes
    # 1/12 with 2 df, so Welch-Satterthwaite df = (1/3)^2 / (4 (1/12)^2 / 2) = 8.
    c = aggregate(TASKS, expect="less")
    half = stats.t.ppf(0.975, 8) * math.sqrt(1 / 3)
    assert c.effect == pytest.approx(-2.5)
    assert c.ci == pytest.approx((-2.5 - half, -2.5 + half))
    assert c.p == pytest.approx(stats.t(8).cdf(-2.5 / math.sqrt(1 / 3)))
    assert c.verdict == "holds"
    assert (c.n_a, c.n_b) == (6, 6) and "hopper, walker2d" in c.method


def test_inverted_direction_is_contradicted():
    c = aggregate(TASKS, expect="greater")
    assert c.verdict == "contradicted"
    assert c.p == pytest.approx(1 - aggregate(TASKS, expect="less").p)
    swapped = aggregate({t: (b, a) for t, (a, b) in TASKS.items()}, expect="less")
    assert swapped.verdict == "contradicted" and swapped.effect == pytest.approx(2.5)


def test_one_task_is_compare_in_pooled_sd_units():
    a, b = [0.10, 0.12, 0.11, 0.15], [0.30, 0.33, 0.31]
    pooled = math.sqrt((3 * np.var(a, ddof=1) + 2 * np.var(b, ddof=1)) / 5)
    for expect in ("less", "greater", "two-sided"):
        one, ref = aggregate({"hopper": (a, b)}, expect), compare(a, b, expect)
        assert one.verdict == ref.verdict and one.p == pytest.approx(ref.p)
        assert np.asarray(one.ci) * pooled == pytest.approx(np.asarray(ref.ci))


def test_a_task_on_a_larger_scale_does_not_dominate():
    # Unstandardised, the large task's +1000 would swamp the small tasks' clear -1.
    small = ([0.0, 0.1, -0.1], [1.0, 1.1, 0.9])
    large = ([1000.0, 0.0, 2000.0], [0.0, -1000.0, 1000.0])
    tasks = {"a": small, "b": small, "c": large}
    assert np.mean([np.mean(a) - np.mean(b) for a, b in tasks.values()]) > 0
    c = aggregate(tasks, expect="less")
    assert c.effect < 0 and c.verdict == "holds"
    scaled = aggregate({**tasks, "c": tuple([v / 1000 for v in side] for side in large)})
    assert scaled.effect == pytest.approx(c.effect) and scaled.ci == pytest.approx(c.ci)


def test_opposite_tasks_are_undetermined():
    tasks = {"up": ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]), "down": ([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])}
    c = aggregate(tasks, expect="less")
    assert c.effect == pytest.approx(0.0) and c.verdict == "undetermined"


def test_tasks_without_spread_or_seeds_are_left_out():
    tasks = {
        **TASKS,
        "constant": ([1.0, 1.0], [2.0, 2.0]),
        "one_seed": ([1.0], [5.0, 6.0]),
        "nan": ([np.nan, np.nan, 1.0], [2.0, 3.0, 4.0]),
    }
    c = aggregate(tasks, expect="less")
    ref = aggregate(TASKS, expect="less")
    assert c.effect == pytest.approx(ref.effect) and c.ci == pytest.approx(ref.ci)
    assert "constant" not in c.method and (c.n_a, c.n_b) == (6, 6)
    assert len(c.a) == 6 + 2 + 1 + 3


def test_no_usable_task_is_undetermined():
    c = aggregate({"one_seed": ([1.0], [2.0])}, expect="less")
    assert c.verdict == "undetermined" and math.isnan(c.effect) and math.isnan(c.p)
    assert "no task" in c.method


@pytest.mark.parametrize(
    "kwargs, message",
    [({"expect": "lower"}, "expect must be"), ({"level": 1.0}, "level must be")],
)
def test_bad_input_is_one_line(kwargs, message):
    with pytest.raises(DtlensError, match=message):
        aggregate(TASKS, **kwargs)
    with pytest.raises(DtlensError, match="infinite"):
        aggregate({"hopper": ([1.0, math.inf], [1.0, 2.0])})
