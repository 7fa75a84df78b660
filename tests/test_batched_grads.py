"""Per-sample gradients from batched passes: equal to vmap's and to one backward per sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dtlens import DecisionTransformer
from dtlens.data.windows import Batch
from dtlens.diagnostics import batched_grads as module
from dtlens.diagnostics.analyses import gradients as analysis
from dtlens.diagnostics.batched_grads import (
    Unsupported,
    batched_route_fits,
    iter_batched_grad_blocks,
)
from dtlens.diagnostics.gradients import GramAccumulator, gram
from dtlens.diagnostics.per_sample import iter_grad_blocks, used_parameters
from dtlens.train.loop import action_loss
from tests.conftest import dt_inputs, perturb_
from tests.test_per_sample_gradients import one_thread  # noqa: F401  (autouse)
from tests.test_released_model import mixed_dt


@pytest.fixture
def model(tiny_cfg) -> DecisionTransformer:
    return perturb_(DecisionTransformer(tiny_cfg, seed=1)).eval()


@pytest.fixture
def batch(tiny_cfg) -> Batch:
    return Batch(*dt_inputs(tiny_cfg, batch=7, steps=4, pad=2))


def blocks(route, *args, **kwargs) -> dict[tuple[str, int], torch.Tensor]:
    return {(name, s.start): g for name, s, g in route(*args, **kwargs)}


@pytest.mark.parametrize("train_mode", [False, True])
@pytest.mark.parametrize("together", [7, 3, 0])
def test_equal_to_vmap_with_the_same_chunks_and_masks(model, batch, train_mode, together):
    """Same (name, samples) blocks in the same order of samples, same values; in train mode the
    same dropout masks (each chunk a batched forward from one stream)."""
    kwargs = dict(together=together, chunk_size=2, train_mode=train_mode, seed=3)
    ref = blocks(iter_grad_blocks, model, batch, **kwargs)
    new = blocks(iter_batched_grad_blocks, model, batch, **kwargs)
    assert sorted(new) == sorted(ref)
    for key, g in ref.items():
        torch.testing.assert_close(new[key], g, rtol=0, atol=1e-6, msg=str(key))
    assert not model.training
    if train_mode:  # the masks matter: eval mode gives other gradients
        kwargs["train_mode"] = False
        evaluated = blocks(iter_batched_grad_blocks, model, batch, **kwargs)
        key = ("predict_action.weight", 0)
        assert not torch.allclose(evaluated[key], new[key])


def test_every_released_option_equals_one_backward_per_sample():
    """The released padding, the time embedding after the norm, a tied head (one parameter in
    two layers), a donor block of other heads: each sample's gradient as its own backward."""
    dt = mixed_dt(padding="released", time_embed="after_norm", tie_action_head=True)
    batch = Batch(*dt_inputs(dt.cfg, batch=3, steps=3, pad=2))
    assert batched_route_fits(dt)
    grads = blocks(iter_batched_grad_blocks, dt, batch, chunk_size=2, train_mode=False)
    assert sorted(name for name, _ in grads) == sorted(used_parameters(dt))
    for i in range(len(batch)):
        dt.zero_grad()
        action_loss(dt, batch.index([i])).backward()
        for (name, _), g in grads.items():
            torch.testing.assert_close(g[i], dt.get_parameter(name).grad, rtol=0, atol=1e-5)


def test_unordered_elements_keep_norms_and_inner_products(model, batch):
    """`ordered=False`: (samples, numel), each tensor's elements permuted alike for every
    sample (q, k and v as rows of the fused weight): the same Gram matrix per tensor."""
    ordered = blocks(iter_batched_grad_blocks, model, batch, train_mode=False, together=4)
    loose = blocks(
        iter_batched_grad_blocks, model, batch, train_mode=False, together=4, ordered=False
    )
    assert list(loose) == list(ordered)
    permuted = 0
    for key, g in ordered.items():
        flat, other = g.flatten(1).double(), loose[key].double()
        assert other.shape == flat.shape
        torch.testing.assert_close(other @ other.T, flat @ flat.T, rtol=1e-6, atol=1e-9)
        permuted += not torch.equal(other, flat.float().double())
    assert permuted  # the check above compares permutations, not the same layout


def test_passes_fit_memory_with_the_same_values(monkeypatch, model, batch):
    """The kept inputs and output gradients of the `together` samples split into passes within
    `memory` bytes (a layer larger than it alone); the tied head's two layers stay in one pass;
    no value changes."""
    calls: list[list[int]] = []
    real = module._chunk_layers

    def spy(model, chunk, layers, plan):
        calls.append(list(layers))
        return real(model, chunk, layers, plan)

    monkeypatch.setattr(module, "_chunk_layers", spy)
    kwargs = dict(together=6, chunk_size=3, train_mode=True, seed=2)
    whole = blocks(iter_batched_grad_blocks, model, batch, memory=None, **kwargs)
    assert len(calls) == 2 + 1  # one pass over the two chunks of six samples, then the last
    plan = module._plan(model, batch, used_parameters(model), True)
    memory = 6 * max(plan.nbytes)
    calls.clear()
    cut = blocks(iter_batched_grad_blocks, model, batch, memory=memory, **kwargs)
    passes = [layers for layers in calls if len(layers) < len(plan.kinds)][::2]
    assert len(passes) > 2 and sorted(sum(passes, [])) == list(range(len(plan.kinds)))
    assert all(6 * sum(plan.nbytes[i] for i in layers) <= memory for layers in passes)
    assert sorted(cut) == sorted(whole)
    for key, g in whole.items():
        torch.testing.assert_close(cut[key], g, rtol=0, atol=1e-6, msg=str(key))
    tied = mixed_dt(tie_action_head=True)
    tied_plan = module._plan(tied, batch, used_parameters(tied), True)
    runs = module._passes(tied_plan, 6, 1)  # every layer alone, but for the shared parameter
    shared = [run for run in runs if len(run) > 1]
    assert len(shared) == 1 and tied_plan.kinds[shared[0][0]] == "linear"
    assert shared[0][-1] == len(tied_plan.kinds) - 1  # the action embedding and the head


def test_hooked_backbone_falls_back_to_vmap_with_the_same_statistics(monkeypatch, model, batch):
    plain = analysis.gradient_stats(model, batch, n_confusion=4, train_mode=False, chunk_size=3)
    used: list[str] = []
    for name in ("iter_batched_grad_blocks", "iter_grad_blocks"):
        real = getattr(analysis, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            out = _real(*args, **kwargs)  # the batched route refuses at the call
            used.append(_name)
            return out

        monkeypatch.setattr(analysis, name, spy)
    analysis.gradient_stats(model, batch, n_confusion=4, train_mode=False, chunk_size=3)
    assert used == ["iter_batched_grad_blocks"]
    with model.hooks(fwd_hooks=[("backbone.blocks.0.hook_resid_post", lambda x, hook: x)]):
        assert not batched_route_fits(model)
        with pytest.raises(Unsupported, match="hooked blocks"):
            iter_batched_grad_blocks(model, batch)
        hooked = analysis.gradient_stats(
            model, batch, n_confusion=4, train_mode=False, chunk_size=3
        )
    assert used == ["iter_batched_grad_blocks", "iter_grad_blocks"]
    assert list(hooked.tensor.values) == list(plain.tensor.values) == used_parameters(model)
    np.testing.assert_allclose(hooked["tensor_norm"], plain["tensor_norm"], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(hooked["cosine"], plain["cosine"], atol=1e-6)


def test_float32_gram_runs_equal_float64(monkeypatch):
    """`gram`: float32 products over runs of GRAM_COLUMNS columns (and a shorter last one),
    summed in float64; `GramAccumulator(fast=True)` uses it."""
    from dtlens.diagnostics import gradients

    g = torch.randn(5, 1000, generator=torch.Generator().manual_seed(0))
    g[:, :300] *= 1e3
    exact = g.double() @ g.double().T
    scale = exact.diagonal().sqrt()
    scale = scale[:, None] * scale[None, :]  # errors as a share of |g_i| |g_j|: of a cosine
    monkeypatch.setattr(gradients, "GRAM_COLUMNS", 64)  # 15 runs and 40 columns left
    assert gram(g).dtype == torch.float64
    assert float(((gram(g) - exact) / scale).abs().max()) < 1e-6
    acc = GramAccumulator(5, fast=True)
    acc.update(g[:, :999])
    acc.update(g[:, 999:])
    assert float(((torch.from_numpy(acc.gram) - exact) / scale).abs().max()) < 1e-6
    assert float(((gram(g.double()) - exact) / scale).abs().max()) < 1e-13  # float64 stays
    with pytest.raises(Exception, match="NaN or inf"):
        acc.update(torch.full((5, 3), float("nan")))


@pytest.mark.parametrize("tie_action_head", [False, True])
def test_ghost_norms_equal_the_norms_of_the_gradients(monkeypatch, batch, tie_action_head):
    """`squared`: the samples after the first `together` come as squared norms; those of whole
    rows of a linear weight (q, k and v of the fused weight, W_O, W_in, W_out, the head unless
    tied to the action embedding) from the layer's inputs and output gradients alone."""
    dt = mixed_dt(padding="released", tie_action_head=tie_action_head)
    ghosts: list[int] = []
    real = module._ghost_norms

    def spy(x, g, rows):
        ghosts.append(len(rows))
        return real(x, g, rows)

    monkeypatch.setattr(module, "_ghost_norms", spy)
    kwargs = dict(together=2, chunk_size=2, train_mode=True, seed=1)
    grads = blocks(iter_batched_grad_blocks, dt, batch, **kwargs)
    assert not ghosts
    norms = blocks(iter_batched_grad_blocks, dt, batch, ordered=False, squared=True, **kwargs)
    assert list(norms) == list(grads)
    for (name, start), g in grads.items():
        flat = g.flatten(1).double()
        if start == 0:  # the first `together` samples: gradients, in an order of their own
            other = norms[name, start].double()
            torch.testing.assert_close(other @ other.T, flat @ flat.T, msg=name)
        else:
            expected = flat.square().sum(1).numpy()
            np.testing.assert_allclose(norms[name, start], expected, rtol=1e-5, atol=1e-14)
    # a chunk: W_Q, W_K, W_V, W_O, W_in, W_out of 2 blocks, the 3 embeddings' and the head's
    # weights, but for the action embedding's when the head shares it
    assert sum(ghosts) == 3 * (12 + (2 if tie_action_head else 4))  # 3 chunks after the first


def test_an_embedding_with_a_padding_row_is_refused(model, batch):
    """Its padding row gets no gradient, which the route does not model: vmap's route then."""
    model.embed_timestep.padding_idx = 0
    with pytest.raises(Unsupported, match="padding_idx"):
        iter_batched_grad_blocks(model, batch)
    ds = analysis.gradient_stats(model, batch, n_confusion=3, train_mode=False)
    assert np.isfinite(ds["norm"]).all()
