"""The action lens: the model's final norm and action head applied to the residual stream after
every block (a logit lens for Decision Transformers).

`action(sample, layer, action_dim)` is read at the last timestep's state token, where the model
reads its action; `layer` counts the blocks the stream has passed (0: the token embeddings,
n_layers: the output, equal to the model's own action). `error(layer)` is the mean squared error
against the dataset's action at that timestep.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from dtlens.data.windows import Batch
from dtlens.interp.inputs import (
    as_numpy,
    eval_mode,
    last_state_position,
    residual_stream,
)
from dtlens.model.dt import DecisionTransformer


@torch.no_grad()
def action_lens(model: DecisionTransformer, batch: Batch) -> xr.Dataset:
    """`action(sample, layer, action_dim)`: the action head (and tanh) on the final norm of the
    stream after `layer` blocks, at the last timestep; `target` is the dataset's action and
    `error(layer)` the mean squared error to it."""
    with eval_mode(model):
        resid = residual_stream(model, batch)[:, :, last_state_position(batch)]
        action = model.predict_action(model.backbone.ln_final(resid))
    if model.cfg.action_tanh:
        action = torch.tanh(action)
    action, target = as_numpy(action), as_numpy(batch.actions[:, -1])
    error = ((action - target[:, None]) ** 2).mean(axis=(0, 2))
    return xr.Dataset(
        {
            "action": (("sample", "layer", "action_dim"), action),
            "target": (("sample", "action_dim"), target),
            "error": (("layer",), error),
        },
        coords={
            "sample": np.arange(len(batch)),
            "layer": np.arange(model.cfg.n_layers + 1),
            "action_dim": np.arange(model.cfg.act_dim),
        },
    )
