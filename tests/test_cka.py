import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from dtlens.diagnostics.cka import MinibatchCKA, cka, cka_matrix, cka_paper_variant
from dtlens.errors import DtlensError


@pytest.fixture(autouse=True)
def one_blas_thread():
    """Two BLAS threads contending for two shared cores can be 100x slower than one."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture
def demo() -> tuple[np.ndarray, np.ndarray]:
    """Kornblith et al.'s demo data (the legacy seeded stream, as in their notebook)."""
    rs = np.random.RandomState(1337)
    x = rs.randn(100, 10)
    y = rs.randn(100, 10) + x
    return x, y


def song_hsic1(gram_x: np.ndarray, gram_y: np.ndarray) -> float:
    """Unbiased HSIC (Song et al. 2012), straight from its formula, as an independent reference."""
    n = gram_x.shape[0]
    k, m = gram_x.copy(), gram_y.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(m, 0)
    one = np.ones(n)
    trace = np.trace(k @ m)
    middle = (one @ k @ one) * (one @ m @ one) / ((n - 1) * (n - 2))
    last = 2 / (n - 2) * (one @ k @ m @ one)
    return (trace + middle - last) / (n * (n - 3))


def test_kornblith_demo_values(demo):
    x, y = demo
    assert cka(x, y) == pytest.approx(0.55761, abs=1e-4)
    assert cka(x, y, kernel="rbf", threshold=0.5) == pytest.approx(0.65483, abs=1e-4)
    assert cka(x, y, debiased=True) == pytest.approx(0.51346, abs=1e-4)


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("shape", [(60, 7, 12), (20, 40, 3)])
def test_feature_form_equals_gram_form(shape, debiased):
    n, p, q = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, p)) + 3.0
    y = x[:, :1] * rng.standard_normal((1, q)) + rng.standard_normal((n, q))
    gram = cka(x, y, debiased=debiased, form="gram")
    feature = cka(x, y, debiased=debiased, form="feature")
    assert feature == pytest.approx(gram, abs=1e-12)


def test_debiased_equals_song_estimator(demo):
    x, y = demo
    k, m = x @ x.T, y @ y.T
    expected = song_hsic1(k, m) / np.sqrt(song_hsic1(k, k) * song_hsic1(m, m))
    assert cka(x, y, debiased=True, form="gram") == pytest.approx(expected, abs=1e-12)
    assert cka(x, y, debiased=True, form="feature") == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("kernel", "debiased"), [("linear", False), ("linear", True), ("rbf", False)]
)
def test_invariances(demo, kernel, debiased):
    x, y = demo
    base = cka(x, y, kernel=kernel, debiased=debiased)
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((10, 10)))
    for x2 in (x @ q, 7.5 * x, x + 100.0):
        assert cka(x2, y, kernel=kernel, debiased=debiased) == pytest.approx(base, abs=1e-9)


@pytest.mark.parametrize(
    ("kernel", "debiased"), [("linear", False), ("linear", True), ("rbf", False)]
)
def test_self_similarity_is_one(demo, kernel, debiased):
    x, _ = demo
    assert cka(x, x, kernel=kernel, debiased=debiased) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
def test_float32_with_large_offset_matches_float64(demo, debiased):
    x, y = demo
    x32, y32 = (x + 1000.0).astype(np.float32), (y - 1000.0).astype(np.float32)
    reference = cka(x32.astype(np.float64), y32.astype(np.float64), debiased=debiased)
    for form in ("gram", "feature"):
        assert cka(x32, y32, debiased=debiased, form=form) == pytest.approx(reference, abs=1e-6)
    from_torch = cka(torch.from_numpy(x32), torch.from_numpy(y32), debiased=debiased)
    assert from_torch == pytest.approx(reference, abs=1e-6)


def test_torch_equals_numpy(demo):
    x, y = demo
    for kwargs in ({}, {"debiased": True}, {"kernel": "rbf"}):
        assert cka(torch.from_numpy(x), torch.from_numpy(y), **kwargs) == cka(x, y, **kwargs)


def test_constant_representation_gives_nan(demo):
    x, _ = demo
    assert np.isnan(cka(x, np.ones((100, 3))))


def test_bad_input_raises(demo):
    x, y = demo
    with pytest.raises(DtlensError, match="same samples"):
        cka(x, y[:99])
    with pytest.raises(DtlensError, match="NaN"):
        cka(np.where(x > 2, np.nan, x), y)
    with pytest.raises(DtlensError, match="2-D"):
        cka(x[:, 0], y)
    with pytest.raises(DtlensError, match=">= 4 samples"):
        cka(x[:3], y[:3], debiased=True)
    with pytest.raises(DtlensError, match="kernel"):
        cka(x, y, kernel="cosine")
    with pytest.raises(DtlensError, match="linear kernel only"):
        cka(x, y, kernel="rbf", form="feature")


@pytest.mark.parametrize(
    ("kernel", "debiased"), [("linear", False), ("linear", True), ("rbf", True)]
)
def test_cka_matrix_matches_pairwise(kernel, debiased):
    rng = np.random.default_rng(2)
    base = rng.standard_normal((80, 6))
    layers = np.stack([base @ rng.standard_normal((6, 16)) + s * rng.standard_normal((80, 16))
                       for s in (0.1, 1.0, 3.0, 10.0)])  # fmt: skip
    others = [layers[1], rng.standard_normal((80, 5))]
    sym = cka_matrix(layers, kernel=kernel, debiased=debiased)
    cross = cka_matrix(list(layers), others, kernel=kernel, debiased=debiased)
    assert sym.shape == (4, 4) and cross.shape == (4, 2)
    np.testing.assert_allclose(sym, sym.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(sym), 1.0, atol=1e-12)
    for i, a in enumerate(layers):
        for j, b in enumerate(layers):
            assert sym[i, j] == pytest.approx(cka(a, b, kernel, debiased), abs=1e-12)
        for j, b in enumerate(others):
            assert cross[i, j] == pytest.approx(cka(a, b, kernel, debiased), abs=1e-12)


def test_cka_matrix_forms_agree_and_check_samples():
    rng = np.random.default_rng(3)
    layers = [rng.standard_normal((50, d)) for d in (4, 30, 70)]
    for debiased in (False, True):
        gram = cka_matrix(layers, debiased=debiased, form="gram")
        feature = cka_matrix(layers, debiased=debiased, form="feature")
        np.testing.assert_allclose(gram, feature, atol=1e-12)
    with pytest.raises(DtlensError, match="same samples"):
        cka_matrix(layers, [rng.standard_normal((49, 3))])


def _layers(rng: np.random.Generator, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    z = rng.standard_normal((n, 16))
    xs = [
        z @ rng.standard_normal((16, 64)) + rng.standard_normal((n, 64)),
        np.tanh(z @ rng.standard_normal((16, 64))) + rng.standard_normal((n, 64)),
    ]
    ys = [z @ rng.standard_normal((16, 64)) + 2 * rng.standard_normal((n, 64))]
    return xs, ys


def test_minibatch_single_batch_is_exact():
    xs, ys = _layers(np.random.default_rng(4), 300)
    mb = MinibatchCKA()
    mb.update(xs, ys)
    np.testing.assert_allclose(mb.compute(), cka_matrix(xs, ys, debiased=True), atol=1e-12)
    sym = MinibatchCKA()
    sym.update([torch.from_numpy(x) for x in xs])
    np.testing.assert_allclose(sym.compute(), cka_matrix(xs, debiased=True), atol=1e-12)


def test_minibatch_converges_to_full_unbiased_cka():
    """HSIC_1 is unbiased within each batch, so averaging over random partitions recovers the
    full-data U-statistic; per-batch biased HSIC instead stays off by its O(1/b) bias."""
    rng = np.random.default_rng(5)
    n, b = 4096, 256
    xs, ys = _layers(rng, n)
    full = cka_matrix(xs, ys, debiased=True)
    mb = MinibatchCKA()
    biased_num = np.zeros((2, 1))
    biased_x, biased_y = np.zeros(2), np.zeros(1)
    for epoch in range(8):
        order = rng.permutation(n)
        for start in range(0, n, b):
            idx = order[start : start + b]
            mb.update([x[idx] for x in xs], [y[idx] for y in ys])
            if epoch == 0:
                xc = [x[idx] - x[idx].mean(0) for x in xs]
                yc = [y[idx] - y[idx].mean(0) for y in ys]
                biased_num += [[np.linalg.norm(a.T @ c) ** 2 for c in yc] for a in xc]
                biased_x += [np.linalg.norm(a.T @ a) ** 2 for a in xc]
                biased_y += [np.linalg.norm(c.T @ c) ** 2 for c in yc]
    assert mb.n_batches == 8 * n // b and mb.n_samples == 8 * n
    np.testing.assert_allclose(mb.compute(), full, atol=1e-3)
    biased = biased_num / np.sqrt(np.outer(biased_x, biased_y))
    assert np.abs(biased - full).max() > 1e-2  # the tolerance above tells the two apart


def test_minibatch_errors():
    mb = MinibatchCKA()
    with pytest.raises(DtlensError, match="before any update"):
        mb.compute()
    rng = np.random.default_rng(6)
    mb.update([rng.standard_normal((8, 3))], [rng.standard_normal((8, 2))])
    with pytest.raises(DtlensError, match="layer counts"):
        mb.update([rng.standard_normal((8, 3))] * 2, [rng.standard_normal((8, 2))])
    with pytest.raises(DtlensError, match="same samples"):
        mb.update([rng.standard_normal((8, 3))], [rng.standard_normal((9, 2))])
    with pytest.raises(DtlensError, match=">= 4 samples"):
        mb.update([rng.standard_normal((3, 3))], [rng.standard_normal((3, 2))])


def test_paper_variant_compares_one_hidden_unit_across_positions():
    rng = np.random.default_rng(7)
    a = rng.standard_normal((100, 60, 32))
    b = rng.standard_normal((100, 60, 32))
    b[:, :, -2] = 3.0 * a[:, :, -2] + 1.0  # the same hidden unit, rescaled
    assert cka_paper_variant(a, b, -2) == pytest.approx(1.0, abs=1e-6)
    assert abs(cka_paper_variant(a, b, -1)) < 0.1
    expected = cka(a[:, :, -1], b[:, :, -1], debiased=True)
    assert cka_paper_variant(torch.from_numpy(a), b, -1) == pytest.approx(expected, abs=1e-9)
    # the d_model-dim token representation (what the paper describes) is unrelated here
    assert cka(a[:, -2], b[:, -2], debiased=True) < 0.5
    with pytest.raises(DtlensError, match="3-D"):
        cka_paper_variant(a[:, 0], b[:, 0], -1)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_gram_form_in_chunks_equals_all_at_once(monkeypatch, kernel, symmetric):
    """A Gram budget of two 30 x 30 matrices (one column Gram per chunk) gives the same matrix."""
    from dtlens.diagnostics import cka as module

    rs = np.random.RandomState(3)
    xs = [rs.randn(30, 4) + i * rs.randn(30, 1) for i in range(5)]
    ys = None if symmetric else [rs.randn(30, 3) + x[:, :3] for x in xs[:4]]
    whole = cka_matrix(xs, ys, kernel, debiased=True, form="gram")
    monkeypatch.setattr(module, "GRAM_MEMORY", 2 * 8 * 30 * 30)
    assert module._grams_per_chunk(30) == 1
    chunked = cka_matrix(xs, ys, kernel, debiased=True, form="gram")
    np.testing.assert_allclose(chunked, whole, rtol=1e-12)
    pairwise = [[cka(x, y, kernel, debiased=True) for y in (ys or xs)] for x in xs]
    np.testing.assert_allclose(chunked, pairwise, rtol=1e-10)


@pytest.mark.parametrize("form", ["auto", "gram"])
def test_peak_memory_does_not_grow_with_layers(monkeypatch, form):
    """Within a budget of three 100 x 100 Grams, 24 float32 layers peak no higher than 4: the
    Gram form streams column chunks, the feature form holds two float64 layers at a time."""
    import tracemalloc

    from dtlens.diagnostics import cka as module

    budget = 8 * 100 * 100 * 3
    monkeypatch.setattr(module, "GRAM_MEMORY", budget)
    rs = np.random.RandomState(0)
    layers = [rs.randn(100, 64).astype(np.float32) for _ in range(24)]

    def peak(n_layers: int) -> int:
        tracemalloc.start()
        cka_matrix(layers[:n_layers], layers[::-1][:n_layers], debiased=True, form=form)
        used = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return used

    assert peak(24) < 1.2 * peak(4)
    # the budget, one Gram's centring temporaries and float64 layer copies; every layer's Grams
    # at once would be 48 x 80 kB
    assert peak(24) < budget + 2 * 8 * 100 * 100 + 4 * 100 * 64 * 8


def test_linear_auto_form_takes_features_when_grams_do_not_fit(monkeypatch):
    from dtlens.diagnostics import cka as module

    layers = [np.zeros((100, 64))] * 24  # the Gram form is cheaper in flops here
    assert not module._use_features("linear", "auto", 100, layers, layers)
    monkeypatch.setattr(module, "GRAM_MEMORY", 8 * 100 * 100 * 3)
    assert module._use_features("linear", "auto", 100, layers, layers)
