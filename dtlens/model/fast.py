"""The backbone's blocks as fused kernels, for forward passes that no hook needs to see.

TransformerLens computes attention step by step so that every intermediate has a hook point; it
also normalises the block input three times (once each for q, k, v). When nothing is attached to
the backbone's hook points, the same weights run here through one fused q/k/v projection and
PyTorch's scaled_dot_product_attention. The result equals the hooked path at every real token;
padded query rows attend to themselves here instead of to nothing (their outputs are never read).
With `released=True` (the paper's padding, `dtlens.model.padding`) the scores are masked as the
released GPT-2 masks them and the whole output, padded positions included, equals the hooked path.
Each block runs with its own heads and activation (mixed backbones).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import HookedTransformer

from dtlens.model.padding import released_scores


def _activation(name: str, block) -> callable:
    # gelu_new is exactly PyTorch's tanh-approximated GELU, which is one fused kernel.
    return (lambda x: F.gelu(x, approximate="tanh")) if name == "gelu_new" else block.mlp.act_fn


def norm(module: nn.Module, x: Tensor) -> Tensor:
    """A TransformerLens LayerNorm / RMSNorm as one fused kernel (same formula)."""
    if hasattr(module, "b"):
        return F.layer_norm(x, module.w.shape, module.w, module.b, module.eps)
    return F.rms_norm(x, module.w.shape, module.w, module.eps)


def allowed_keys(
    mask: Int[Tensor, "batch pos"] | None, n: int, device: torch.device
) -> Tensor | None:
    """(batch, 1, query, key) bool: causal and unpadded keys, plus the diagonal."""
    if mask is None:
        return None
    causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    keys = mask.bool()[:, None, None, :]
    return (causal & keys) | torch.eye(n, dtype=torch.bool, device=device)


def fused_blocks(
    backbone: HookedTransformer,
    x: Float[Tensor, "batch pos d_model"],
    mask: Int[Tensor, "batch pos"] | None,
    attn_dropout: float,
    resid_dropout: nn.Dropout,
    released: bool = False,
) -> Float[Tensor, "batch pos d_model"]:
    """Run every block of `backbone` on the residual stream `x`, then its final norm
    (`released`: with the paper's released padding semantics)."""
    B, T, D = x.shape
    allowed = None if released else allowed_keys(mask, T, x.device)
    p = attn_dropout if backbone.training or resid_dropout.training else 0.0
    for block in backbone.blocks:
        attn, mlp = block.attn, block.mlp
        H, dh = attn.W_Q.shape[0], attn.W_Q.shape[2]
        # One copy: cat writes the (head, d_head, d_model) transposes into one contiguous tensor.
        w = torch.cat([W.transpose(1, 2) for W in (attn.W_Q, attn.W_K, attn.W_V)])
        w = w.view(3 * H * dh, D)
        b = torch.cat([attn.b_Q, attn.b_K, attn.b_V]).reshape(3 * H * dh)
        qkv = F.linear(norm(block.ln1, x), w, b).view(B, T, 3, H, dh).permute(2, 0, 3, 1, 4)
        if released:
            scores = released_scores(qkv[0] @ qkv[1].transpose(-1, -2) / dh**0.5, mask)
            z = F.dropout(scores.softmax(dim=-1), p, training=p > 0) @ qkv[2]
        else:
            z = F.scaled_dot_product_attention(
                qkv[0], qkv[1], qkv[2], attn_mask=allowed, dropout_p=p, is_causal=allowed is None
            )
        z = z.transpose(1, 2).reshape(B, T, H * dh)
        x = x + resid_dropout(F.linear(z, attn.W_O.reshape(H * dh, D).T, attn.b_O))
        hidden = _activation(block.cfg.act_fn, block)(
            F.linear(norm(block.ln2, x), mlp.W_in.T, mlp.b_in)
        )
        x = x + resid_dropout(F.linear(hidden, mlp.W_out.T, mlp.b_out))
    return norm(backbone.ln_final, x)
