"""Per-sample gradients with torch.func: equal to one backward pass per sample."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from dtlens import DecisionTransformer
from dtlens.data.windows import Batch
from dtlens.diagnostics.per_sample import (
    batch_grads,
    fit_memory,
    iter_per_sample_grads,
    pack_groups,
    parameter_groups,
    sample_losses,
    squared_norms,
    used_parameters,
)
from dtlens.errors import DtlensError
from dtlens.train.loop import action_loss
from tests.conftest import TINY, dt_inputs, perturb_


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a loaded machine two threads
    that wait for each other make these tests ~30x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def model(tiny_cfg) -> DecisionTransformer:
    return perturb_(DecisionTransformer(tiny_cfg, seed=1)).eval()


@pytest.fixture
def batch(tiny_cfg) -> Batch:
    return Batch(*dt_inputs(tiny_cfg, batch=5, steps=4, pad=2))


def test_used_parameters_and_groups(model):
    names = used_parameters(model)
    assert "backbone.blocks.0.ln1.w" in names and "embed_timestep.weight" in names
    assert not any(n.startswith(("backbone.embed.", "backbone.unembed.")) for n in names)
    groups = parameter_groups(names)
    assert len(groups) == model.cfg.n_layers + 1
    assert sorted(sum(groups, [])) == sorted(names)
    assert parameter_groups(names, "all") == [names]


def test_sample_losses_equal_action_loss_of_one_sample(model, batch):
    pred = model(
        batch.states, batch.actions, batch.returns_to_go, batch.timesteps, batch.attention_mask
    )
    losses = sample_losses(pred, batch.actions, batch.attention_mask)
    for i in range(len(batch)):
        torch.testing.assert_close(losses[i], action_loss(model, batch.index([i])))


def test_eval_mode_equals_a_loop_of_single_sample_backward_passes(model, batch):
    grads = dict(iter_per_sample_grads(model, batch, chunk_size=2, train_mode=False))
    assert sorted(grads) == sorted(used_parameters(model))
    for i in range(len(batch)):
        model.zero_grad()
        action_loss(model, batch.index([i])).backward()
        for name, g in grads.items():
            torch.testing.assert_close(
                g[i], model.get_parameter(name).grad, rtol=0, atol=1e-5, msg=name
            )
    assert not model.training


def test_train_mode_uses_the_dropout_masks_of_a_batched_forward(model, batch):
    """vmap(randomness="different") draws per-sample masks exactly as a batched forward after
    the same seed; per-sample gradients of that forward are the reference. Block-by-block and
    all-at-once agree, so every group saw the same masks."""
    rng = torch.get_rng_state()
    grads = dict(iter_per_sample_grads(model, batch, chunk_size=8, seed=3))
    assert torch.equal(torch.get_rng_state(), rng) and not model.training
    at_once = dict(iter_per_sample_grads(model, batch, chunk_size=8, seed=3, group_by="all"))
    model.train()
    torch.manual_seed(3)
    pred = model(
        batch.states, batch.actions, batch.returns_to_go, batch.timesteps, batch.attention_mask
    )
    losses = sample_losses(pred, batch.actions, batch.attention_mask)
    params = [model.get_parameter(n) for n in grads]
    for i in range(len(batch)):
        ref = torch.autograd.grad(losses[i], params, retain_graph=True)
        for (name, g), r in zip(grads.items(), ref, strict=True):
            torch.testing.assert_close(g[i], r, rtol=0, atol=1e-5, msg=name)
            torch.testing.assert_close(g[i], at_once[name][i], rtol=0, atol=1e-6, msg=name)
    eval_grads = dict(iter_per_sample_grads(model, batch, chunk_size=8, train_mode=False))
    assert not torch.allclose(grads["predict_action.weight"], eval_grads["predict_action.weight"])


@pytest.mark.parametrize("train_mode", [False, True])
def test_batch_grads_equal_a_backward_of_the_training_loss(model, batch, train_mode):
    rng = torch.get_rng_state()
    grads = batch_grads(model, batch, train_mode=train_mode, seed=4)
    assert torch.equal(torch.get_rng_state(), rng) and not model.training
    assert sorted(grads) == sorted(used_parameters(model))
    assert all(p.grad is None for p in model.parameters())
    model.train(train_mode)
    torch.manual_seed(4)
    action_loss(model, batch).backward()
    for name, g in grads.items():
        torch.testing.assert_close(g, model.get_parameter(name).grad, msg=name)
    # the batch loss weighs samples by their real steps: not the mean of the per-sample grads
    per_sample = dict(iter_per_sample_grads(model, batch, train_mode=False))
    name = "predict_action.weight"
    if not train_mode:
        assert not torch.allclose(grads[name], per_sample[name].mean(0), atol=1e-6)
        steps = batch.attention_mask.sum(1).double()
        weighted = (per_sample[name].double() * steps[:, None, None]).sum(0) / steps.sum()
        torch.testing.assert_close(grads[name].double(), weighted, rtol=1e-5, atol=1e-7)


def test_bad_input(model, batch):
    with pytest.raises(DtlensError, match="not a trainable parameter"):
        next(iter_per_sample_grads(model, batch, params=["backbone.embed.W_E"]))
    with pytest.raises(DtlensError, match="not a trainable parameter"):
        batch_grads(model, batch, params=["backbone.embed.W_E"])
    batch.timesteps[0, 0] = model.cfg.max_ep_len
    with pytest.raises(DtlensError, match="timesteps"):
        next(iter_per_sample_grads(model, batch))


def test_fit_memory_cuts_groups_into_runs_within_the_budget():
    groups = [["a", "b", "c", "d"], ["e"]]
    nbytes = {"a": 3, "b": 3, "c": 5, "d": 1, "e": 9}
    assert fit_memory(groups, nbytes, 6) == [["a", "b"], ["c", "d"], ["e"]]
    assert fit_memory(groups, nbytes, 100) == groups
    assert fit_memory(groups, nbytes, 1) == [["a"], ["b"], ["c"], ["d"], ["e"]]


def test_pack_groups_joins_consecutive_runs_within_the_budget():
    groups = [["a", "b"], ["c"], ["d", "e"], ["f"]]
    nbytes = {"a": 2, "b": 2, "c": 3, "d": 4, "e": 4, "f": 1}
    assert pack_groups(groups, nbytes, 7) == [["a", "b", "c"], ["d"], ["e", "f"]]
    assert pack_groups(groups, nbytes, 100) == [["a", "b", "c", "d", "e", "f"]]
    assert pack_groups(groups, nbytes, 1) == [["a"], ["b"], ["c"], ["d"], ["e"], ["f"]]


def test_gradients_held_at_once_stay_within_memory_with_the_same_values(monkeypatch, model, batch):
    """The groups differentiated together hold at most `memory` bytes of per-sample gradients
    (a tensor larger than it alone); cutting them changes no value: every group sees the same
    dropout masks."""
    from dtlens.diagnostics import per_sample as module

    held: list[tuple[int, int]] = []  # (tensors, bytes) of each group
    real = module._group_grads

    def spy(model, batch, names, *args):
        held.append(
            (len(names), sum(len(batch) * model.get_parameter(n).numel() * 4 for n in names))
        )
        return real(model, batch, names, *args)

    monkeypatch.setattr(module, "_group_grads", spy)
    whole = dict(iter_per_sample_grads(model, batch, chunk_size=2, seed=5, memory=None))
    block_bytes = max(b for _, b in held)
    memory = block_bytes // 3
    held.clear()
    cut = dict(iter_per_sample_grads(model, batch, chunk_size=2, seed=5, memory=memory))
    assert all(b <= memory for n, b in held if n > 1) and len(held) > model.cfg.n_layers + 1
    assert block_bytes > memory  # without the cut a block holds more: the check can fail
    assert list(cut) == list(whole)
    for name, g in cut.items():
        torch.testing.assert_close(g, whole[name], rtol=0, atol=1e-6, msg=name)


def test_squared_norms_in_column_blocks(monkeypatch):
    from dtlens.diagnostics import per_sample as module

    g = torch.randn(3, 7, 5)
    monkeypatch.setattr(module, "_BLOCK_ELEMENTS", 6)  # blocks of 2 columns
    expected = g.double().flatten(1).square().sum(1).numpy()
    np.testing.assert_allclose(squared_norms(g), expected, rtol=1e-12)


def test_chunks_fit_activation_memory_with_the_same_values(monkeypatch, model, batch):
    """Chunks shrink to fit `ACTIVATION_MEMORY` (more blocks: fewer samples a chunk, so saved
    activations do not grow with depth); in eval mode the values do not depend on the chunks."""
    from dtlens.diagnostics import per_sample as module

    tokens = 3 * batch.timesteps.shape[1]
    one_sample = module.samples_per_chunk(model, tokens, 1)
    assert one_sample == 1
    budget = 3 * 4 * module._SAVED_PER_TOKEN * tokens * (16 + 32 + 2 * tokens) * 3  # 3 samples
    assert module.samples_per_chunk(model, tokens, budget) == 3  # tiny: 2 blocks (+1)
    deeper = DecisionTransformer(replace(model.cfg, backbone=replace(TINY, n_layers=5)), seed=1)
    assert module.samples_per_chunk(deeper, tokens, budget) == 1
    sizes: list[int] = []
    real = module._group_grads

    def spy(model, batch, names, chunk_size, *args):
        sizes.append(chunk_size)
        return real(model, batch, names, chunk_size, *args)

    monkeypatch.setattr(module, "_group_grads", spy)
    monkeypatch.setattr(module, "ACTIVATION_MEMORY", budget)
    cut = dict(iter_per_sample_grads(model, batch, chunk_size=8, train_mode=False))
    assert set(sizes) == {3}
    whole = dict(iter_per_sample_grads(model, batch, chunk_size=8, train_mode=False, memory=None))
    assert set(sizes) == {3, 8}
    for name, g in cut.items():
        torch.testing.assert_close(g, whole[name], rtol=0, atol=1e-6, msg=name)
