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
    # hopper: t = -3 / sqrt(2/3), walker2d: t = -4 / sqrt(8/3), both with Welch df 4;
    # d = -3 and -2, mean -2.5; Z = (z_1 + z_2) / sqrt(2).
    c = aggregate(TASKS, expect="less")
    z = [stats.norm.ppf(stats.t(4).cdf(t)) for t in (-3 / math.sqrt(2 / 3), -4 / math.sqrt(8 / 3))]
    big_z = sum(z) / math.sqrt(2)
    half = 2.5 / abs(big_z) * stats.norm.ppf(0.975)
    assert c.effect == pytest.approx(-2.5)
    assert c.p == pytest.approx(stats.norm.cdf(big_z))
    assert c.ci == pytest.approx((-2.5 - half, -2.5 + half))
    assert c.verdict == "holds"
    assert (c.n_a, c.n_b) == (6, 6) and "hopper, walker2d" in c.method


def test_calibrated_when_no_task_differs():
    """3 tasks x 3 seeds a side, the mini-tasks setting: a difference is called in at most 5%
    of null cases (a t interval on the mean d_t with s_t taken as known called ~10%)."""
    rng = np.random.default_rng(0)
    called = [
        aggregate(
            {
                f"t{t}": (rng.normal(size=3) * (t + 1), rng.normal(size=3) * (t + 1))
                for t in range(3)
            },
            expect="two-sided",
        ).verdict
        == "holds"
        for _ in range(2000)
    ]
    assert 0.02 < np.mean(called) <= 0.055


def test_consistent_small_effects_add_up():
    """Three tasks each undetermined alone, the same direction in all: together they hold."""
    tasks = {
        t: ([0.0, 1.0, 2.0], [1.6 + s, 2.6 + s, 3.6 + s])
        for t, s in (("a", 0), ("b", 0.1), ("c", 0.2))
    }
    assert {compare(a, b, "less").verdict for a, b in tasks.values()} == {"undetermined"}
    assert aggregate(tasks, expect="less").verdict == "holds"
    assert aggregate(tasks, expect="greater").verdict == "contradicted"


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
        assert one.effect * pooled == pytest.approx(ref.effect)
    for a, b in [([1.0, 2.0, 3.0], [2.0, 3.5, 4.0]), ([1.0, 2.0, 3.0], [9.0, 8.0, 8.5])]:
        one, ref = aggregate({"hopper": (a, b)}), compare(a, b)
        assert one.verdict == ref.verdict and one.p == pytest.approx(ref.p)
        assert (one.ci[1] < 0) == (ref.ci[1] < 0)


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


def test_size_and_evidence_in_opposite_directions_is_undetermined():
    """One task with d = +30 and five with d = -4: the mean d is positive, Stouffer's Z (large t
    compressed into z) negative; no side is claimed."""
    tasks = {"big": ([30.0, 31.0, 32.0], [0.0, 1.0, 2.0])}
    tasks |= {f"small{i}": ([0.0, 1.0, 2.0], [4.0, 5.0, 6.0]) for i in range(5)}
    c = aggregate(tasks, expect="less")
    assert c.effect > 0 and c.p < 0.01
    assert c.verdict == "undetermined" and math.isnan(c.ci[0])
