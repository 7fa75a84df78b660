"""Block surgery: put one block of a donor backbone into another backbone."""

from __future__ import annotations

import dataclasses

import torch
from transformer_lens import HookedTransformer

from dtlens.errors import DtlensError
from dtlens.model.backbones import backbone_config, load_params, set_block
from dtlens.model.config import BLOCK_FIELDS


@torch.no_grad()
def replace_block(target: HookedTransformer, donor: HookedTransformer, index: int) -> None:
    """Copy block `index` (any index, 0 included) of `donor` into `target`, in place.

    Only the residual width must match. A donor block with other heads, MLP width, activation or
    norm comes in as a block of its own kind (a mixed backbone, hook names unchanged), as in the
    paper's released `experiment.py` (`--pretrained_block i`: `model.transformer.h[i] =
    model_pretrained.transformer.h[i]`, a 12-head gelu_new GPT-2 block in the 1-head ReLU model).
    """
    n = target.cfg.n_layers
    if not 0 <= index < min(n, donor.cfg.n_layers):
        raise DtlensError(
            f"block {index} out of range: the model has {n} blocks, the donor {donor.cfg.n_layers}"
        )
    if target.cfg.d_model != donor.cfg.d_model:
        raise DtlensError(
            f"donor block does not fit: d_model {donor.cfg.d_model} vs {target.cfg.d_model}"
        )
    ours, theirs = backbone_config(target).block(index), backbone_config(donor).block(index)
    if ours.arch != theirs.arch:
        family = dict(theirs.arch).get("original_architecture", "GPT-2")
        raise DtlensError(
            f"donor block of another decoder family ({family}): build the model in its layout"
        )
    own = {f: getattr(theirs, f) for f in BLOCK_FIELDS}
    block = target.blocks[index]
    if any(getattr(ours, f) != v for f, v in own.items()):
        block = set_block(target, index, dataclasses.replace(ours, **own))
    load_params(block, dict(donor.blocks[index].named_parameters()), f"donor block {index}")
