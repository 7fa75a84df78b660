"""Gradient confusion, per-sample clipping and norm shares, from per-sample gradients.

Gradient confusion (Sankararaman et al. 2020) is eta with <g_i, g_j> >= -eta for i != j; like
the paper we report the minimum pairwise cosine similarity. `GramAccumulator` builds the n x n
Gram matrix of the per-sample gradients one parameter tensor (or any column block) at a time,
in float64, so the (n, P) gradient matrix never has to exist. The cosine with a zero gradient is
defined as 0 (such a sample neither helps nor hurts the others), so no NaN appears.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from jaxtyping import Float

from dtlens.errors import DtlensError

Array = np.ndarray | torch.Tensor
_BLOCK_ELEMENTS = 1 << 22  # float64 copies are made in blocks of at most 32 MiB


def _float64(a: Array) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


class GramAccumulator:
    """Sum of g g^T over column blocks of the (n, P) per-sample gradient matrix."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise DtlensError(f"GramAccumulator needs at least one sample, got {n}")
        self.n = n
        self.gram: Float[np.ndarray, "n n"] = np.zeros((n, n))

    def update(self, g_chunk: Float[Array, "n ..."]) -> None:
        """Add the gradients of one parameter tensor: (n, ...) is flattened to (n, p_chunk)."""
        if g_chunk.shape[0] != self.n:
            raise DtlensError(
                f"gradient chunk has {g_chunk.shape[0]} samples, the accumulator {self.n}"
            )
        flat = g_chunk.reshape(self.n, -1)
        step = max(1, _BLOCK_ELEMENTS // self.n)
        for start in range(0, flat.shape[1], step):
            block = _float64(flat[:, start : start + step])
            if not np.isfinite(block).all():
                raise DtlensError("per-sample gradients contain NaN or inf")
            self.gram += block @ block.T

    def norms(self) -> Float[np.ndarray, " n"]:
        return np.sqrt(np.maximum(np.diag(self.gram), 0.0))

    def cosine(self) -> Float[np.ndarray, "n n"]:
        """Pairwise cosine similarities; 0 with a zero gradient, 1 on the diagonal otherwise."""
        norms = self.norms()
        nonzero = norms > 0
        scale = np.where(nonzero, 1.0 / np.where(nonzero, norms, 1.0), 0.0)
        cos = np.clip(self.gram * scale[:, None] * scale[None, :], -1.0, 1.0)
        np.fill_diagonal(cos, nonzero.astype(np.float64))
        return cos

    def cosine_values(self) -> Float[np.ndarray, " pair"]:
        """The n (n - 1) / 2 cosines of distinct pairs (upper triangle, row by row)."""
        return self.cosine()[np.triu_indices(self.n, k=1)]

    def confusion(self) -> float:
        """The minimum cosine over pairs i != j."""
        if self.n < 2:
            raise DtlensError("gradient confusion needs at least 2 samples")
        return float(self.cosine_values().min())


def gradient_confusion(G: Float[Array, "n p"]) -> float:
    """Minimum pairwise cosine similarity of the rows of G (per-sample gradients)."""
    if G.ndim != 2:
        raise DtlensError(f"G: expected (samples, parameters), got shape {tuple(G.shape)}")
    acc = GramAccumulator(G.shape[0])
    acc.update(G)
    return acc.confusion()


def clip_coefficients(norms: Float[Array, " n"], max_norm: float = 0.25) -> Float[np.ndarray, " n"]:
    """The factor torch.nn.utils.clip_grad_norm_ multiplies each sample's gradient by, were it
    clipped alone: min(1, max_norm / (norm + 1e-6))."""
    return np.minimum(1.0, max_norm / (_float64(norms) + 1e-6))


def share_of_norm(
    per_tensor_sq_norms: Mapping[str, Float[Array, " n"]] | Float[Array, "n tensor"],
) -> dict[str, Float[np.ndarray, " n"]] | Float[np.ndarray, "n tensor"]:
    """Each tensor's share of the total squared gradient norm, per sample.

    Takes {name: (n,) squared norms} and returns {name: (n,) shares}, or a (sample, tensor)
    array and returns the same shape. Shares of a sample sum to 1; all 0 for a zero gradient.
    """
    if isinstance(per_tensor_sq_norms, Mapping):
        names = list(per_tensor_sq_norms)
        stacked = np.stack([_float64(per_tensor_sq_norms[k]) for k in names], axis=-1)
        return dict(zip(names, np.moveaxis(share_of_norm(stacked), -1, 0), strict=True))
    sq = _float64(per_tensor_sq_norms)
    if (sq < 0).any() or not np.isfinite(sq).all():
        raise DtlensError("squared norms must be finite and non-negative")
    total = sq.sum(axis=-1, keepdims=True)
    return np.where(total > 0, sq / np.where(total > 0, total, 1.0), 0.0)
