"""Hook names: the short names a user types and the full names a forward pass reaches.

A short name stands for one hook *kind*; per-block kinds expand to every block:
`resid_post` -> `backbone.blocks.{i}.hook_resid_post`, `pattern` -> `backbone.blocks.{i}.attn.
hook_pattern`, `ln1` -> `backbone.blocks.{i}.ln1.hook_normalized`, `ln1_scale`, `mlp_pre`,
`tokens` -> `hook_tokens`, `ln_final` -> `backbone.ln_final.hook_normalized`, `state_embed`, ...
The short name is also the capture's variable name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from dtlens.errors import DtlensError
from dtlens.model.dt import DecisionTransformer
from dtlens.model.summary import hook_patterns

BLOCK = re.compile(r"^backbone\.blocks\.(\d+)\.(.+)$")
IN_BLOCK = re.compile(r"^backbone\.blocks\.(?:\d+|\{i\})\.")

#: Dims after (sample[, layer]) of each kind; unlisted kinds are (position, d_model).
DIMS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("pattern", "attn_scores"), ("head", "query", "key")),
    **dict.fromkeys(("q", "k", "v", "z"), ("position", "head", "d_head")),
    **dict.fromkeys(("mlp_pre", "mlp_post"), ("position", "d_mlp")),
    **dict.fromkeys(
        ("return_embed", "state_embed", "action_embed", "time_embed"), ("step", "d_model")
    ),
    "action_pred": ("step", "act_dim"),
}


@dataclass(frozen=True)
class HookKind:
    """One variable of a capture: `name` (short), `pattern` (full, `{i}` for the block)."""

    name: str
    pattern: str

    @property
    def per_block(self) -> bool:
        return "{i}" in self.pattern

    @property
    def dims(self) -> tuple[str, ...]:
        if self.name.endswith("_scale"):  # a norm's scale, (position, 1): stored as (position,)
            return ("position",)
        return DIMS.get(self.name, ("position", "d_model"))

    def full_name(self, layer: int | None = None) -> str:
        return self.pattern.format(i=layer) if self.per_block else self.pattern


def short_name(full: str) -> str:
    """`backbone.blocks.3.attn.hook_pattern` -> `pattern`, `backbone.ln_final.hook_normalized`
    -> `ln_final`, `backbone.blocks.0.ln1.hook_scale` -> `ln1_scale`, `hook_tokens` -> `tokens`."""
    *scope, leaf = IN_BLOCK.sub("", full).removeprefix("backbone.").split(".")
    scope = [s for s in scope if s != "attn"]  # q, k, v, z, pattern, attn_scores are unique
    leaf = leaf.removeprefix("hook_")
    return "_".join(scope if leaf == "normalized" else [*scope, leaf])


def hook_kinds(model: DecisionTransformer) -> dict[str, HookKind]:
    """Every hook kind a forward pass of `model` reaches, by short name, in forward order."""
    kinds: dict[str, HookKind] = {}
    for pattern in hook_patterns(model.hook_names()):
        kind = HookKind(short_name(pattern), pattern)
        kinds.setdefault(kind.name, kind)
    return kinds


def resolve_hooks(
    model: DecisionTransformer, hooks: Sequence[str]
) -> tuple[list[HookKind], list[int]]:
    """The kinds to capture and the blocks of the per-block ones, from names that are short
    (`resid_post`: every block), full patterns (`backbone.blocks.{i}.hook_resid_post`) or full
    names (`backbone.blocks.2.hook_resid_post`: block 2). Per-block kinds share one `layer` dim,
    so each is captured at the union of the blocks asked for."""
    kinds = hook_kinds(model)
    by_pattern = {k.pattern: k for k in kinds.values()}
    every_block = list(range(model.cfg.n_layers))
    chosen: dict[str, HookKind] = {}
    layers: set[int] = set()
    unknown = []
    for name in hooks:
        m = BLOCK.match(name)
        if m and int(m.group(1)) in every_block:
            kind = by_pattern.get(f"backbone.blocks.{{i}}.{m.group(2)}")
            layers.add(int(m.group(1)))
        else:
            kind = kinds.get(name) or by_pattern.get(name)
            if kind is not None and kind.per_block:
                layers.update(every_block)
        if kind is None:
            unknown.append(name)
        else:
            chosen[kind.name] = kind
    if unknown or not chosen:
        raise DtlensError(
            f"unknown hook name(s) {unknown or list(hooks)}; valid short names: "
            f"{', '.join(kinds)}; full names: {', '.join(by_pattern)} "
            f"({{i}} = block 0..{model.cfg.n_layers - 1})"
        )
    order = list(kinds)
    return sorted(chosen.values(), key=lambda k: order.index(k.name)), sorted(layers)
