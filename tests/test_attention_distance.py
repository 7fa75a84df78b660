import numpy as np
import pytest
import torch

from dtlens.diagnostics.analyses.attention import DIAGNOSTIC, attention_distances
from dtlens.diagnostics.attention import (
    attention_distance,
    attention_distance_paper_variant,
    change_of_mean,
    paper_variant_from_qk,
    per_query_distance,
    per_sample_change,
)
from dtlens.errors import DtlensError
from dtlens.train.loop import train
from tests.conftest import tiny_train_config

T = 6


def identity(t: int = T) -> np.ndarray:
    return np.eye(t)


def attend_first(t: int = T) -> np.ndarray:
    a = np.zeros((t, t))
    a[:, 0] = 1.0
    return a


def uniform_causal(t: int = T, start: int = 0) -> np.ndarray:
    """Uniform over keys start..i for queries i >= start; rows before start are all zero."""
    a = np.tril(np.ones((t, t)))
    a[:, :start] = 0.0
    a[:start] = 0.0
    return a / np.maximum(a.sum(axis=1, keepdims=True), 1.0)


def test_hand_made_patterns():
    heads = np.stack([identity(), attend_first(), uniform_causal()])  # (head, query, key)
    np.testing.assert_allclose(attention_distance(heads), [0.0, (T - 1) / 2, (T - 1) / 4])
    np.testing.assert_allclose(per_query_distance(heads)[1], np.arange(T))
    np.testing.assert_allclose(per_query_distance(heads)[2], np.arange(T) / 2)


def test_leading_dims_and_timestep_unit():
    heads = np.stack([identity(), attend_first(), uniform_causal()])
    batch = np.stack([heads, heads[::-1]])  # (sample, head, query, key)
    out = attention_distance(batch, unit="timestep")
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out[0], np.array([0.0, (T - 1) / 2, (T - 1) / 4]) / 3)
    np.testing.assert_allclose(out[1], out[0][::-1])


def test_padded_queries_are_excluded():
    pad = 2
    real = uniform_causal(start=pad)  # left padding: rows 0, 1 all zero
    expected = np.mean((np.arange(pad, T) - pad) / 2)
    assert attention_distance(real[None])[0] == pytest.approx(expected)
    # padded rows that are not zero (a softmax over masked keys) need the mask
    noisy = real.copy()
    noisy[:pad] = uniform_causal()[:pad]
    mask = np.r_[np.zeros(pad), np.ones(T - pad)].astype(int)
    assert attention_distance(noisy[None], query_mask=mask)[0] == pytest.approx(expected)
    assert attention_distance(noisy[None])[0] != pytest.approx(expected)
    # (sample, layer, head, query, key) with a (sample, query) mask: insert the layer axis
    stacked = np.broadcast_to(noisy, (2, 4, 3, T, T))
    out = attention_distance(stacked, query_mask=np.stack([mask, mask])[:, None])
    np.testing.assert_allclose(out, expected)
    with pytest.raises(DtlensError, match="leading dims"):
        attention_distance(stacked, query_mask=np.stack([mask, mask]))


def test_no_valid_query_gives_nan():
    out = attention_distance(np.zeros((2, T, T)))
    assert np.isnan(out).all()


def test_torch_in_torch_out():
    heads = np.stack([identity(), attend_first(), uniform_causal()])
    out = attention_distance(torch.tensor(heads, dtype=torch.float32), unit="timestep")
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), attention_distance(heads, unit="timestep"), rtol=1e-6)
    mask = torch.ones(T, dtype=torch.bool)
    assert isinstance(per_query_distance(torch.tensor(heads)), torch.Tensor)
    masked = attention_distance(torch.tensor(heads), query_mask=mask)
    np.testing.assert_allclose(masked.numpy(), [0.0, (T - 1) / 2, (T - 1) / 4])


def test_check_rejects_invalid_patterns():
    good = np.stack([uniform_causal(start=2), identity()])
    attention_distance(good, check=True)  # zero (padded) rows are allowed
    with pytest.raises(DtlensError, match="sum to 1"):
        attention_distance(0.5 * good, check=True)
    negative = good.copy()
    negative[1, 3, 2], negative[1, 3, 3] = -0.5, 1.5
    with pytest.raises(DtlensError, match="negative"):
        attention_distance(negative, check=True)
    with pytest.raises(DtlensError, match="NaN"):
        attention_distance(np.where(good > 0.9, np.nan, good), check=True)
    with pytest.raises(DtlensError, match="query == key"):
        attention_distance(np.ones((2, 3, 4)))
    with pytest.raises(DtlensError, match="unit"):
        attention_distance(good, unit="step")


def released_code(w: torch.Tensor, b: torch.Tensor, hidden: torch.Tensor) -> float:
    """The released computation, written as it is there (d = 768 replaced by the width)."""
    d = w.shape[0]
    qkv = hidden @ w + b
    query, key = qkv[:, :d], qkv[:, d : 2 * d]
    att = torch.tril(torch.softmax(torch.matmul(query, key.t()) / np.sqrt(d), dim=1)).numpy()
    dist = np.zeros_like(att)
    for i in range(dist.shape[0]):
        for j in range(dist.shape[1]):
            dist[i, j] = abs(i - j)
    return float(np.mean(dist * att))


def test_paper_variant_on_tiny_examples():
    d, t = 2, 3
    # q = k = 0: softmax is uniform over ALL keys (1/3), then the upper triangle is zeroed:
    # rows 0, 1, 2 carry distances 0, 1/3, 2/3 + 1/3; the mean over the 9 entries is 4/27
    out = attention_distance_paper_variant(np.zeros((d, 3 * d)), np.zeros(3 * d), np.ones((t, d)))
    assert out == pytest.approx(4 / 27)
    # whereas the per-query mean of a proper causal softmax of the same scores is 0.5
    assert attention_distance(uniform_causal(t)[None])[0] == pytest.approx(0.5)

    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(4, 12, generator=g), torch.randn(12, generator=g)
    hidden = torch.randn(2, 5, 4, generator=g)
    out = attention_distance_paper_variant(w, b, hidden)
    assert isinstance(out, torch.Tensor) and out.shape == (2,)
    for s in range(2):
        assert float(out[s]) == pytest.approx(released_code(w, b, hidden[s]), rel=1e-5)
    qkv = hidden @ w + b  # the same from q and k, e.g. TransformerLens' hook_q / hook_k
    from_qk = paper_variant_from_qk(qkv[..., :4], qkv[..., 4:8])
    torch.testing.assert_close(from_qk, out)
    with pytest.raises(DtlensError, match="c_attn"):
        attention_distance_paper_variant(w[:, :8], b, hidden)
    with pytest.raises(DtlensError, match="share"):
        paper_variant_from_qk(qkv[..., :4], qkv[..., 4:7])


def test_change_of_the_mean_against_the_per_sample_change():
    # two samples moving opposite ways: the mean stays put, each sample moves by 2
    d0, de = np.array([1.0, 3.0]), np.array([3.0, 1.0])
    assert change_of_mean(de, d0) == pytest.approx(0.0)
    np.testing.assert_allclose(per_sample_change(de, d0), [2.0, 2.0])
    # moving the same way: the two agree (1 and 2, mean 1.5)
    de = np.array([2.0, 5.0])
    assert change_of_mean(de, d0) == pytest.approx(1.5)
    assert per_sample_change(de, d0).mean() == pytest.approx(1.5)
    # (sample, layer): per layer; torch in works too
    d0 = np.array([[1.0, 0.0], [3.0, 0.0]])
    de = torch.tensor([[3.0, 1.0], [1.0, 2.0]])
    np.testing.assert_allclose(change_of_mean(de, d0), [0.0, 1.5])
    np.testing.assert_allclose(per_sample_change(de, d0).mean(0), [2.0, 1.5])
    with pytest.raises(DtlensError, match="shape"):
        per_sample_change(de[:1], d0)


@pytest.fixture(scope="module")
def k1_run(hopper_file, tmp_path_factory):
    cfg = tiny_train_config(hopper_file, epochs=2, eval_episodes=0, context_len=1, probe_size=6)
    return train(cfg, tmp_path_factory.mktemp("att") / "run", progress=False)


def test_run_paper_change_is_per_sample(k1_run, tmp_path):
    ds = attention_distances(k1_run, epochs=[0, 2], context_len=4, paper_variant=True)
    assert ds["paper_change"].dims == ("epoch", "sample", "layer")
    assert ds.sizes["sample"] == 6 and ds.sizes["layer"] == 2
    pd = ds["paper_distance"]
    np.testing.assert_allclose(ds["paper_change"], abs(pd - pd.isel(epoch=0)))
    np.testing.assert_allclose(ds["paper_change_mean"], ds["paper_change"].mean("sample"))
    np.testing.assert_allclose(ds["change"].isel(epoch=0), 0.0)
    of_mean = abs(pd.mean("sample") - pd.isel(epoch=0).mean("sample")).isel(epoch=-1)
    last = ds["paper_change_mean"].isel(epoch=-1)
    assert (last >= of_mean - 1e-12).all() and (last > of_mean + 1e-9).any()
    table = DIAGNOSTIC.summary(ds)
    assert table.header[-2:] == ["paper |change|, mean", "paper |change|, median"]
    assert table.rows[0][-2] == pytest.approx(float(last.isel(layer=0)))
    assert DIAGNOSTIC.plot(ds, tmp_path / "a.png").stat().st_size > 0
    plain = attention_distances(k1_run, epochs=[0, 2], context_len=4)
    assert "paper_change" not in plain and len(DIAGNOSTIC.summary(plain).header) == 4
    np.testing.assert_allclose(plain["change"], ds["change"])


def test_block_swap_run_with_a_donor_of_more_heads(hopper_file, tmp_path, recwarn):
    """A 4-head donor block in a 2-head DT: block 0's missing heads are NaN (no warning), the
    donor block's distances equal those of its pattern captured alone."""
    from dtlens.capture import capture
    from tests.test_families import write_family

    write_family("gpt2", tmp_path / "donor")  # d_model 16 like TINY, 4 heads
    cfg = tiny_train_config(
        hopper_file,
        epochs=1,
        eval_episodes=0,
        context_len=1,
        replace_block=1,
        donor=str(tmp_path / "donor"),
    )
    run = train(cfg, tmp_path / "run", progress=False)
    ds = attention_distances(run, context_len=4)
    d = ds["distance"].isel(epoch=-1)
    assert ds.sizes["head"] == 4
    assert np.isnan(d.sel(layer=0, head=[2, 3])).all()
    assert np.isfinite(d.sel(layer=0, head=[0, 1])).all() and np.isfinite(d.sel(layer=1)).all()
    alone = capture(
        run.load_model(-1), run.windows(None, 4), ["backbone.blocks.1.attn.hook_pattern"]
    )
    per_sample = attention_distance(alone.pattern.values[:, 0], query_mask=alone.valid.values)
    np.testing.assert_allclose(d.sel(layer=1), per_sample.mean(axis=0), rtol=1e-6)
    assert len(DIAGNOSTIC.summary(ds).rows) == 2
    assert DIAGNOSTIC.plot(ds, tmp_path / "a.png").stat().st_size > 0
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
