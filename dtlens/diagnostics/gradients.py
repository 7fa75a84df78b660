"""Gradient confusion, per-sample clipping and norm shares, from per-sample gradients.

Gradient confusion (Sankararaman et al. 2020) is eta with <g_i, g_j> >= -eta for i != j; like
the paper we report the minimum pairwise cosine similarity. `GramAccumulator` builds the n x n
Gram matrix of the per-sample gradients one parameter tensor (or any column block) at a time,
in float64, so the (n, P) gradient matrix never has to exist. The cosine with a zero gradient is
defined as 0 (such a sample neither helps nor hurts the others), so no NaN appears.

The paper's released code (``analysis/signal_propagation.py`` and
``analysis/section-54-gradient-analysis/``) computes these on the GPT-2 blocks' tensors only and
after clipping; `released_tensor`, `released_confusion` and `released_share` reproduce it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import torch
from jaxtyping import Float

from dtlens.errors import DtlensError

Array = np.ndarray | torch.Tensor
_BLOCK_ELEMENTS = 1 << 22  # products are made in column blocks of at most 2^22 elements
#: Columns a float32 product sums before float64 takes over (`GramAccumulator(fast=True)`): a
#: Gram entry of GPT-2 small's 85M columns is then within ~5e-8 relative of float64's (the
#: rounding of the float32 gradients themselves), in a third of its time on CPU.
GRAM_COLUMNS = 1 << 12
_BLOCK = re.compile(r"^backbone\.blocks\.(\d+)\.(.+)$")
#: A DT block's TransformerLens tensors -> the HF GPT-2 tensor holding them, in HF's order.
RELEASED_TENSORS = {
    "ln1.w": "ln_1.weight",
    "ln1.b": "ln_1.bias",
    "attn.W_Q": "attn.c_attn.weight",
    "attn.W_K": "attn.c_attn.weight",
    "attn.W_V": "attn.c_attn.weight",
    "attn.b_Q": "attn.c_attn.bias",
    "attn.b_K": "attn.c_attn.bias",
    "attn.b_V": "attn.c_attn.bias",
    "attn.W_O": "attn.c_proj.weight",
    "attn.b_O": "attn.c_proj.bias",
    "ln2.w": "ln_2.weight",
    "ln2.b": "ln_2.bias",
    "mlp.W_in": "mlp.c_fc.weight",
    "mlp.b_in": "mlp.c_fc.bias",
    "mlp.W_out": "mlp.c_proj.weight",
    "mlp.b_out": "mlp.c_proj.bias",
}


def _float64(a: Array) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


class GramAccumulator:
    """Sum of g g^T over column blocks of the (n, P) per-sample gradient matrix, in float64:
    the products too, or with `fast` float32 products over runs of `GRAM_COLUMNS` columns."""

    def __init__(self, n: int, fast: bool = False) -> None:
        if n < 1:
            raise DtlensError(f"GramAccumulator needs at least one sample, got {n}")
        self.n = n
        self.fast = fast
        self.gram: Float[np.ndarray, "n n"] = np.zeros((n, n))

    def update(self, g_chunk: Float[Array, "n ..."]) -> Float[np.ndarray, " n"]:
        """Add the gradients of one parameter tensor: (n, ...) is flattened to (n, p_chunk).
        Returns their squared norms per sample (the diagonal of what was added)."""
        if g_chunk.shape[0] != self.n:
            raise DtlensError(
                f"gradient chunk has {g_chunk.shape[0]} samples, the accumulator {self.n}"
            )
        flat = torch.as_tensor(g_chunk).detach().reshape(self.n, -1)
        part = torch.zeros(self.n, self.n, dtype=torch.float64, device=flat.device)
        step = max(1, _BLOCK_ELEMENTS // self.n)
        for start in range(0, flat.shape[1], step):
            block = flat[:, start : start + step]
            if self.fast:
                part += gram(block)
            else:
                block = block.double()
                part += block @ block.T
        part = part.cpu().numpy()
        if not np.isfinite(np.diag(part)).all():  # a NaN or inf anywhere in a row shows here
            raise DtlensError("per-sample gradients contain NaN or inf")
        self.gram += part
        return np.diag(part).copy()

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


def gram(g: Float[torch.Tensor, "n p"]) -> Float[torch.Tensor, "n n"]:
    """g g^T in float64: float32 (or float64) products over runs of `GRAM_COLUMNS` columns,
    summed in float64."""
    if g.dtype != torch.float64:
        g = g.float()
    n, p = g.shape
    whole = p // GRAM_COLUMNS * GRAM_COLUMNS
    out = torch.zeros(n, n, dtype=torch.float64, device=g.device)
    if whole:
        runs = g[:, :whole].reshape(n, -1, GRAM_COLUMNS).transpose(0, 1)  # (run, n, columns)
        out += torch.bmm(runs, runs.transpose(1, 2)).sum(0, dtype=torch.float64)
    if whole < p:
        rest = g[:, whole:]
        out += (rest @ rest.T).double()
    return out


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


def released_tensor(name: str) -> str | None:
    """The name, in the released code's ``model.transformer.h.named_parameters()``, of the HF
    GPT-2 tensor holding the DT parameter `name` ("backbone.blocks.0.attn.W_Q" ->
    "0.attn.c_attn.weight"); None outside the blocks. A block tensor GPT-2 has no counterpart of
    keeps its own name."""
    m = _BLOCK.match(name)
    if m is None:
        return None
    block, rest = m.groups()
    return f"{block}.{RELEASED_TENSORS.get(rest, rest)}"


def released_confusion(
    block_gram: Float[np.ndarray, "n n"], clip_coef: Float[Array, " n"], eps: float = 1e-6
) -> float:
    """Gradient confusion as released: the minimum over ALL n^2 pairs (i = j included) of
    <a_i, a_j> / (eps + |a_i| |a_j|), a_i = clip_coef_i g_i the clipped gradient over the block
    tensors only, from the Gram matrix of the unclipped block gradients.

    Released: ``signal_propagation.py:get_gradients`` backpropagates each sample alone, calls
    ``clip_grad_norm_(model.parameters(), 0.25)`` (the coefficient from every parameter) and
    concatenates the grads of ``model.transformer.h`` only; ``compute_grad_confusion.py`` takes
    ``min`` of ``torch.dot(g1, g2) / (1e-6 + norm(g1) * norm(g2))`` over both loops.
    """
    c = _float64(clip_coef)
    if block_gram.shape != (len(c), len(c)):
        raise DtlensError(f"Gram {block_gram.shape} and {len(c)} clip coefficients disagree")
    gram = block_gram * c[:, None] * c[None, :]
    norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
    return float((gram / (eps + norms[:, None] * norms[None, :])).min())


def released_share(tensor_norms: Mapping[str, float]) -> dict[str, float]:
    """Each tensor's norm over the sum of the tensors' norms (not squared), as released.

    Released: ``signal_propagation.py:get_gradients_grad_per_norm`` backpropagates the whole
    batch's loss, clips it at 0.25 and stores ``torch.norm`` of each ``model.transformer.h``
    tensor's grad (c_attn's q, k and v in one tensor); ``compute_grad_norm.py`` divides each by
    ``np.sum`` of them all and reports "0.ln_1.weight" and "0.ln_1.bias" (the paper's 89% is the
    two together). Clipping scales every tensor alike, so it leaves the shares unchanged. Unlike
    `share_of_norm` the shares do not add up over a split of a tensor, and they come from the
    batch gradient, not per sample.
    """
    norms = {k: float(v) for k, v in tensor_norms.items()}
    if any(not v >= 0 or not np.isfinite(v) for v in norms.values()):
        raise DtlensError("tensor norms must be finite and non-negative")
    total = sum(norms.values())
    return {k: v / total if total > 0 else 0.0 for k, v in norms.items()}
