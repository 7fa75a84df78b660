"""Per-sample gradients from a batched backward pass: each layer's inputs and output gradients.

A plain batched forward of a chunk of samples records every `F.linear`, `F.layer_norm`,
`F.rms_norm` and `F.embedding` whose weight or bias derives from a parameter (a
`TorchFunctionMode`); one backward pass of the sum of the samples' losses then goes to the
recorded outputs only, making no parameter's `.grad`. Sample i's gradient of a linear weight is
g_i^T a_i (a: the layer's inputs, g: its output gradients, over i's tokens; one `bmm` for the
chunk), of a bias the sum of g_i; of a norm's weight the sum of g_i x the normalised input; of
an embedding the rows of g_i added at i's indices. A weight made of parameters (the fused blocks'
q/k/v from W_Q, W_K, W_V, transposes, a tied head) is mapped back to them through its Jacobian,
probed once on a one-sample forward: each element of such a parameter must be one element of
the weight. A DT whose backbone runs TransformerLens's hooked blocks (other decoder families, a
hook attached) is not supported (`batched_route_fits`): use `iter_grad_blocks`.

The values are `iter_grad_blocks`'s (given the dropout masks the samples are independent; the
chunks, and in train mode their masks, are drawn as there: a batched forward of each chunk from
one stream started at `torch.manual_seed(seed)`), at the cost of one forward and backward pass
of every sample for every parameter, where vmap makes one for each group of parameters.

The first `together` samples' gradients (a Gram matrix's) come tensor by tensor, all of them at
once: their chunks' layer inputs and output gradients are kept until the last chunk (a GPT-2
block's are 2.9 MB a sample of 60 tokens, a tenth of its gradient), up to `memory` bytes; beyond
it the layers are split into passes over those chunks, each a forward and a backward down to its
lowest layer. The other samples come chunk by chunk, as gradients or (`squared`) as squared
norms: those of whole rows of a linear weight without making its gradient ("ghost" norms,
||g^T a||^2 = sum over token pairs of (a_t . a_t') (g_t . g_t'): T^2 (d_in + d_out) products
instead of T d_in d_out, a tenth at GPT-2 size and 60 tokens). Peak memory: `memory` + one
layer's gradients of the `together` samples + one chunk's activations.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from torch.overrides import TorchFunctionMode

from dtlens.data.windows import Batch
from dtlens.diagnostics.per_sample import (
    ACTIVATION_MEMORY,
    GRAD_MEMORY,
    _check_timesteps,
    _checked_names,
    _mode,
    _rng_state,
    _set_rng_state,
    sample_losses,
    samples_per_chunk,
    squared_norms,
)
from dtlens.errors import DtlensError
from dtlens.model.dt import DecisionTransformer

_SIGNATURES = {f: inspect.signature(f) for f in (F.layer_norm, F.rms_norm, F.embedding)}
_CODE = 1 << 12  # a weight's flat index is probed as two floats below 2^12 (exact in float32)


class Unsupported(DtlensError):
    """A parameter enters the forward in a way the batched route cannot differentiate."""


@dataclass
class _Layer:
    """One recorded call: its kind, the inputs its per-sample gradients need, its output."""

    kind: str  # "linear", "layer_norm", "rms_norm", "embedding"
    x: Tensor  # the input (the indices of an embedding)
    out: Tensor
    weight: Tensor | None
    bias: Tensor | None
    args: dict = field(default_factory=dict)  # normalized_shape, eps; rows of an embedding


def _layer(func: Callable, args: tuple, kwargs: dict, out: Tensor) -> _Layer | None:
    """The record of a call of `func` whose weight or bias requires grad, else None."""
    if func is F.linear:
        bound = dict(zip(("input", "weight", "bias"), args, strict=False)) | kwargs
        kind = "linear"
    elif func in _SIGNATURES:
        bound = _SIGNATURES[func].bind(*args, **kwargs)
        bound.apply_defaults()
        bound, kind = bound.arguments, func.__name__
    else:
        return None
    weight, bias = bound.get("weight"), bound.get("bias")
    if not any(t is not None and t.requires_grad for t in (weight, bias)):
        return None
    if kind == "embedding":
        special = bound["padding_idx"] is not None or bound["max_norm"] is not None
        if special or bound["scale_grad_by_freq"] or bound["sparse"]:
            raise Unsupported("an embedding with padding_idx, max_norm or a scaled gradient")
        extra = {"rows": weight.shape[0]}
    elif kind != "linear":
        extra = {"normalized_shape": tuple(bound["normalized_shape"]), "eps": bound["eps"]}
    else:
        extra = {}
    return _Layer(kind, bound["input"], out, weight, bias, extra)


class _Tape(TorchFunctionMode):
    """Records the layers of a forward pass (see `_layer`)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers: list[_Layer] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        layer = _layer(func, args, kwargs, out)
        if layer is not None:
            self.layers.append(layer)
        return out


def batched_route_fits(model: DecisionTransformer) -> bool:
    """Whether `model`'s forward runs the fused GPT-2 blocks, whose every parameter enters
    through a layer `_Tape` records."""
    return model.fast_path and not model.cfg.backbone.arch and not model._backbone_hooked()


# -- the map from a layer's weight to the parameters it is made of -------------------------------
@dataclass
class _Piece:
    """Part of a parameter's per-sample gradient from a layer's weight or bias: the parameter's
    flat elements `dest` (None: all) are the layer tensor's flat elements `src` (None: all; a
    slice: a run of them)."""

    name: str
    src: Tensor | slice | None
    dest: Tensor | None


def _pieces(t: Tensor | None, params: dict[str, Tensor], ordered: bool) -> list[_Piece]:
    """How the parameters in `params` make `t` (a layer's weight or bias). `ordered`: each
    parameter's elements in its own order; else in `t`'s (a permutation of them, which neither
    norms nor inner products see)."""
    if t is None or not t.requires_grad:
        return []
    for name, p in params.items():
        if t is p:
            return [_Piece(name, None, None)]
        if t._base is p and _permutes(t, p):  # a view: a reshape, a transpose
            if not ordered:
                return [_Piece(name, None, None)]
            where = torch.arange(p.numel(), device=t.device).as_strided(t.shape, t.stride())
            src = torch.empty_like(where.flatten())
            src[where.flatten()] = torch.arange(t.numel(), device=t.device)
            return [_Piece(name, src, None)]
    return _probed(t, params, ordered)


def _permutes(view: Tensor, p: Tensor) -> bool:
    """Whether `view` holds each element of the contiguous `p` exactly once (its strides, in
    decreasing order, are those of a dense layout from `p`'s first element)."""
    if not p.is_contiguous() or view.storage_offset() != p.storage_offset():
        return False
    dims = sorted((s, n) for s, n in zip(view.stride(), view.shape, strict=True) if n > 1)
    dense = 1
    for stride, size in dims:
        if stride != dense:
            return False
        dense *= size
    return dense == p.numel()


def _probed(t: Tensor, params: dict[str, Tensor], ordered: bool) -> list[_Piece]:
    """`_pieces` from `t`'s Jacobian: its flat indices (as floats, exact) and ones, pulled back
    to the parameters; each parameter element must receive exactly one element of `t`."""
    if t.dtype not in (torch.float32, torch.float64):
        raise Unsupported(f"a weight made of {t.dtype} parameters")
    index = torch.arange(t.numel(), device=t.device)
    probes = [index % _CODE, index // _CODE] if t.numel() > _CODE**2 else [index]
    probes = torch.stack([*probes, torch.ones_like(index)]).to(t.dtype).view(-1, *t.shape)
    names = list(params)
    found = torch.autograd.grad(
        t,
        [params[n] for n in names],
        probes,
        retain_graph=True,
        allow_unused=True,
        is_grads_batched=True,
    )
    out = []
    for name, g in zip(names, found, strict=True):
        if g is None:
            continue
        *codes, count = g.flatten(1)
        if not bool(((count == 0) | (count == 1)).all()):
            raise Unsupported(f"{name} is not a plain selection of a layer's weight")
        dest = (count == 1).nonzero().squeeze(1)
        src = codes[0][dest].long()
        if len(codes) == 2:
            src = src + _CODE * codes[1][dest].long()
        if len(dest) == params[name].numel():
            dest = None
        if not ordered and dest is None:
            low, high = int(src.min()), int(src.max())
            if high - low + 1 == len(src) and bool(torch.bincount(src - low).eq(1).all()):
                src = slice(low, high + 1)  # a run of t's elements
        out.append(_Piece(name, src, dest))
    return out


@dataclass
class _Plan:
    """The layers of a forward pass, as recorded on one sample."""

    kinds: list[str]
    pieces: list[tuple[list[_Piece], list[_Piece]]]  # (weight's, bias's) per layer
    nbytes: list[int]  # bytes a sample's kept inputs and output gradients take, per layer
    rows: list[int]  # an embedding's rows (0 for the other layers)
    shapes: dict[str, tuple[int, ...]]
    ordered: bool  # each parameter's elements in its own order (`_pieces`)


def _plan(model: DecisionTransformer, batch: Batch, names: list[str], ordered: bool) -> _Plan:
    params = {n: model.get_parameter(n) for n in names}
    one = batch.index([0])
    with _mode(model, False), _Tape() as tape:
        model(one.states, one.actions, one.returns_to_go, one.timesteps, one.attention_mask)
    pieces, nbytes = [], []
    for layer in tape.layers:
        pieces.append(tuple(_pieces(t, params, ordered) for t in (layer.weight, layer.bias)))
        if layer.kind in ("layer_norm", "rms_norm"):  # kept as the per-sample gradients
            size = sum(t.numel() for t in (layer.weight, layer.bias) if t is not None)
        else:
            size = layer.x.numel() + layer.out.numel()
        nbytes.append(4 * size)
    found = [piece.name for pair in pieces for part in pair for piece in part]
    if missing := sorted(set(names) - set(found)):
        raise Unsupported(f"parameters not in a recorded layer: {missing}")
    shared = {name: params[name] for name in found if found.count(name) > 1}
    if shared and not ordered:  # parts summed must be in the same order: the parameter's
        for i, layer in enumerate(tape.layers):
            if not any(p.name in shared for part in pieces[i] for p in part):
                continue
            pieces[i] = tuple(
                [p for p in part if p.name not in shared] + _pieces(t, shared, True)
                for part, t in zip(pieces[i], (layer.weight, layer.bias), strict=True)
            )
    kinds = [layer.kind for layer in tape.layers]
    rows = [layer.args.get("rows", 0) for layer in tape.layers]
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    return _Plan(kinds, pieces, nbytes, rows, shapes, ordered)


def _passes(plan: _Plan, samples: int, memory: int | None) -> list[list[int]]:
    """The layers split into runs whose kept bytes for `samples` fit `memory`; the layers that
    share a parameter (a tied head) stay in one run."""
    owner: dict[str, int] = {}
    group = list(range(len(plan.kinds)))  # union-find: layers sharing a parameter

    def root(i: int) -> int:
        while group[i] != i:
            i = group[i]
        return i

    for i, pair in enumerate(plan.pieces):
        for piece in pair[0] + pair[1]:
            if piece.name in owner:
                group[root(i)] = root(owner[piece.name])
            owner.setdefault(piece.name, i)
    members: dict[int, list[int]] = {}
    for i in range(len(group)):
        members.setdefault(root(i), []).append(i)
    out: list[list[int]] = []
    total = 0
    for layers in members.values():
        size = samples * sum(plan.nbytes[i] for i in layers)
        if out and (memory is None or total + size <= memory):
            out[-1] += layers
            total += size
        else:
            out.append(list(layers))
            total = size
    return [sorted(run) for run in out]


# -- a chunk's layers, their per-sample gradients ------------------------------------------------
def _kept(layer: _Layer, g: Tensor | None) -> tuple[Tensor, ...]:
    """What a layer's per-sample gradients need of one chunk (a norm's: the gradients)."""
    n = len(layer.out)
    if g is None:
        g = torch.zeros_like(layer.out)
    g = g.detach()
    if layer.kind == "linear":
        return layer.x.detach().reshape(n, -1, layer.x.shape[-1]), g.reshape(n, -1, g.shape[-1])
    if layer.kind == "embedding":
        return layer.x.reshape(n, -1), g.reshape(n, -1, g.shape[-1])
    shape = layer.args["normalized_shape"]
    x = layer.x.detach()
    with torch.no_grad():
        if layer.kind == "layer_norm":
            unit = F.layer_norm(x, shape, None, None, layer.args["eps"])
        else:
            unit = F.rms_norm(x, shape, None, layer.args["eps"])
    dims = tuple(range(1, g.ndim - len(shape)))
    dw = (g * unit).sum(dims) if layer.weight is not None else None
    db = g.sum(dims) if layer.bias is not None else None
    return dw, db


def _layer_grads(kind: str, kept: tuple[Tensor, ...], rows: int) -> tuple[Tensor, Tensor]:
    """(weight, bias) per-sample gradients, (n, *shape), from a layer's kept tensors."""
    if kind == "linear":
        x, g = kept
        return torch.bmm(g.transpose(1, 2), x), g.sum(1)
    if kind == "embedding":
        index, g = kept
        n, d = len(g), g.shape[-1]
        offset = torch.arange(n, device=g.device)[:, None] * rows
        out = torch.zeros(n * rows, d, dtype=g.dtype, device=g.device)
        out.index_add_(0, (index + offset).flatten(), g.reshape(-1, d))
        return out.view(n, rows, d), None
    return kept


def _rows(piece: _Piece, d_in: int) -> slice | None:
    """The output rows of a linear weight that make `piece`, if it is whole rows of it."""
    if piece.dest is not None or isinstance(piece.src, Tensor):
        return None
    if piece.src is None:
        return slice(None)
    start, stop = piece.src.start, piece.src.stop
    return slice(start // d_in, stop // d_in) if start % d_in == stop % d_in == 0 else None


def _ghost_norms(
    x: Float[Tensor, "n token d_in"], g: Float[Tensor, "n token d_out"], rows: list[slice]
) -> Iterator[Float[np.ndarray, " n"]]:
    """Each sample's squared norm of g^T x, restricted to each run of output `rows`, without
    making it: sum over token pairs of (x_t . x_t') (g_t . g_t'), T^2 (d_in + d_out) products
    instead of T d_in d_out; the dot products in float32, their sum in float64."""
    xx = torch.bmm(x, x.transpose(1, 2)).double()
    for run in rows:
        part = g[..., run]
        yield (xx * torch.bmm(part, part.transpose(1, 2))).sum((1, 2)).cpu().numpy()


def _assemble(
    plan: _Plan,
    layers: list[int],
    kept: dict[int, tuple[Tensor, ...]],
    ordered: bool,
    squared: bool = False,
) -> Iterator[tuple[str, Float[Tensor, "n ..."] | Float[np.ndarray, " n"]]]:
    """Each parameter's per-sample gradients from the `layers` (all the layers it is in), layer
    by layer: a parameter as soon as its last layer is done. `squared`: their squared norms
    instead, a parameter made of whole rows of one linear weight by `_ghost_norms`."""
    left: dict[str, int] = {}
    for i in layers:
        for piece in plan.pieces[i][0] + plan.pieces[i][1]:
            left[piece.name] = left.get(piece.name, 0) + 1
    sums: dict[str, Tensor] = {}
    for i in layers:
        pieces, kind = plan.pieces[i], plan.kinds[i]
        if squared and kind == "linear":
            x, g = kept[i]
            rows = {p.name: _rows(p, x.shape[-1]) for p in pieces[0] if left[p.name] == 1}
            ghost = [p for p in pieces[0] if rows.get(p.name) is not None]
            norms = _ghost_norms(x, g, [rows[p.name] for p in ghost])
            for piece, sq in zip(ghost, norms, strict=True):
                left[piece.name] -= 1
                yield piece.name, sq
            if len(ghost) == len(pieces[0]):  # only the bias is left
                kept[i] = (x[..., :0], g)
            pieces = ([p for p in pieces[0] if p not in ghost], pieces[1])
        grads = _layer_grads(kind, kept.pop(i), plan.rows[i])
        for part, g in zip(pieces, grads, strict=True):
            for piece in part:
                flat = g.flatten(1) if piece.src is None else g.flatten(1)[:, piece.src]
                shape = plan.shapes[piece.name] if ordered else (-1,)
                left[piece.name] -= 1
                alone = piece.dest is None and piece.name not in sums and not left[piece.name]
                if alone:
                    out = flat
                else:
                    numel = flat.new_empty(plan.shapes[piece.name]).numel()
                    total = sums.setdefault(piece.name, flat.new_zeros(len(flat), numel))
                    if piece.dest is None:
                        total += flat
                    else:
                        total.index_add_(1, piece.dest, flat)
                    if left[piece.name]:
                        continue
                    out = sums.pop(piece.name)
                if squared:
                    yield piece.name, squared_norms(out)
                else:
                    yield piece.name, out.reshape(len(out), *shape)
        del grads


def _chunk_layers(
    model: DecisionTransformer, chunk: Batch, layers: list[int], plan: _Plan
) -> dict[int, tuple[Tensor, ...]]:
    """A batched forward and backward pass of `chunk`: the kept tensors of `layers`."""
    with _Tape() as tape:
        pred = model(
            chunk.states, chunk.actions, chunk.returns_to_go, chunk.timesteps, chunk.attention_mask
        )
    if [layer.kind for layer in tape.layers] != plan.kinds:
        raise Unsupported("the forward pass records other layers than the plan's")
    loss = sample_losses(pred, chunk.actions, chunk.attention_mask).sum()
    outs = [tape.layers[i].out for i in layers]
    grads = torch.autograd.grad(loss, outs, allow_unused=True)
    return {i: _kept(tape.layers[i], g) for i, g in zip(layers, grads, strict=True)}


def iter_batched_grad_blocks(
    model: DecisionTransformer,
    batch: Batch,
    params: list[str] | None = None,
    together: int | None = None,
    chunk_size: int = 16,
    train_mode: bool = True,
    seed: int = 0,
    memory: int | None = GRAD_MEMORY,
    ordered: bool = True,
    squared: bool = False,
) -> Iterator[tuple[str, slice, Float[Tensor, "samples ..."] | Float[np.ndarray, " samples"]]]:
    """`iter_grad_blocks` (same arguments, chunks, dropout masks and values) by batched forward
    and backward passes (see the module docstring); `memory`: bytes of the first `together`
    samples' layer inputs and output gradients kept at once (None: all). `ordered=False`
    yields (samples, numel): each parameter's elements in a fixed order of their own, all a
    norm or a Gram needs, without copies. `squared`: the samples after the first `together`
    come as their squared norms, a float64 array (samples,), a parameter made of whole rows of
    a linear weight without its gradients (`_ghost_norms`: 10x fewer products at GPT-2 size).
    Checks and plans at the call: raises `Unsupported` where the DT runs the hooked blocks or a
    parameter is not in a recorded layer, before any gradient is made."""
    if chunk_size < 1:
        raise DtlensError(f"chunk_size must be at least 1, got {chunk_size}")
    if not batched_route_fits(model):
        raise Unsupported("the DT runs TransformerLens's hooked blocks")
    names = _checked_names(model, params)
    batch = batch.to(model.device)
    _check_timesteps(model, batch)
    n = len(batch)
    together = n if together is None else together
    if not 0 <= together <= n:
        raise DtlensError(f"together must lie in [0, {n}], got {together}")
    plan = _plan(model, batch, names, ordered)
    if memory is not None:  # the chunks of `iter_grad_blocks`: the same dropout masks
        tokens = 3 * batch.timesteps.shape[1]
        chunk_size = min(chunk_size, samples_per_chunk(model, tokens, ACTIVATION_MEMORY))
    together = min(n, -(-together // chunk_size) * chunk_size)  # whole chunks
    return _blocks(model, batch, plan, together, chunk_size, train_mode, seed, memory, squared)


def _blocks(
    model: DecisionTransformer,
    batch: Batch,
    plan: _Plan,
    together: int,
    chunk_size: int,
    train_mode: bool,
    seed: int,
    memory: int | None,
    squared: bool,
) -> Iterator[tuple[str, slice, Float[Tensor, "samples ..."] | Float[np.ndarray, " samples"]]]:
    """`iter_batched_grad_blocks`'s blocks, once checked and planned."""
    n, ordered = len(batch), plan.ordered
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        state = _rng_state(devices)
    end = state
    for layers in _passes(plan, together, memory) if together else []:
        joined: dict[int, tuple[Tensor | None, ...]] = {}  # each layer's, all the samples
        with _mode(model, train_mode), torch.random.fork_rng(devices=devices):
            _set_rng_state(state, devices)
            for start in range(0, together, chunk_size):
                chunk = batch.index(slice(start, start + chunk_size))
                kept = _chunk_layers(model, chunk, layers, plan)
                for i in layers:
                    part = kept.pop(i)
                    if not start:
                        joined[i] = tuple(_buffer(t, together) for t in part)
                    for buffer, t in zip(joined[i], part, strict=True):
                        if t is not None:
                            buffer[start : start + len(t)] = t
            end = _rng_state(devices)
        for name, g in _assemble(plan, layers, joined, ordered):
            yield name, slice(0, together), g
    state = end  # where the first samples' chunks left the stream
    every = list(range(len(plan.kinds)))
    for start in range(together, n, chunk_size):
        chunk = batch.index(slice(start, start + chunk_size))
        with _mode(model, train_mode), torch.random.fork_rng(devices=devices):
            _set_rng_state(state, devices)
            kept = _chunk_layers(model, chunk, every, plan)
            state = _rng_state(devices)
        for name, g in _assemble(plan, every, kept, ordered, squared):
            yield name, slice(start, start + len(chunk)), g


def _buffer(t: Tensor | None, samples: int) -> Tensor | None:
    return None if t is None else t.new_empty((samples, *t.shape[1:]))
