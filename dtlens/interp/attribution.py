"""Direct action attribution: which components write the action into the residual stream.

The action at the last timestep is read from the residual stream at the last state token,
`x = tokens + sum_i (attn_out_i + mlp_out_i)`, through the final norm and the action head. With
the final norm's scale held at its value on `x` (as in direct logit attribution) that readout is
linear, so the pre-tanh action splits exactly into one term per component:

- `state_embed`, `time_embed`: the last state token's own embeddings (with their biases),
  through the embedding norm with its scale frozen as well;
- `L{i}H{h}`: head h of block i, `z_h @ W_O[h]`;
- `L{i}MLP`: the MLP of block i without its output bias;
- `bias`: everything that does not depend on the input (the embedding norm's bias, every
  `b_O` and `b_out`, the final norm's bias and the head's bias).
"""

from __future__ import annotations

import einops
import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn
from transformer_lens.components import LayerNorm, RMSNorm

from dtlens.data.windows import Batch
from dtlens.errors import DtlensError
from dtlens.interp.inputs import as_numpy, eval_mode, last_state_position, model_args
from dtlens.model.dt import DecisionTransformer

COMPONENT_TYPES = ("embed", "head", "mlp", "bias")


def frozen_norm(norm: nn.Module, v: Tensor, scale: Tensor) -> Tensor:
    """`norm`'s linear part applied to one term `v` of its input, the input's `scale` held
    fixed (centring for LayerNorm, then / scale * weight); the norm's bias is not added."""
    if isinstance(norm, nn.LayerNorm):
        weight, centre = norm.weight, True
    elif isinstance(norm, LayerNorm):
        weight, centre = norm.w, True
    elif isinstance(norm, RMSNorm):
        weight, centre = norm.w, False
    else:
        raise DtlensError(f"attribution needs a LayerNorm or RMSNorm, got {type(norm).__name__}")
    if centre:
        v = v - v.mean(-1, keepdim=True)
    return v / scale * weight


def norm_bias(norm: nn.Module) -> Tensor | None:
    return (
        getattr(norm, "bias", None) if isinstance(norm, nn.LayerNorm) else getattr(norm, "b", None)
    )


def components(model: DecisionTransformer) -> tuple[list[str], list[str], list[int], list[int]]:
    """Component names with their type, block (-1 outside blocks) and head (-1 if none)."""
    names, types, layers, heads = ["state_embed", "time_embed"], ["embed"] * 2, [-1, -1], [-1, -1]
    for i in range(model.cfg.n_layers):
        for h in range(model.cfg.backbone.block(i).n_heads):  # mixed backbones: per block
            names.append(f"L{i}H{h}")
            types.append("head")
            layers.append(i)
            heads.append(h)
        names.append(f"L{i}MLP")
        types.append("mlp")
        layers.append(i)
        heads.append(-1)
    return [*names, "bias"], [*types, "bias"], [*layers, -1], [*heads, -1]


def _attribute(model: DecisionTransformer, batch: Batch) -> tuple[Tensor, Tensor]:
    """(contribution (B, component, act_dim), pre-tanh prediction (B, act_dim))."""
    n_layers, p = model.cfg.n_layers, last_state_position(batch)
    blocks = model.backbone.blocks
    names = ["hook_state_embed", "hook_time_embed", "backbone.ln_final.hook_scale"]
    names += [f"backbone.blocks.{i}.attn.hook_z" for i in range(n_layers)]
    names += [f"backbone.blocks.{i}.hook_mlp_out" for i in range(n_layers)]
    cache: dict[str, Tensor] = {}

    def save(x: Tensor, hook) -> None:
        cache[hook.name] = x

    with model.hooks(fwd_hooks=[(name, save) for name in names]):
        hidden = model.hidden_states(*model_args(model, batch))
    prediction = model.predict_action(hidden[:, p])

    state, time = cache["hook_state_embed"][:, -1], cache["hook_time_embed"][:, -1]
    ln = model.embed_ln
    x = state + time  # the last state token before the embedding norm
    embed_scale = (x.var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt()
    terms = [frozen_norm(ln, state, embed_scale), frozen_norm(ln, time, embed_scale)]
    constant = ln.bias.clone()
    for i, block in enumerate(blocks):
        z = cache[f"backbone.blocks.{i}.attn.hook_z"][:, p]  # (B, head, d_head)
        terms += einops.einsum(z, block.attn.W_O, "b h e, h e d -> h b d").unbind(0)
        terms.append(cache[f"backbone.blocks.{i}.hook_mlp_out"][:, p] - block.mlp.b_out)
        constant = constant + block.attn.b_O + block.mlp.b_out
    resid = torch.stack([*terms, constant.expand_as(terms[0])], dim=1)  # (B, component, d)
    scale = cache["backbone.ln_final.hook_scale"][:, p, None]  # (B, 1, 1)
    head = model.predict_action
    contribution = frozen_norm(model.backbone.ln_final, resid, scale) @ head.weight.T
    final_bias = norm_bias(model.backbone.ln_final)
    readout_bias = head.bias + (head.weight @ final_bias if final_bias is not None else 0.0)
    contribution[:, -1] += readout_bias
    return contribution, prediction


@torch.no_grad()
def action_attribution(
    model: DecisionTransformer, batch: Batch, batch_size: int = 256
) -> xr.Dataset:
    """`contribution(sample, component, action_dim)` of every component to the pre-tanh action
    at the last timestep; it sums over `component` to `prediction(sample, action_dim)`, the
    model's pre-tanh output, and `action` is the model's output (tanh of it when the DT has a
    tanh head)."""
    if batch_size < 1:
        raise DtlensError(f"batch_size must be at least 1, got {batch_size}")
    with eval_mode(model):
        parts = [
            _attribute(model, batch.index(slice(i, i + batch_size)))
            for i in range(0, len(batch), batch_size)
        ]
    contribution = np.concatenate([as_numpy(c) for c, _ in parts])
    prediction = np.concatenate([as_numpy(p) for _, p in parts])
    action = np.tanh(prediction) if model.cfg.action_tanh else prediction
    names, types, layers, heads = components(model)
    return xr.Dataset(
        {
            "contribution": (("sample", "component", "action_dim"), contribution),
            "prediction": (("sample", "action_dim"), prediction),
            "action": (("sample", "action_dim"), action),
        },
        coords={
            "sample": np.arange(len(batch)),
            "component": names,
            "component_type": ("component", types),
            "layer": ("component", layers),
            "head": ("component", heads),
            "action_dim": np.arange(model.cfg.act_dim),
        },
    )
