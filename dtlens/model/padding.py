"""The paper's released padding semantics, for `DTConfig(padding="released")`.

Released `decision_transformer/models/trajectory_gpt2.py`: `GPT2Attention._attn` replaces the
scores above the diagonal by `masked_bias = -1e4` (not -inf), and `GPT2Model.forward` adds the
padding mask `(1 - attention_mask) * -1e4` on top. A real query row never sees a padded key
(exp(-1e4) is 0 in float32). A left-padded query row has only padded keys at or before it, at
score - 1e4, while its future real keys sit at exactly -1e4 and future padded keys at -2e4: the
row still sums to 1 and puts its weight on the future real tokens, so the activations at padded
positions differ from the masked variant's from block 1 on (the real positions do not).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

#: The released GPT-2's `masked_bias` and padding-mask value.
RELEASED_MASK_VALUE = -1e4


def released_scores(
    scores: Float[Tensor, "batch head query key"], key_mask: Int[Tensor, "batch key"] | None
) -> Float[Tensor, "batch head query key"]:
    """Attention scores masked as the released GPT-2 masks them, ready for the softmax.

    Entries above the diagonal become -1e4 whatever they held (TransformerLens's -inf included),
    then padded keys (`key_mask` 0) get -1e4 added, in the released order of operations.
    """
    q, k = scores.shape[-2:]
    causal = torch.ones(q, k, dtype=torch.bool, device=scores.device).tril(k - q)
    masked = torch.tensor(RELEASED_MASK_VALUE, dtype=scores.dtype, device=scores.device)
    scores = torch.where(causal, scores, masked)
    if key_mask is None:
        return scores
    return scores + (1.0 - key_mask.to(scores.dtype))[:, None, None, :] * RELEASED_MASK_VALUE
