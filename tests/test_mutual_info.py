import math

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from dtlens.diagnostics.mutual_info import (
    DEFAULT_METHOD,
    estimate,
    fitted_dims,
    gaussian_mi,
    permutation_null,
    random_gaussian_cov,
)
from dtlens.errors import DtlensError


@pytest.fixture(autouse=True)
def one_thread():
    """Small problems: one BLAS / torch thread beats two contending for two shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)


def gaussian_case(d: int, n: int = 3000, seed: int = 2) -> tuple[np.ndarray, np.ndarray, float]:
    cov = random_gaussian_cov(d, d, seed, rho=(0.5, 0.9))
    xy = np.random.default_rng(seed).multivariate_normal(np.zeros(2 * d), cov, size=n)
    return xy[:, :d], xy[:, d:], gaussian_mi(cov, d)


def test_gaussian_mi_closed_form():
    rho = 0.8
    assert gaussian_mi(np.array([[1, rho], [rho, 1]]), 1) == pytest.approx(
        -0.5 * math.log(1 - rho**2)
    )
    cov = random_gaussian_cov(3, 2, seed=0, rho=(0.6, 0.6))
    assert gaussian_mi(cov, 3) == pytest.approx(-math.log(1 - 0.36))  # two canonical pairs
    assert gaussian_mi(np.eye(4), 2) == pytest.approx(0.0)
    with pytest.raises(DtlensError, match="positive definite"):
        gaussian_mi(np.ones((2, 2)), 1)


@pytest.mark.parametrize("d", [1, 2, 3, 5])
@pytest.mark.parametrize("method", ["gcmi", "ksg"])
def test_within_10_percent_on_gaussians(d, method):
    x, y, true = gaussian_case(d)
    result = estimate(x, y, method=method)
    assert result.method == method
    assert result.value == pytest.approx(true, rel=0.10)
    assert result.train_value is None and result.diverged == 0 and result.elapsed_s > 0


@pytest.mark.parametrize("d", [1, 5])
@pytest.mark.parametrize("method", ["gcmi", "ksg"])
def test_near_zero_on_independent_data(d, method):
    rng = np.random.default_rng(d)
    x, y = rng.standard_normal((2000, d)), rng.exponential(size=(2000, d))
    assert abs(estimate(x, y, method=method).value) < 0.05


def linear_map(n: int, dy: int, true: float, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A noisy Gaussian linear map of an 11-d state: Y = X A + s E, s set so I(X; Y) = `true`
    (I = 1/2 log det(I + A A^T / s^2))."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((11, dy)) / math.sqrt(11)
    ev = np.linalg.eigvalsh(a @ a.T)
    lo, hi = 1e-6, 1e8  # bisect the noise variance on a log scale
    for _ in range(200):
        s2 = math.sqrt(lo * hi)
        lo, hi = (s2, hi) if 0.5 * np.log1p(ev / s2).sum() > true else (lo, s2)
    x = rng.standard_normal((n, 11))
    return x, x @ a + math.sqrt(s2) * rng.standard_normal((n, dy))


def test_default_is_gcmi():
    assert DEFAULT_METHOD == "gcmi"
    x, y, _ = gaussian_case(2, n=300)
    assert estimate(x, y).value == estimate(x, y, method="gcmi").value


@pytest.mark.parametrize("dy", [128, 768])
def test_default_near_zero_on_independent_state_vs_representation(dy):
    """The analysis's shape: an 11-d state against a block output, n = 1000 (and 100)."""
    rng = np.random.default_rng(dy)
    values = [
        estimate(rng.standard_normal((1000, 11)), rng.standard_normal((1000, dy))).value
        for _ in range(4)
    ]
    assert abs(np.mean(values)) < 0.1 and max(map(abs, values)) < 0.3
    x, y = rng.standard_normal((100, 11)), rng.exponential(size=(100, dy))
    null = permutation_null(x, y, 8)
    assert abs(null.mean()) < 0.2 and abs(estimate(x, y).value - null.mean()) < 4 * null.std()


@pytest.mark.parametrize("dy", [128, 768])
@pytest.mark.parametrize("true", [1.0, 3.0])
def test_default_within_30_percent_on_noisy_linear_maps(dy, true):
    x, y = linear_map(1000, dy, true)
    result = estimate(x, y)
    assert result.value == pytest.approx(true, rel=0.3)
    null = permutation_null(x, y, 5)
    assert result.value - null.mean() == pytest.approx(true, rel=0.3)
    assert (null < 0.3).all()


def test_small_samples_read_low_not_high():
    """At n = 100 the 768-d side is cut to its principal components: a lower bound."""
    x, y = linear_map(100, 768, 3.0)
    value = estimate(x, y).value
    assert value < 3.0
    assert value > permutation_null(x, y, 5).max()  # the dependence still shows above the null
    x, y = linear_map(100, 128, 3.0)
    assert permutation_null(x, y, 5).max() < estimate(x, y).value < 3.3


def test_gaussian_reduces_when_samples_are_few():
    """The plain closed form needs n > dx + dy; with fewer it projects the larger side."""
    x, y = linear_map(100, 768, 2.0)
    assert np.isfinite(estimate(x, y, method="gaussian").value)
    assert fitted_dims(11, 768, 50) == (11, 39)
    assert fitted_dims(768, 11, 50) == (39, 11)
    assert fitted_dims(40, 60, 50) == (25, 25)
    assert fitted_dims(3, 4, 50) == (3, 4)
    with pytest.raises(DtlensError, match="budget"):
        estimate(x, y, method="gaussian", budget=0)


def test_permutation_null_is_reproducible():
    x, y, true = gaussian_case(2, n=400)
    null = permutation_null(x, y, 5, seed=1)
    assert null.shape == (5,) and np.array_equal(null, permutation_null(x, y, 5, seed=1))
    assert abs(null).max() < 0.1 < true
    assert not np.array_equal(null, permutation_null(x, y, 5, seed=2))
    with pytest.raises(DtlensError, match="shuffles"):
        permutation_null(x, y, 0)


@pytest.mark.slow
def test_paper_protocol_reads_nats_on_independent_data():
    """MINE trained and scored on the same 100 samples (the paper's protocol) finds
    'information' where there is none: its values sit at its own null, far above 0."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((100, 11)), rng.standard_normal((100, 128))
    paper = estimate(x, y, method="mine", preset="paper", iterations=300).value
    assert paper > 1.0
    assert abs(estimate(x, y).value) < 0.35


def test_ksg_is_invariant_to_monotone_maps_of_each_coordinate():
    x, y, true = gaussian_case(3)
    direct = estimate(
        x, y, method="ksg", jitter=0.0
    ).value  # no jitter: the ranks are exactly the same
    warped = estimate(
        x**3, np.tanh(y) + 2 * y, method="ksg", jitter=0.0
    ).value  # heavy tails, saturation
    assert warped == pytest.approx(direct, abs=1e-12)
    plain = estimate(x**3, np.tanh(y) + 2 * y, method="ksg", preset="plain").value
    assert plain < 0.8 * true  # plain KSG on the raw coordinates misses a lot


def test_plain_ksg_on_one_dimension():
    x, y, true = gaussian_case(1)
    result = estimate(x, y, method="ksg", preset="plain")
    assert result.value == pytest.approx(true, rel=0.05)
    assert result.options["copula"] is False and result.options["reference_draws"] == 0


def test_gaussian_method_and_copula_variant():
    x, y, true = gaussian_case(2)
    assert estimate(x, y, method="gaussian").value == pytest.approx(true, rel=0.05)
    raw = estimate(x**3, y, method="gaussian").value
    copula = estimate(x**3, y, method="gaussian", copula=True).value
    assert abs(raw - true) > 0.1 * true  # correlations of warped data underrate the dependence
    assert copula == pytest.approx(true, rel=0.05)


def test_torch_input_and_1d_vectors():
    x, y, _ = gaussian_case(1, n=500)
    from_numpy = estimate(x[:, 0], y[:, 0]).value
    assert estimate(torch.from_numpy(x), torch.from_numpy(y)).value == pytest.approx(from_numpy)


def test_seeds_are_reported():
    x, y, _ = gaussian_case(1, n=500)
    result = estimate(x, y, seeds=[3, 4])
    assert result.seeds == (3, 4) and len(result.values) == 2
    assert result.value == pytest.approx(np.mean(result.values))
    assert result.std == pytest.approx(np.std(result.values, ddof=1))
    assert estimate(x, y, seed=5, n_seeds=3).seeds == (5, 6, 7)
    assert math.isnan(estimate(x, y).std)


def test_reduce_projects_high_dimensional_inputs():
    rng = np.random.default_rng(0)
    signal = rng.standard_normal((1000, 1))
    x = signal + 0.5 * rng.standard_normal((1000, 1))
    y = np.hstack([10 * signal, 0.3 * rng.standard_normal((1000, 63))])
    true = -0.5 * math.log(1 - 1 / 1.25)  # corr(x, signal)^2 = 1 / 1.25
    result = estimate(x, y, reduce=2)
    assert result.value == pytest.approx(true, rel=0.1)
    assert result.options["reduce"] == 2
    with pytest.raises(DtlensError, match="reduce"):
        estimate(x, y, reduce=0)


def small_critic(**changes):
    return {"hidden": (32, 32), "lr": 1e-3, "batch_size": 100, "iterations": 15} | changes


def test_mine_on_a_gaussian_pair():
    x, y, true = gaussian_case(1, n=1000, seed=4)  # I = 0.79 nats
    result = estimate(x, y, method="mine", n_seeds=2, **small_critic())
    assert result.seeds == (0, 1) and len(result.values) == 2 and result.diverged == 0
    assert 0.5 * true < result.value < 1.2 * true
    assert result.train_value is not None and result.options["holdout"] == 0.5


def test_mine_paper_preset_evaluates_on_the_training_samples():
    x, y, _ = gaussian_case(1, n=100, seed=4)
    result = estimate(x, y, method="mine", preset="paper", iterations=20)
    assert result.value == result.train_value
    assert result.options["holdout"] == 0 and result.options["batch_size"] == 50
    assert result.options["hidden"] == (400, 400, 400) and result.options["preset"] == "paper"


def test_infonce_on_a_gaussian_pair():
    x, y, true = gaussian_case(1, n=1000, seed=4)
    result = estimate(x, y, method="infonce", **small_critic(batch_size=50))
    assert 0.5 * true < result.value <= math.log(50)


def test_diverged_runs_are_reported_not_dropped():
    x, y, _ = gaussian_case(1, n=200)
    with pytest.warns(UserWarning, match="diverged"):
        result = estimate(1e30 * x, y, method="mine", standardize=False, **small_critic())
    assert result.diverged == 1 and math.isnan(result.values[0]) and math.isnan(result.value)


def test_bad_input_raises():
    x, y, _ = gaussian_case(1, n=100)
    with pytest.raises(DtlensError, match="same samples"):
        estimate(x, y[:99])
    with pytest.raises(DtlensError, match="NaN"):
        estimate(np.where(x > 1, np.nan, x), y)
    with pytest.raises(DtlensError, match="at least 7 samples"):
        estimate(x[:6], y[:6], method="ksg")
    with pytest.raises(DtlensError, match="too few"):
        estimate(x[:40], y[:40], method="mine")
    with pytest.raises(DtlensError, match="at least 4 samples"):
        estimate(np.ones((3, 2)), np.ones((3, 2)), method="gaussian")
    with pytest.raises(DtlensError, match="unknown MI method"):
        estimate(x, y, method="kde")
    with pytest.raises(DtlensError, match="unknown option"):
        estimate(x, y, method="ksg", lr=1e-3)
    with pytest.raises(DtlensError, match="unknown preset"):
        estimate(x, y, method="ksg", preset="paper")
