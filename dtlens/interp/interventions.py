"""Interventions on a Decision Transformer: ablate components, steer the residual stream.

Both are context managers over TransformerLens hooks (`model.hooks`): inside, every forward pass
is intervened on; on exit, also after an exception, the hooks are gone and the model is exactly as
before (its weights are never touched).

Components by name:

- `L{i}H{h}`: head h of block i (its `hook_z`, i.e. its rows of `W_O`; `b_O` stays);
- `L{i}ATTN`: every head of block i (all of `W_O`; `b_O` stays);
- `L{i}MLP`: the MLP of block i (its `hook_post`, i.e. `W_out`; `b_out` stays);
- `L{i}`: the whole block, `resid_post - resid_pre` (the block is skipped under "zero");
- any of them `@return`, `@state` or `@action`: only at the tokens of that type;
- the sets `heads`, `attns`, `mlps`, `blocks`: every component of that kind.

Ablations replace the component's activation by zero ("zero"), by its mean over the reference
windows ("mean") or by its value at a randomly drawn reference token ("resample"). Statistics are
taken per token type (return, state, action) over every unpadded token of `reference`, so they
apply to inputs of any length (rollouts grow their context from 1 step to K).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from dtlens.data.windows import Batch
from dtlens.errors import DtlensError
from dtlens.interp.inputs import eval_mode, model_args, residual_stream
from dtlens.model.dt import TOKEN_TYPES, DecisionTransformer

How = Literal["zero", "mean", "resample"]
HOWS = ("zero", "mean", "resample")
#: Shorthand sets of components, by kind.
SETS = {"heads": "head", "attns": "attn", "mlps": "mlp", "blocks": "block"}
POSITIONS = (*TOKEN_TYPES, "all")
_NAME = re.compile(r"^L(\d+)(?:H(\d+)|(MLP)|(ATTN))?(?:@(\w+))?$")


@dataclass(frozen=True)
class Component:
    """One ablatable component: `kind` head | attn | mlp | block of block `layer`, optionally
    restricted to one token type."""

    layer: int
    kind: str
    head: int = -1
    token: str | None = None

    @property
    def name(self) -> str:
        base = (
            f"L{self.layer}"
            + {
                "head": f"H{self.head}",
                "attn": "ATTN",
                "mlp": "MLP",
                "block": "",
            }[self.kind]
        )
        return base + (f"@{self.token}" if self.token else "")

    @property
    def hook(self) -> str:
        """The hook point whose activation is replaced."""
        block = f"backbone.blocks.{self.layer}"
        return {
            "head": f"{block}.attn.hook_z",
            "attn": f"{block}.attn.hook_z",
            "mlp": f"{block}.mlp.hook_post",
            "block": f"{block}.hook_resid_post",
        }[self.kind]

    def select(self, x: Tensor) -> Tensor:
        """The component's part of its hook's activation (batch, position, ...)."""
        return x[:, :, self.head] if self.kind == "head" else x


def _heads(model: DecisionTransformer, layer: int) -> int:
    return model.cfg.backbone.block(layer).n_heads  # mixed backbones: per block


def all_components(model: DecisionTransformer, kind: str) -> list[Component]:
    """Every component of `kind` (head, attn, mlp, block), in block order."""
    layers = range(model.cfg.n_layers)
    if kind == "head":
        return [Component(i, "head", h) for i in layers for h in range(_heads(model, i))]
    return [Component(i, kind) for i in layers]


def parse_components(model: DecisionTransformer, names: str | Sequence[str]) -> list[Component]:
    """Components from names (a comma-separated string or a list): `L{i}H{h}`, `L{i}ATTN`,
    `L{i}MLP`, `L{i}`, each optionally `@return|state|action`, or the sets heads, attns, mlps,
    blocks. Duplicates are dropped; an unknown or out-of-range name is one error line."""
    if isinstance(names, str):
        names = names.split(",")
    found: list[Component] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name in SETS:
            found += all_components(model, SETS[name])
        else:
            found.append(_parse_one(model, name))
    return list(dict.fromkeys(found))


def _parse_one(model: DecisionTransformer, name: str) -> Component:
    n = model.cfg.n_layers
    heads = sorted({_heads(model, i) for i in range(n)})
    expected = (
        f"expected L{{i}}H{{h}}, L{{i}}ATTN, L{{i}}MLP or L{{i}} (optionally @return, @state or "
        f"@action) or one of {', '.join(SETS)}; this model has {n} blocks of "
        f"{'/'.join(map(str, heads))} heads"
    )
    m = _NAME.match(name)
    if not m:
        raise DtlensError(f"unknown component {name!r}: {expected}")
    layer, head, mlp, attn, token = m.groups()
    layer = int(layer)
    if layer >= n or (head is not None and int(head) >= _heads(model, layer)):
        raise DtlensError(f"no component {name!r} in this model: {expected}")
    if token is not None and token not in TOKEN_TYPES:
        raise DtlensError(f"unknown token type in {name!r}: {expected}")
    kind = "head" if head is not None else "mlp" if mlp else "attn" if attn else "block"
    return Component(layer, kind, -1 if head is None else int(head), token)


def token_types(positions: int, device: torch.device) -> Tensor:
    """The token type index (0 return, 1 state, 2 action) of each of `positions` tokens."""
    return torch.arange(positions, device=device) % 3


def reference_activations(
    model: DecisionTransformer, components: Sequence[Component], reference: Batch
) -> dict[Component, list[Tensor]]:
    """Each component's activation at every reference token, grouped by token type:
    {component: [(tokens_of_type, ...) for return, state, action]}, from the unablated model."""
    cache: dict[str, Tensor] = {}

    def save(x: Tensor, hook) -> None:
        cache[hook.name] = x.detach()

    names = {c.hook for c in components}
    names |= {f"backbone.blocks.{c.layer}.hook_resid_pre" for c in components if c.kind == "block"}
    args = model_args(model, reference)
    with torch.no_grad(), eval_mode(model), model.hooks(fwd_hooks=[(n, save) for n in names]):
        model.hidden_states(*args)
    valid = args[-1].bool().repeat_interleave(3, dim=1)  # (B, 3K)
    types = token_types(valid.shape[1], valid.device).expand_as(valid)
    pools = {}
    for c in components:
        x = c.select(cache[c.hook])
        if c.kind == "block":
            x = x - cache[f"backbone.blocks.{c.layer}.hook_resid_pre"]
        pools[c] = [x[valid & (types == t)] for t in range(len(TOKEN_TYPES))]
    return pools


def check_how(how: str) -> None:
    if how not in HOWS:
        raise DtlensError(f"unknown ablation {how!r}: expected one of {', '.join(HOWS)}")


@contextmanager
def ablate(
    model: DecisionTransformer,
    components: str | Sequence[str],
    how: How = "zero",
    reference: Batch | None = None,
    seed: int = 0,
) -> Iterator[DecisionTransformer]:
    """Within the context, `model`'s forward passes run with `components` ablated `how` ("zero",
    "mean" or "resample", the statistics over the `reference` windows' tokens of each type;
    resampling draws tokens with a generator seeded by `seed`). An empty set is a no-op."""
    check_how(how)
    parsed = parse_components(model, components)
    if how != "zero" and reference is None and parsed:
        raise DtlensError(f"{how} ablation needs reference windows")
    pools = reference_activations(model, parsed, reference) if how != "zero" and parsed else {}
    means = {c: torch.stack([p.mean(0) for p in pool]) for c, pool in pools.items()}
    generator = torch.Generator().manual_seed(seed)
    starts: dict[int, Tensor] = {}  # each ablated block's input in the pass under way

    def replacement(c: Component, x: Tensor, types: Tensor) -> Tensor:
        """The ablated value of `x` (batch, position, ...) at every position."""
        if how == "zero":
            return torch.zeros_like(x)
        if how == "mean":
            return means[c][types].to(x.dtype).expand_as(x)
        out = torch.empty_like(x)
        for t, pool in enumerate(pools[c]):
            at = types == t
            n = int(at.sum()) * x.shape[0]
            pick = torch.randint(len(pool), (n,), generator=generator).to(pool.device)
            out[:, at] = pool[pick].reshape(x.shape[0], int(at.sum()), *x.shape[2:]).to(x.dtype)
        return out

    def hook_for(c: Component):
        def hook(x: Tensor, hook) -> Tensor:
            types = token_types(x.shape[1], x.device)
            at = torch.ones_like(types, dtype=torch.bool)
            if c.token is not None:
                at = types == TOKEN_TYPES.index(c.token)
            if c.kind == "block":  # resid_post := resid_pre + the ablated block output
                value = starts[c.layer] + replacement(c, x, types)
            else:
                value = replacement(c, c.select(x), types)
            x = x.clone()
            if c.kind == "head":
                x[:, at, c.head] = value[:, at]
            else:
                x[:, at] = value[:, at]
            return x

        return hook

    def keep_start(layer: int):
        def hook(x: Tensor, hook) -> None:
            starts[layer] = x

        return hook

    hooks = [
        (f"backbone.blocks.{layer}.hook_resid_pre", keep_start(layer))
        for layer in sorted({c.layer for c in parsed if c.kind == "block"})
    ]
    hooks += [(c.hook, hook_for(c)) for c in parsed]
    with model.hooks(fwd_hooks=hooks):
        yield model


def resid_hook(model: DecisionTransformer, layer: int) -> str:
    """The hook point of the residual stream after `layer` blocks (0: the token embeddings)."""
    n = model.cfg.n_layers
    if not 0 <= layer <= n:
        raise DtlensError(f"layer must lie in [0, {n}] (blocks passed), got {layer}")
    if layer == 0:
        return "backbone.blocks.0.hook_resid_pre"
    return f"backbone.blocks.{layer - 1}.hook_resid_post"


def _position_mask(positions: str, n: int, device: torch.device) -> Tensor:
    if positions not in POSITIONS:
        raise DtlensError(
            f"unknown positions {positions!r}: expected one of {', '.join(POSITIONS)}"
        )
    types = token_types(n, device)
    if positions == "all":
        return torch.ones_like(types, dtype=torch.bool)
    return types == TOKEN_TYPES.index(positions)


@contextmanager
def steer(
    model: DecisionTransformer,
    layer: int,
    vector: Float[Tensor, " d_model"],
    positions: str = "state",
    scale: float = 1.0,
) -> Iterator[DecisionTransformer]:
    """Within the context, `scale * vector` is added to the residual stream after `layer` blocks
    (0: the token embeddings) at the tokens of `positions` (return, state, action or all)."""
    name = resid_hook(model, layer)
    _position_mask(positions, 3, model.device)  # checks `positions` before anything runs
    vector = torch.as_tensor(vector, dtype=torch.float32, device=model.device)
    if vector.shape != (model.cfg.d_model,):
        raise DtlensError(
            f"steering vector has shape {tuple(vector.shape)}, expected ({model.cfg.d_model},)"
        )
    delta = scale * vector

    def hook(x: Tensor, hook) -> Tensor:
        at = _position_mask(positions, x.shape[1], x.device)
        x = x.clone()
        x[:, at] = x[:, at] + delta.to(x.dtype)
        return x

    with model.hooks(fwd_hooks=[(name, hook)]):
        yield model


@torch.no_grad()
def steering_vector(
    model: DecisionTransformer,
    windows_a: Batch,
    windows_b: Batch,
    layer: int,
    positions: str = "state",
) -> Float[Tensor, " d_model"]:
    """The mean residual stream after `layer` blocks over `windows_a`'s unpadded tokens of
    `positions` minus the same mean over `windows_b`'s (e.g. high vs low return-to-go)."""
    resid_hook(model, layer)  # checks the layer

    def mean(batch: Batch) -> Tensor:
        x = residual_stream(model, batch)[:, layer]  # (B, 3K, d)
        valid = batch.attention_mask.to(x.device).bool().repeat_interleave(3, dim=1)
        at = valid & _position_mask(positions, x.shape[1], x.device)
        return x[at].mean(0)

    return mean(windows_a) - mean(windows_b)
