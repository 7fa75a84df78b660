"""Per-sample gradients of the action loss, with `torch.func`, one parameter group at a time.

Why groups: the Gram route of gradient confusion and the per-tensor norms need, for each parameter
tensor, the gradients of all n samples. A vmap over samples of the gradient w.r.t. every parameter
holds n x P floats at once (17 GB for 50 samples of a GPT-2-sized DT). Here each group (one
transformer block; or the embeddings, final norm and head) is differentiated on its own: vmap over
chunks of samples of `grad` w.r.t. the group's parameters only fills one (n, *shape) buffer per
tensor, the tensors are yielded one by one and can be dropped by the consumer. Peak memory:
n x (largest group) + one chunk's activations. Cost: one forward per group (n_layers + 1 instead
of 1), the backward only down to the group. `group_by="all"` is the classic one-pass route that
holds every gradient (for comparison and small models).

Train mode (the paper's setting: dropout on) uses `randomness="different"`: each sample gets its
own dropout masks, the very masks a plain batched forward of the same chunk draws after
`torch.manual_seed(seed)`. The RNG is reseeded with `seed` before every group, so all groups see
the same masks and each sample's gradient is the gradient of one realised loss. The global RNG
state is left as it was.

The DT checks its timesteps with data-dependent control flow, which vmap cannot trace; the
vmapped function therefore feeds constant timesteps and puts each sample's own timestep embedding
in at `hook_time_embed` (the timesteps are range-checked before). It indexes the embedding
table rather than calling `nn.Embedding`: the same values, but vmap's rule for the embedding's
backward is ~50x slower and larger.

`batch_grads` is the plain gradient of the whole batch's loss (one backward pass), which the
paper's per-tensor share uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.func import functional_call, grad, vmap

from dtlens.data.windows import Batch
from dtlens.errors import DtlensError
from dtlens.model.backbones import UNUSED_BY_DT
from dtlens.model.dt import DecisionTransformer

GroupBy = Literal["block", "all"]
_UNUSED = tuple(f"backbone.{prefix}" for prefix in UNUSED_BY_DT)


def sample_losses(
    pred: Float[Tensor, "batch step act_dim"],
    actions: Float[Tensor, "batch step act_dim"],
    attention_mask: Int[Tensor, "batch step"],
) -> Float[Tensor, " batch"]:
    """Each sample's action MSE over its real steps (= `action_loss` of a one-sample batch)."""
    err = ((pred - actions) ** 2).mean(-1)
    mask = attention_mask.to(err.dtype)
    return (err * mask).sum(-1) / mask.sum(-1)


def used_parameters(model: DecisionTransformer) -> list[str]:
    """Names of the parameters a DT's forward uses (TransformerLens's token and position
    embeddings and unembedding are not) that require grad, in `named_parameters` order."""
    return [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and not name.startswith(_UNUSED)
    ]


def parameter_groups(names: list[str], group_by: GroupBy = "block") -> list[list[str]]:
    """Split parameter names into groups: one per transformer block plus one for the rest
    ("block"), or a single group ("all")."""
    if group_by == "all":
        return [list(names)]
    if group_by != "block":
        raise DtlensError(f"group_by must be 'block' or 'all', got {group_by!r}")
    groups: dict[str, list[str]] = {}
    for name in names:
        parts = name.split(".")
        key = ".".join(parts[:3]) if name.startswith("backbone.blocks.") else "rest"
        groups.setdefault(key, []).append(name)
    return list(groups.values())


@contextmanager
def _mode(model: DecisionTransformer, train: bool) -> Iterator[None]:
    was_training = model.training
    model.train(train)
    try:
        yield
    finally:
        model.train(was_training)


def _checked_names(model: DecisionTransformer, params: list[str] | None) -> list[str]:
    known = used_parameters(model)
    names = known if params is None else list(params)
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise DtlensError(f"not a trainable parameter the DT uses: {unknown}")
    return names


def _check_timesteps(model: DecisionTransformer, batch: Batch) -> None:
    t = batch.timesteps
    if t.min() < 0 or t.max() >= model.cfg.max_ep_len:
        raise DtlensError(f"timesteps must lie in [0, {model.cfg.max_ep_len})")


def _group_grads(
    model: DecisionTransformer,
    batch: Batch,
    names: list[str],
    chunk_size: int,
    train_mode: bool,
) -> dict[str, Float[Tensor, "n ..."]]:
    """Per-sample gradients of the parameters `names`, all samples, chunk by chunk."""
    params = {k: p.detach() for k, p in model.named_parameters()}
    group = {k: params.pop(k) for k in names}
    const_t = torch.zeros_like(batch.timesteps[0])

    def loss(group, states, actions, rtg, timesteps, mask):
        def time_embed(x, hook):
            return model.embed_timestep.weight[timesteps[None]]

        # The hooked blocks have vmap batching rules; fused attention would fall back to a loop.
        with model.hooked_path(), model.hooks(fwd_hooks=[("hook_time_embed", time_embed)]):
            inputs = (states[None], actions[None], rtg[None], const_t[None], mask[None])
            pred = functional_call(model, (group, params), inputs)
        return sample_losses(pred, actions[None], mask[None])[0]

    per_sample = vmap(
        grad(loss), in_dims=(None, 0, 0, 0, 0, 0), randomness="different" if train_mode else "error"
    )
    n = len(batch)
    out = {k: torch.empty((n, *v.shape), dtype=v.dtype, device=v.device) for k, v in group.items()}
    for start in range(0, n, chunk_size):
        c = batch.index(slice(start, start + chunk_size))
        g = per_sample(group, c.states, c.actions, c.returns_to_go, c.timesteps, c.attention_mask)
        for k in names:
            out[k][start : start + len(c)] = g[k]
    return out


def iter_per_sample_grads(
    model: DecisionTransformer,
    batch: Batch,
    params: list[str] | None = None,
    chunk_size: int = 16,
    train_mode: bool = True,
    seed: int = 0,
    group_by: GroupBy = "block",
) -> Iterator[tuple[str, Float[Tensor, "n ..."]]]:
    """Yield `(name, grads (n, *shape))` for each parameter in `params` (default: every parameter
    the DT uses), the gradient of each sample's own action loss, computed group by group (see the
    module docstring). `train_mode` = dropout on, as the paper; `seed` fixes the dropout masks."""
    if chunk_size < 1:
        raise DtlensError(f"chunk_size must be at least 1, got {chunk_size}")
    names = _checked_names(model, params)
    batch = batch.to(model.device)
    _check_timesteps(model, batch)
    devices = [model.device] if model.device.type == "cuda" else []
    for group in parameter_groups(names, group_by):
        with _mode(model, train_mode), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            grads = _group_grads(model, batch, group, chunk_size, train_mode)
        for name in group:
            yield name, grads.pop(name)


def batch_grads(
    model: DecisionTransformer,
    batch: Batch,
    params: list[str] | None = None,
    train_mode: bool = True,
    seed: int = 0,
) -> dict[str, Float[Tensor, "..."]]:
    """{name: gradient} of the batch's action loss (the mean over every real step of the batch,
    as in training) w.r.t. `params` (default: every parameter the DT uses), one backward pass.
    `train_mode` = dropout on, its masks drawn after `torch.manual_seed(seed)`; the global RNG
    state, the model's mode and its `.grad`s are left as they were."""
    names = _checked_names(model, params)
    batch = batch.to(model.device)
    _check_timesteps(model, batch)
    devices = [model.device] if model.device.type == "cuda" else []
    with _mode(model, train_mode), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        pred = model(
            batch.states, batch.actions, batch.returns_to_go, batch.timesteps, batch.attention_mask
        )
        err = ((pred - batch.actions) ** 2).mean(-1)
        mask = batch.attention_mask.to(err.dtype)
        loss = (err * mask).sum() / mask.sum()
        grads = torch.autograd.grad(loss, [model.get_parameter(n) for n in names])
    return dict(zip(names, grads, strict=True))
