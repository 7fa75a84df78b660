import math

import numpy as np
import pytest
import torch

from dtlens.diagnostics import gradients
from dtlens.diagnostics.gradients import (
    GramAccumulator,
    clip_coefficients,
    gradient_confusion,
    released_confusion,
    released_share,
    released_tensor,
    share_of_norm,
)
from dtlens.errors import DtlensError


def test_hand_made_vectors():
    assert gradient_confusion(np.eye(3)) == pytest.approx(0.0)
    assert gradient_confusion(np.array([[1.0, 2.0], [-3.0, -6.0]])) == pytest.approx(-1.0)
    angles = np.deg2rad([0, 120, 240])
    triple = np.stack([np.cos(angles), np.sin(angles)], axis=1) * [[1.0], [5.0], [0.1]]
    assert gradient_confusion(triple) == pytest.approx(-0.5)
    assert gradient_confusion(torch.tensor([[1.0, 1.0], [1.0, 0.0]])) == pytest.approx(
        1 / math.sqrt(2)
    )


def test_gram_route_equals_materialised(monkeypatch):
    monkeypatch.setattr(gradients, "_BLOCK_ELEMENTS", 64)  # exercise the column blocks
    rng = np.random.default_rng(0)
    tensors = [rng.standard_normal((12, 7, 5)), rng.standard_normal((12, 1)),
               rng.standard_normal((12, 40))]  # fmt: skip
    acc = GramAccumulator(12)
    for t in tensors:
        acc.update(torch.tensor(t, dtype=torch.float32) if t.ndim == 3 else t)
    g = np.concatenate([t.reshape(12, -1) for t in tensors], axis=1)
    g[:, :35] = g[:, :35].astype(np.float32)  # the first tensor went in as float32
    np.testing.assert_allclose(acc.gram, g @ g.T, rtol=1e-12)
    np.testing.assert_allclose(acc.norms(), np.linalg.norm(g, axis=1), rtol=1e-12)
    unit = g / np.linalg.norm(g, axis=1, keepdims=True)
    np.testing.assert_allclose(acc.cosine(), unit @ unit.T, atol=1e-12)
    i, j = np.triu_indices(12, k=1)
    np.testing.assert_allclose(acc.cosine_values(), (unit @ unit.T)[i, j], atol=1e-12)
    assert acc.confusion() == pytest.approx(gradient_confusion(g), abs=1e-12)
    assert acc.confusion() == pytest.approx((unit @ unit.T)[i, j].min(), abs=1e-12)


def test_zero_gradient_has_cosine_zero():
    g = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    acc = GramAccumulator(3)
    acc.update(g)
    cos = acc.cosine()
    assert np.isfinite(cos).all()
    np.testing.assert_allclose(cos[1], 0.0)
    np.testing.assert_allclose(np.diag(cos), [1.0, 0.0, 1.0])
    assert acc.confusion() == 0.0
    assert gradient_confusion(np.zeros((4, 3))) == 0.0


def test_clip_coefficients_match_clip_grad_norm():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    x, y = torch.randn(6, 4), torch.randn(6, 2)
    scales = torch.tensor([0.01, 0.05, 0.2, 1.0, 5.0, 0.0])  # norms below and above 0.25
    norms, before, after = [], [], []
    for i in range(6):
        model.zero_grad()
        (scales[i] * ((model(x[i : i + 1]) - y[i : i + 1]) ** 2).sum()).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        norms.append(float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads))))
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.25)
        before.append(torch.cat([g.flatten() for g in grads]))
        after.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    coef = clip_coefficients(np.array(norms), max_norm=0.25)
    assert (coef < 1).any() and (coef == 1).any()
    for c, b, a in zip(coef, before, after, strict=True):
        torch.testing.assert_close(a, b * float(c), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(clip_coefficients(torch.tensor(norms)), coef)


def test_share_of_norm():
    sq = {"a": np.array([1.0, 0.0, 3.0]), "b": np.array([3.0, 0.0, 1.0])}
    share = share_of_norm(sq)
    np.testing.assert_allclose(share["a"], [0.25, 0.0, 0.75])
    np.testing.assert_allclose(share["b"], [0.75, 0.0, 0.25])
    table = share_of_norm(np.stack([sq["a"], sq["b"]], axis=1))
    np.testing.assert_allclose(table, np.stack([share["a"], share["b"]], axis=1))
    with pytest.raises(DtlensError, match="non-negative"):
        share_of_norm({"a": np.array([-1.0])})


def test_bad_input_raises():
    acc = GramAccumulator(3)
    with pytest.raises(DtlensError, match="samples"):
        acc.update(np.ones((4, 2)))
    with pytest.raises(DtlensError, match="NaN"):
        acc.update(np.array([[1.0], [np.nan], [0.0]]))
    with pytest.raises(DtlensError, match="at least 2"):
        gradient_confusion(np.ones((1, 5)))
    with pytest.raises(DtlensError, match="samples, parameters"):
        gradient_confusion(np.ones(5))


def test_released_share_against_the_squared_norm_share():
    """The issue's example: per-tensor norms {ln_1.w: 0.2, ln_1.b: 0.1, 100 x 0.01}."""
    norms = {"0.ln_1.weight": 0.2, "0.ln_1.bias": 0.1} | {f"t{k}": 0.01 for k in range(100)}
    released = released_share(norms)
    ln_1 = released["0.ln_1.weight"] + released["0.ln_1.bias"]
    assert ln_1 == pytest.approx(0.3 / 1.3) and round(ln_1, 3) == 0.231
    assert sum(released.values()) == pytest.approx(1.0)
    # dtlens's share of the squared norm: (0.04 + 0.01) / (0.04 + 0.01 + 100 x 1e-4)
    squared = share_of_norm({k: np.array([v**2]) for k, v in norms.items()})
    assert float((squared["0.ln_1.weight"] + squared["0.ln_1.bias"])[0]) == pytest.approx(5 / 6)
    assert float(squared["0.ln_1.weight"][0]) == pytest.approx(2 / 3)  # the weight alone
    # clipping scales every norm alike: no effect; splitting a tensor changes the sum of norms
    assert released_share({k: 0.5 * v for k, v in norms.items()}) == pytest.approx(released)
    split = released_share({"a": 0.3, "b1": 0.4 * np.sqrt(0.5), "b2": 0.4 * np.sqrt(0.5)})
    assert split["a"] != pytest.approx(released_share({"a": 0.3, "b": 0.4})["a"])
    assert released_share({"a": 0.0}) == {"a": 0.0}
    with pytest.raises(DtlensError, match="non-negative"):
        released_share({"a": -1.0})


def test_released_tensor_names():
    assert released_tensor("backbone.blocks.0.ln1.w") == "0.ln_1.weight"
    assert released_tensor("backbone.blocks.0.ln1.b") == "0.ln_1.bias"
    for n in "QKV":
        assert released_tensor(f"backbone.blocks.3.attn.W_{n}") == "3.attn.c_attn.weight"
        assert released_tensor(f"backbone.blocks.3.attn.b_{n}") == "3.attn.c_attn.bias"
    assert released_tensor("backbone.blocks.11.mlp.W_out") == "11.mlp.c_proj.weight"
    assert released_tensor("backbone.blocks.1.attn.W_O") == "1.attn.c_proj.weight"
    for outside in ("backbone.ln_final.w", "embed_ln.weight", "predict_action.weight"):
        assert released_tensor(outside) is None


def test_released_confusion_by_hand():
    g = np.array([[3.0, 4.0], [-6.0, 0.0]])  # cosine -18 / 30 = -0.6
    acc = GramAccumulator(2)
    acc.update(g)
    assert acc.confusion() == pytest.approx(-0.6)
    # clipped norms 5 and 3: dot -9 over (1e-6 + 15)
    assert released_confusion(acc.gram, [1.0, 0.5]) == pytest.approx(-9 / (1e-6 + 15), rel=1e-12)
    assert released_confusion(acc.gram, [1.0, 0.5], eps=0.0) == pytest.approx(-0.6, rel=1e-12)
    # tiny gradients: the 1e-6 dominates; the diagonal counts, so the minimum is 0.5, not 1
    tiny = GramAccumulator(2)
    tiny.update(np.array([[1e-3, 0.0], [1e-3, 0.0]]))
    assert tiny.confusion() == pytest.approx(1.0)
    assert released_confusion(tiny.gram, np.ones(2)) == pytest.approx(0.5)
    with pytest.raises(DtlensError, match="disagree"):
        released_confusion(acc.gram, np.ones(3))
