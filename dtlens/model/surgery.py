"""Block surgery: put one block of a donor backbone into another backbone."""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer

from dtlens.errors import DtlensError
from dtlens.model.backbones import backbone_config


@torch.no_grad()
def replace_block(target: HookedTransformer, donor: HookedTransformer, index: int) -> None:
    """Copy block `index` (any index, 0 included) of `donor` into `target`, in place."""
    n = target.cfg.n_layers
    if not -n <= index < n or index >= donor.cfg.n_layers:
        raise DtlensError(
            f"block {index} out of range: the model has {n} blocks, the donor {donor.cfg.n_layers}"
        )
    t, d = backbone_config(target.cfg), backbone_config(donor.cfg)
    if (t.d_model, t.n_heads, t.d_mlp, t.normalization_type) != (
        d.d_model,
        d.n_heads,
        d.d_mlp,
        d.normalization_type,
    ):
        raise DtlensError(
            f"donor block does not fit: d_model/heads/d_mlp/norm {d.d_model}/{d.n_heads}/"
            f"{d.d_mlp}/{d.normalization_type} vs {t.d_model}/{t.n_heads}/{t.d_mlp}/"
            f"{t.normalization_type}"
        )
    if t.act_fn != d.act_fn:
        raise DtlensError(f"donor activation {d.act_fn} differs from the model's {t.act_fn}")
    target.blocks[index].load_state_dict(donor.blocks[index].state_dict())
