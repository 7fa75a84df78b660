"""Hooks -> xarray: one forward pass per minibatch, every requested activation kept in float32.

A capture is an `xr.Dataset` with one variable per hook kind, stacked over blocks:
`resid_post(sample, layer, position, d_model)`, `pattern(sample, layer, head, query, key)`,
`tokens(sample, position, d_model)`, ...; `valid(sample, position)` (False at left padding) and the
batch's `timesteps(sample, step)`; coordinates `token_type` (return/state/action) and `timestep`
(0..K-1 within the window) along `position`. In a mixed backbone (a block swap), a block with fewer
heads or a narrower MLP than another is NaN beyond its own. Its attrs name the run, epoch, init,
dataset, dtlens version, the hooks, the number of `samples` and `probe_hash`, a digest of the input
batch: two captures with the same hash saw the same samples. A run's captures also name the
checkpoint they were made from (`run_path`, `checkpoint_sha256`, see `dtlens.capture.run`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import fields

import numpy as np
import torch
import xarray as xr
from jaxtyping import Float
from torch import Tensor

import dtlens
from dtlens.capture.hooks import HookKind, resolve_hooks
from dtlens.data.windows import Batch
from dtlens.errors import DtlensError
from dtlens.model.dt import TOKEN_TYPES, DecisionTransformer

DEFAULT_HOOKS = ("tokens", "resid_post", "pattern")
Attrs = Mapping[str, str | int]


def update_hash(h: hashlib._Hash, batch: Batch) -> None:
    """Feed `batch` into `h` row by row: hashing chunks in order equals hashing the whole."""
    rows = [
        np.ascontiguousarray(getattr(batch, f.name).cpu().numpy()).reshape(len(batch), -1)
        for f in fields(Batch)
    ]
    h.update(np.concatenate([r.view(np.uint8) for r in rows], axis=1).tobytes())


def batch_hash(batch: Batch) -> str:
    h = hashlib.sha256()
    update_hash(h, batch)
    return h.hexdigest()


def _stack(
    cache: Mapping[str, Tensor], kind: HookKind, layers: list[int]
) -> Float[np.ndarray, "batch ..."]:
    if kind.per_block:
        x = torch.stack(_padded([cache[kind.full_name(i)] for i in layers]), dim=1)
    else:
        x = cache[kind.full_name()]
    if kind.name.endswith("_scale"):
        x = x.squeeze(-1)
    return x.float().cpu().numpy()


def _padded(parts: list[Tensor]) -> list[Tensor]:
    """Blocks of a mixed backbone (block swap) differ in heads or MLP width: each block's tensor
    NaN-padded to the largest along every axis, so that they stack."""
    shape = torch.Size(max(sizes) for sizes in zip(*(p.shape for p in parts), strict=True))
    if all(p.shape == shape for p in parts):
        return parts
    out = []
    for p in parts:
        full = p.new_full(shape, float("nan"))
        full[tuple(slice(0, n) for n in p.shape)] = p
        out.append(full)
    return out


def _forward(
    model: DecisionTransformer, batch: Batch, kinds: list[HookKind], layers: list[int]
) -> dict[str, np.ndarray]:
    names = {k.full_name(i) for k in kinds for i in (layers if k.per_block else [None])}
    b = batch.to(model.device)
    _, cache = model.run_with_cache(
        b.states,
        b.actions,
        b.returns_to_go,
        b.timesteps,
        b.attention_mask,
        names_filter=lambda name: name in names,
    )
    return {k.name: _stack(cache, k, layers) for k in kinds}


@torch.inference_mode()
def capture(
    model: DecisionTransformer,
    batch: Batch,
    hooks: Sequence[str] = DEFAULT_HOOKS,
    batch_size: int = 256,
    attrs: Attrs | None = None,
) -> xr.Dataset:
    """Activations of `hooks` (short or full names, see `dtlens.capture.hooks`) on `batch`, in
    eval mode, `batch_size` samples per forward pass. `attrs` (run, epoch, init, dataset) go
    into the dataset's attrs."""
    if batch_size < 1:
        raise DtlensError(f"batch_size must be at least 1, got {batch_size}")
    kinds, layers = resolve_hooks(model, hooks)
    n = len(batch)
    if n == 0:
        raise DtlensError("nothing to capture: the batch is empty")
    out: dict[str, np.ndarray] = {}
    was_training = model.training
    model.eval()
    try:
        for start in range(0, n, batch_size):
            part = _forward(model, batch.index(slice(start, start + batch_size)), kinds, layers)
            for name, x in part.items():
                out.setdefault(name, np.empty((n, *x.shape[1:]), np.float32))
                out[name][start : start + len(x)] = x
    finally:
        model.train(was_training)
    return _dataset(out, kinds, layers, batch, attrs or {})


def _dataset(
    arrays: dict[str, np.ndarray],
    kinds: list[HookKind],
    layers: list[int],
    batch: Batch,
    attrs: Attrs,
) -> xr.Dataset:
    n, k = batch.timesteps.shape
    data = {
        kind.name: (("sample", "layer") if kind.per_block else ("sample",)) + kind.dims
        for kind in kinds
    }
    position = np.arange(3 * k)
    mask = batch.attention_mask.cpu().bool().numpy()
    ds = xr.Dataset(
        {name: (dims, arrays[name]) for name, dims in data.items()}
        | {
            "valid": (("sample", "position"), np.repeat(mask, 3, axis=1)),
            "timesteps": (("sample", "step"), batch.timesteps.cpu().numpy()),
        },
        coords={
            "sample": np.arange(n),
            "position": position,
            "token_type": ("position", np.array(TOKEN_TYPES)[position % 3]),
            "timestep": ("position", position // 3),
        }
        | ({"layer": layers} if layers else {}),
        attrs=dict(attrs)
        | {
            "dtlens_version": dtlens.__version__,
            "hooks": ",".join(kind.name for kind in kinds),
            "probe_hash": batch_hash(batch),
            "samples": n,
        },
    )
    for dim in ("query", "key"):
        if dim in ds.dims:
            ds = ds.assign_coords({dim: position})
    ds.encoding["unlimited_dims"] = {"sample"}
    return ds
