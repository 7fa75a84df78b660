"""Per-sample gradients of the action loss, with `torch.func`, one parameter group at a time.

Why groups: the Gram route of gradient confusion and the per-tensor norms need, for each parameter
tensor, the gradients of all n samples. A vmap over samples of the gradient w.r.t. every parameter
holds n x P floats at once (17 GB for 50 samples of a GPT-2-sized DT). Here each group (one
transformer block; or the embeddings, final norm and head) is differentiated on its own: vmap over
chunks of samples of `grad` w.r.t. the group's parameters only fills one (n, *shape) buffer per
tensor, the tensors are yielded one by one and can be dropped by the consumer. A group whose
buffers would exceed `memory` bytes (default `GRAD_MEMORY`) is cut into consecutive runs of its
tensors (a GPT-2 block's 7M parameters x 100 samples are 2.8 GB: attention, MLP in, MLP out).
The chunks of samples are cut to fit `ACTIVATION_MEMORY` bytes of saved activations too (a
vmapped chunk of 16 GPT-2-sized windows of 60 tokens holds 2 GB). Peak memory: `memory` (or one
tensor's n x numel, if larger) + `ACTIVATION_MEMORY` (or one sample's activations), whatever the
number of blocks. Cost: one forward per group (n_layers + 1 instead of 1 without cuts), the
backward only down to the group. `group_by="all"` is the classic one-pass route that holds
every gradient (for comparison and small models).

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

import numpy as np
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
#: Bytes of per-sample gradients (n x the group's parameters) one group may hold at once: an
#: ImageGPT-small block x 100 samples (1.3 GB) fits whole, a GPT-2 block is cut in three.
GRAD_MEMORY = 3 * 2**29
#: Bytes of activations a vmapped chunk of samples may save for its backward pass.
ACTIVATION_MEMORY = 2**29
#: Floats a vmapped forward saves per token, block and (d_model + d_mlp + heads x tokens):
#: measured ~11 on CPU for GPT-2 small (125 MB a 60-token sample), rounded up.
_SAVED_PER_TOKEN = 12
_BLOCK_ELEMENTS = 1 << 22  # float64 copies are made in blocks of at most 32 MiB


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


def fit_memory(groups: list[list[str]], nbytes: dict[str, int], memory: int) -> list[list[str]]:
    """Each group cut into consecutive runs of its names whose `nbytes` (bytes of one tensor's
    per-sample gradients) sum to at most `memory`; a tensor larger than `memory` stands alone."""
    out = []
    for group in groups:
        part, total = [], 0
        for name in group:
            if part and total + nbytes[name] > memory:
                out.append(part)
                part, total = [], 0
            part.append(name)
            total += nbytes[name]
        out.append(part)
    return out


def samples_per_chunk(model: DecisionTransformer, tokens: int, memory: int) -> int:
    """How many samples of `tokens` tokens a vmapped chunk may hold within `memory` bytes of
    saved activations (at least one)."""
    b = model.cfg.backbone
    width = b.d_model + b.d_mlp + b.n_heads * tokens
    per_sample = 4 * _SAVED_PER_TOKEN * tokens * width * (b.n_layers + 1)
    return max(1, memory // per_sample)


def squared_norms(g: Float[Tensor, "n ..."]) -> Float[np.ndarray, " n"]:
    """Each sample's squared norm of `g`, summed in float64 over column blocks (a float64 copy
    of the whole (n, p) tensor would double its memory)."""
    flat = g.reshape(len(g), -1)
    step = max(1, _BLOCK_ELEMENTS // max(len(g), 1))
    out = torch.zeros(len(g), dtype=torch.float64, device=g.device)
    for start in range(0, flat.shape[1], step):
        out += flat[:, start : start + step].double().square().sum(dim=1)
    return out.cpu().numpy()


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
        del g  # before the next chunk's gradients are made
    return out


def iter_per_sample_grads(
    model: DecisionTransformer,
    batch: Batch,
    params: list[str] | None = None,
    chunk_size: int = 16,
    train_mode: bool = True,
    seed: int = 0,
    group_by: GroupBy = "block",
    memory: int | None = GRAD_MEMORY,
) -> Iterator[tuple[str, Float[Tensor, "n ..."]]]:
    """Yield `(name, grads (n, *shape))` for each parameter in `params` (default: every parameter
    the DT uses), the gradient of each sample's own action loss, computed group by group (see the
    module docstring). `train_mode` = dropout on, as the paper; `seed` fixes the dropout masks.
    `memory`: bytes of gradients a "block" group may hold (None: no cut of groups or chunks),
    `chunk_size` is also cut to `ACTIVATION_MEMORY`; the values do not depend on the groups, in
    eval mode not on the chunks either (in train mode each chunk draws its dropout masks)."""
    if chunk_size < 1:
        raise DtlensError(f"chunk_size must be at least 1, got {chunk_size}")
    names = _checked_names(model, params)
    batch = batch.to(model.device)
    _check_timesteps(model, batch)
    devices = [model.device] if model.device.type == "cuda" else []
    groups = parameter_groups(names, group_by)
    if memory is not None and group_by == "block":
        nbytes = {}
        for name in names:
            p = model.get_parameter(name)
            nbytes[name] = len(batch) * p.numel() * p.element_size()
        groups = fit_memory(groups, nbytes, memory)
    if memory is not None:
        tokens = 3 * batch.timesteps.shape[1]
        chunk_size = min(chunk_size, samples_per_chunk(model, tokens, ACTIVATION_MEMORY))
    for group in groups:
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
