"""Block surgery: put one block of a donor backbone into another, as (spec, weights)."""

from __future__ import annotations

import dataclasses

from dtlens.errors import DtlensError
from dtlens.model.backbones import Backbone
from dtlens.model.config import BLOCK_FIELDS, BlockConfig


def replace_block(target: Backbone, donor: Backbone, index: int) -> Backbone:
    """`target` with block `index` (any index, 0 included) of `donor`; nothing is built.

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
    ours, theirs = target.cfg.block(index), donor.cfg.block(index)
    if ours.arch != theirs.arch:
        family = dict(theirs.arch).get("original_architecture", "GPT-2")
        raise DtlensError(
            f"donor block of another decoder family ({family}): build the model in its layout"
        )
    own = BlockConfig(index, **{f: getattr(theirs, f) for f in BLOCK_FIELDS})
    blocks = [b for b in target.cfg.blocks if b.index != index] + [own]
    cfg = dataclasses.replace(target.cfg, blocks=tuple(blocks))
    prefix = f"blocks.{index}."
    state = {k: v for k, v in target.state.items() if not k.startswith(prefix)}
    state |= {k: v for k, v in donor.state.items() if k.startswith(prefix)}
    return dataclasses.replace(target, cfg=cfg, state=state)
