"""Per-sample gradients of the action loss, with `torch.func`, a group of parameters at a time.

Why groups: the Gram route of gradient confusion needs, for each parameter tensor, the gradients
of all its samples at once. A vmap over samples of the gradient w.r.t. every parameter holds
n x P floats (17 GB for 50 samples of a GPT-2-sized DT). Here a group of parameters is
differentiated on its own: vmap over chunks of samples of `grad` w.r.t. the group's parameters
only fills one (n, *shape) buffer per tensor, the tensors are yielded one by one and can be
dropped by the consumer. Groups are consecutive transformer blocks (and the embeddings, final
norm and head), packed up to `memory` bytes of gradients (default `GRAD_MEMORY`), a block larger
than that cut into consecutive runs of its tensors (a GPT-2 block's 7M parameters x 100 samples
are 2.8 GB: attention, MLP in, MLP out). Each group costs one forward and a backward down to
its lowest block, so few, large groups are fast.

Per-sample norms need each sample's gradient once, not all samples together: `iter_grad_blocks`
gives the first `together` samples (the Gram's) group by group, and the others chunk by chunk,
each chunk's groups packed for its few samples (a GPT-2-sized DT's every parameter for 3 samples
is 1 GB: one forward and backward pass a chunk).

The chunks of samples are cut to fit `ACTIVATION_MEMORY` bytes of saved activations too (a
vmapped chunk of 16 GPT-2-sized windows of 60 tokens holds 2 GB). Peak memory: `memory` (or one
tensor's n x numel, if larger) + `ACTIVATION_MEMORY` (or one sample's activations), whatever the
number of blocks. `group_by="all"` is the classic one-pass route that holds every gradient (for
comparison and small models).

Train mode (the paper's setting: dropout on) uses `randomness="different"`: each sample gets its
own dropout masks, the very masks a plain batched forward of the same chunk draws. The chunks
draw from one stream started at `torch.manual_seed(seed)`, in sample order, and every group of a
chunk starts from that chunk's place in the stream, so all groups see the same masks and each
sample's gradient is the gradient of one realised loss. The global RNG state is left as it
was.

The DT checks its timesteps with data-dependent control flow, which vmap cannot trace; the
vmapped function therefore feeds constant timesteps and puts each sample's own timestep embedding
in at `hook_time_embed` (the timesteps are range-checked before). It indexes the embedding
table rather than calling `nn.Embedding`: the same values, but vmap's rule for the embedding's
backward is ~50x slower and larger. vmap runs the DT's own path (the fused blocks of
`dtlens.model.fast`, their attention sample by sample): the same numbers as the hooked blocks,
and faster.

`batch_grads` is the plain gradient of the whole batch's loss (one backward pass), which the
paper's per-tensor share uses.
"""

from __future__ import annotations

import warnings
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


def pack_groups(groups: list[list[str]], nbytes: dict[str, int], memory: int) -> list[list[str]]:
    """`fit_memory`'s runs, then consecutive runs joined while their `nbytes` sum to at most
    `memory`: as few groups (forward passes) as the budget allows."""
    out: list[list[str]] = []
    total = 0
    for part in fit_memory(groups, nbytes, memory):
        size = sum(nbytes[name] for name in part)
        if out and total + size <= memory:
            out[-1] = out[-1] + part
            total += size
        else:
            out.append(list(part))
            total = size
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

        with model.hooks(fwd_hooks=[("hook_time_embed", time_embed)]):
            inputs = (states[None], actions[None], rtg[None], const_t[None], mask[None])
            pred = functional_call(model, (group, params), inputs)
        return sample_losses(pred, actions[None], mask[None])[0]

    per_sample = vmap(
        grad(loss), in_dims=(None, 0, 0, 0, 0, 0), randomness="different" if train_mode else "error"
    )
    n = len(batch)
    out = {k: torch.empty((n, *v.shape), dtype=v.dtype, device=v.device) for k, v in group.items()}
    with warnings.catch_warnings():
        # vmap runs the fused attention (and its backward) sample by sample: still faster than
        # the hooked blocks, which it batches, and the same numbers
        warnings.filterwarnings("ignore", "There is a performance drop", UserWarning)
        for start in range(0, n, chunk_size):
            c = batch.index(slice(start, start + chunk_size))
            g = per_sample(
                group, c.states, c.actions, c.returns_to_go, c.timesteps, c.attention_mask
            )
            for k in names:
                out[k][start : start + len(c)] = g[k]
            del g  # before the next chunk's gradients are made
    return out


def _rng_state(devices: list[torch.device]) -> list[Tensor]:
    return [torch.get_rng_state()] + [torch.cuda.get_rng_state(d) for d in devices]


def _set_rng_state(state: list[Tensor], devices: list[torch.device]) -> None:
    torch.set_rng_state(state[0])
    for d, s in zip(devices, state[1:], strict=True):
        torch.cuda.set_rng_state(s, d)


def _seeded_grads(
    model: DecisionTransformer,
    batch: Batch,
    names: list[str],
    chunk_size: int,
    train_mode: bool,
    state: list[Tensor],
) -> tuple[dict[str, Float[Tensor, "n ..."]], list[Tensor]]:
    """`_group_grads` with the RNG at `state` (every group of the same samples is given the same
    state: the same dropout masks), the model in train or eval mode; the RNG state it leaves and
    the model's mode are restored after."""
    devices = [model.device] if model.device.type == "cuda" else []
    with _mode(model, train_mode), torch.random.fork_rng(devices=devices):
        _set_rng_state(state, devices)
        grads = _group_grads(model, batch, names, chunk_size, train_mode)
        return grads, _rng_state(devices)


def _groups(
    model: DecisionTransformer, names: list[str], n: int, group_by: GroupBy, memory: int | None
) -> list[list[str]]:
    """The parameter groups differentiated together for `n` samples: with a `memory` budget,
    consecutive blocks packed up to it ("block"), else one per block or all at once."""
    groups = parameter_groups(names, group_by)
    if memory is None or group_by != "block":
        return groups
    nbytes = {}
    for name in names:
        p = model.get_parameter(name)
        nbytes[name] = n * p.numel() * p.element_size()
    return pack_groups(groups, nbytes, memory)


def iter_grad_blocks(
    model: DecisionTransformer,
    batch: Batch,
    params: list[str] | None = None,
    together: int | None = None,
    chunk_size: int = 16,
    train_mode: bool = True,
    seed: int = 0,
    group_by: GroupBy = "block",
    memory: int | None = GRAD_MEMORY,
) -> Iterator[tuple[str, slice, Float[Tensor, "samples ..."]]]:
    """Yield `(name, samples, grads (len(samples), *shape))`: each sample's gradient of its own
    action loss w.r.t. each parameter in `params` (default: every parameter the DT uses).

    The first `together` samples (default: all; rounded up to whole chunks, so that the chunks,
    and in train mode the masks, do not depend on it) come first, each tensor's gradients of all
    of them at once, group by group (see the module docstring): what a Gram matrix needs. The
    others follow chunk by chunk, every tensor of a chunk before the next chunk, each chunk's
    groups packed for its own size (at GPT-2 size one forward and backward pass a chunk): what
    per-sample norms need. `train_mode` = dropout on, as the paper; `seed` fixes the dropout
    masks: the chunks draw them in order from one stream started at `torch.manual_seed(seed)`,
    every group of a chunk the same masks. `memory`: bytes of gradients a "block" group may hold
    (None: no packing or cut of groups or chunks); `chunk_size` is also cut to
    `ACTIVATION_MEMORY`. The values do not depend on the groups or on `together`, in eval mode
    not on the chunks either (in train mode each chunk draws its dropout masks)."""
    if chunk_size < 1:
        raise DtlensError(f"chunk_size must be at least 1, got {chunk_size}")
    names = _checked_names(model, params)
    batch = batch.to(model.device)
    _check_timesteps(model, batch)
    n = len(batch)
    together = n if together is None else together
    if not 0 <= together <= n:
        raise DtlensError(f"together must lie in [0, {n}], got {together}")
    devices = [model.device] if model.device.type == "cuda" else []
    if memory is not None:
        tokens = 3 * batch.timesteps.shape[1]
        chunk_size = min(chunk_size, samples_per_chunk(model, tokens, ACTIVATION_MEMORY))
    together = min(n, -(-together // chunk_size) * chunk_size)  # whole chunks
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        state = _rng_state(devices)
    first = batch.index(slice(0, together))
    end = state
    for group in _groups(model, names, together, group_by, memory) if together else []:
        grads, end = _seeded_grads(model, first, group, chunk_size, train_mode, state)
        for name in group:
            yield name, slice(0, together), grads.pop(name)
    state = end  # where the first samples' chunks left the stream
    for start in range(together, n, chunk_size):
        chunk = batch.index(slice(start, start + chunk_size))
        samples = slice(start, start + len(chunk))
        for group in _groups(model, names, len(chunk), group_by, memory):
            grads, end = _seeded_grads(model, chunk, group, len(chunk), train_mode, state)
            for name in group:
                yield name, samples, grads.pop(name)
        state = end


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
    the DT uses), all samples of a tensor at once: `iter_grad_blocks` with every sample
    together."""
    blocks = iter_grad_blocks(
        model, batch, params, None, chunk_size, train_mode, seed, group_by, memory
    )
    for name, _, grads in blocks:
        yield name, grads


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
