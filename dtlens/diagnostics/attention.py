"""Mean attention distance: how far back, in tokens or timesteps, each head looks.

For a row-stochastic attention pattern A (query i, key j), query i's distance is
d_i = sum_j A_ij |i - j|, and a head's distance is the mean of d_i over the valid queries
(Dosovitskiy et al. 2021). A Decision Transformer has 3 tokens (return, state, action) per
timestep, so ``unit="timestep"`` divides by 3. `attention_distance_paper_variant` (from GPT-2's
``c_attn``) and `paper_variant_from_qk` reproduce the paper's released code, which computes
something else (see their docstrings); `per_sample_change` is the released figure's change
between two epochs, `change_of_mean` dtlens's.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float, Shaped

from dtlens.errors import DtlensError

Array = np.ndarray | torch.Tensor
TOKENS_PER_TIMESTEP = 3


def _to_numpy(a: Array) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def _like(out: np.ndarray, ref: Array) -> Array:
    """`out` as the type of `ref`: a tensor on its device (its dtype if floating), or numpy."""
    if not isinstance(ref, torch.Tensor):
        return out
    dtype = ref.dtype if ref.is_floating_point() else torch.float64
    return torch.from_numpy(out).to(device=ref.device, dtype=dtype)


def _offsets(t: int) -> np.ndarray:
    """|i - j| for a t x t pattern."""
    positions = np.arange(t)
    return np.abs(positions[:, None] - positions[None, :]).astype(np.float64)


def _pattern(pattern: Array, check: bool) -> np.ndarray:
    a = _to_numpy(pattern)
    if a.ndim < 3 or a.shape[-1] != a.shape[-2]:
        raise DtlensError(
            f"pattern: expected (..., head, query, key) with query == key, got {a.shape}"
        )
    if check:
        if not np.isfinite(a).all():
            raise DtlensError("pattern: contains NaN or inf")
        if (a < -1e-6).any():
            raise DtlensError("pattern: has negative attention weights")
        rows = a.sum(axis=-1)
        bad = ~(np.isclose(rows, 1.0, atol=1e-4) | (rows == 0))
        if bad.any():
            raise DtlensError(
                f"pattern: rows must sum to 1 (or 0 where padded), one sums to {rows[bad][0]:.6g}"
            )
    return a


def _per_query(a: np.ndarray) -> np.ndarray:
    return (a * _offsets(a.shape[-1])).sum(axis=-1)


def per_query_distance(
    pattern: Float[Array, "*batch head query key"], *, check: bool = False
) -> Float[Array, "*batch head query"]:
    """d_i = sum_j A_ij |i - j| for every query, in tokens. `check`: validate the pattern."""
    return _like(_per_query(_pattern(pattern, check)), pattern)


def attention_distance(
    pattern: Float[Array, "*batch head query key"],
    unit: Literal["token", "timestep"] = "token",
    query_mask: Shaped[Array, "*batch query"] | None = None,
    *,
    check: bool = False,
) -> Float[Array, "*batch head"]:
    """Mean over valid queries of sum_j A_ij |i - j|, per head.

    `query_mask` (1 = real token) has the pattern's leading dims then query, size-1 dims
    broadcasting: ``mask[:, None]`` for a (sample, layer, head, query, key) pattern.
    Queries whose attention row is all zero (fully padded) are excluded too. A head with no valid
    query gives NaN. `check=True` raises `DtlensError` unless every row is non-negative and sums
    to 1 (or 0). Numpy in, numpy out; torch in, torch out.
    """
    if unit not in ("token", "timestep"):
        raise DtlensError(f"unknown unit {unit!r}: use 'token' or 'timestep'")
    a = _pattern(pattern, check)
    valid = a.sum(axis=-1) > 0  # (..., head, query)
    if query_mask is not None:
        mask = _to_numpy(query_mask) != 0
        try:
            if mask.ndim != a.ndim - 2:
                raise ValueError
            valid = valid & mask[..., None, :]
        except ValueError:
            raise DtlensError(
                f"query_mask {mask.shape} must have the pattern's {a.shape} leading dims, "
                "then query (size-1 dims broadcast, e.g. mask[:, None] for a layer axis)"
            ) from None
    count = valid.sum(axis=-1)
    total = (_per_query(a) * valid).sum(axis=-1)
    out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    if unit == "timestep":
        out = out / TOKENS_PER_TIMESTEP
    return _like(out, pattern)


def paper_variant_from_qk(
    q: Float[Array, "*batch seq d_model"], k: Float[Array, "*batch seq d_model"]
) -> Float[Array, "*batch"]:
    """The released code's attention distance from full-width q and k (the q and k slices of
    GPT-2's ``c_attn`` output; in TransformerLens, ``hook_q`` / ``hook_k`` with the heads
    concatenated): ``mean(tril(softmax(q k^T / sqrt(d_model))) * |i - j|)`` over all T x T
    entries. See `attention_distance_paper_variant` for what departs from the paper."""
    qa, ka = _to_numpy(q), _to_numpy(k)
    if qa.shape != ka.shape or qa.ndim < 2:
        raise DtlensError(
            f"q and k must share a (..., T, d_model) shape, got {qa.shape}, {ka.shape}"
        )
    scores = qa @ np.swapaxes(ka, -1, -2) / np.sqrt(qa.shape[-1])
    scores -= scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights = np.tril(weights / weights.sum(axis=-1, keepdims=True))
    return _like((weights * _offsets(qa.shape[-2])).mean(axis=(-2, -1)), q)


def attention_distance_paper_variant(
    c_attn_weight: Float[Array, "d_model three_d_model"],
    c_attn_bias: Float[Array, " three_d_model"],
    hidden: Float[Array, "*batch seq d_model"],
) -> Float[Array, "*batch"]:
    """The attention distance as the paper's released code computes it (a known departure).

    `hidden` is the input of GPT-2's ``attn.c_attn`` (the block's ``ln_1`` output) and
    `c_attn_weight` / `c_attn_bias` that Conv1D's parameters (HF layout: x @ W + b). The code
    splits x @ W + b into q and k of the full d_model width (one "head" rebuilt from all 12; the
    real heads are never used), takes softmax(q k^T / sqrt(d_model)) over ALL keys, and only then
    zeroes the upper triangle (so rows sum to less than 1), ignores padding, and returns
    ``np.mean(A * |i - j|)``: the mean over all T x T entries, zeros included, i.e.
    sum_ij A_ij |i - j| / T^2, not a mean over queries. The code slices ``[:768]``,
    ``[768:1536]`` and divides by sqrt(768); this uses d_model, the same for GPT-2.
    """
    w, b, h = _to_numpy(c_attn_weight), _to_numpy(c_attn_bias), _to_numpy(hidden)
    d = w.shape[0]
    if w.shape != (d, 3 * d) or b.shape != (3 * d,) or h.ndim < 2 or h.shape[-1] != d:
        raise DtlensError(
            f"expected c_attn weight (d, 3d), bias (3d,), hidden (..., T, d); "
            f"got {w.shape}, {b.shape}, {h.shape}"
        )
    qkv = h @ w + b
    return _like(paper_variant_from_qk(qkv[..., :d], qkv[..., d : 2 * d]), hidden)


def change_of_mean(
    d_epoch: Float[Array, "sample ..."], d_first: Float[Array, "sample ..."]
) -> Float[np.ndarray, "..."]:
    """|mean d_e - mean d_0| over samples (axis 0, NaNs skipped): how much the head's mean
    distance moved. dtlens's `change`."""
    return np.abs(mean_over_samples(d_epoch) - mean_over_samples(d_first))


def mean_over_samples(d: Float[Array, "sample ..."]) -> Float[np.ndarray, "..."]:
    """The mean over samples (axis 0), NaNs skipped; NaN, silently, where every sample is NaN
    (a head a block of a mixed backbone does not have, or one with no valid query)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(_to_numpy(d), axis=0)


def per_sample_change(
    d_epoch: Float[Array, "sample ..."], d_first: Float[Array, "sample ..."]
) -> Float[np.ndarray, "sample ..."]:
    """|d_e - d_0| per sample: the change the paper's figure box-plots.

    Released: ``analysis/section-56-dependence-on-context/compute_attention_distance.py``
    computes each sample's distance per block at epoch1 and epoch2 (the formula of
    `attention_distance_paper_variant`), then ``att_dist_diff_abs = np.abs(np.array(
    att_dist_mat_list[0]) - np.array(att_dist_mat_list[1]))``, shape (sample, block), and
    box-plots it per block (seaborn, 200 samples).
    Its mean over samples is mean |d_e - d_0| >= |mean d_e - mean d_0| (`change_of_mean`): equal
    when every sample moves the same way; samples moving opposite ways cancel in the change of
    the mean and add up here, so a model whose mean distance stays put can still read large.
    """
    a, b = _to_numpy(d_epoch), _to_numpy(d_first)
    if a.shape != b.shape:
        raise DtlensError(f"distances of the two epochs differ in shape: {a.shape}, {b.shape}")
    return np.abs(a - b)
