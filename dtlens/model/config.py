"""Typed configs: the backbone's architecture and the Decision Transformer around it.

Plain dataclasses (no torch): the CLI and the train config read them without loading a model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from dtlens.errors import DtlensError

Norm = Literal["LN", "RMS"]
Padding = Literal["masked", "released"]
TimeEmbed = Literal["before_norm", "after_norm"]
#: The fields a block of a mixed backbone may set for itself.
BLOCK_FIELDS = ("n_heads", "d_mlp", "act_fn", "normalization_type", "eps")


@dataclass(frozen=True)
class BlockConfig:
    """Block `index` of a mixed backbone: its own heads, MLP width, activation and norm.

    The paper's block replacement (released `experiment.py`, `--pretrained_block i`) assigns
    `model.transformer.h[i] = model_pretrained.transformer.h[i]`: a 12-head gelu_new GPT-2 block
    inside the 1-head ReLU random model. The residual width must match; nothing else has to.
    """

    index: int
    n_heads: int
    d_mlp: int
    act_fn: str
    normalization_type: Norm = "LN"
    eps: float = 1e-5


@dataclass(frozen=True)
class BackboneConfig:
    """A GPT-2-family stack: GPT-2 (LN, gelu_new), ImageGPT (RMS, quick_gelu), random init."""

    n_layers: int = 3
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    act_fn: str = "gelu_new"
    normalization_type: Norm = "LN"
    eps: float = 1e-5
    #: Blocks that differ from the fields above (a mixed backbone), in index order.
    blocks: tuple[BlockConfig, ...] = ()
    #: Another decoder family's TransformerLens config fields (GPT-Neo, GPT-NeoX, OPT, Llama:
    #: rotary, parallel attention/MLP, gated MLP, grouped keys; `dtlens.model.families`), as
    #: sorted (name, value) pairs (hashable; a dict is accepted); empty for GPT-2's layout.
    arch: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        arch = ((k, tuple(v) if isinstance(v, list) else v) for k, v in dict(self.arch).items())
        object.__setattr__(self, "arch", tuple(sorted(arch)))
        blocks = [b if isinstance(b, BlockConfig) else BlockConfig(**b) for b in self.blocks]
        indices = [b.index for b in blocks]
        if len(set(indices)) < len(indices) or not all(0 <= i < self.n_layers for i in indices):
            raise DtlensError(f"mixed blocks need distinct indices in [0, {self.n_layers})")
        blocks = [b for b in blocks if any(getattr(b, f) != getattr(self, f) for f in BLOCK_FIELDS)]
        object.__setattr__(self, "blocks", tuple(sorted(blocks, key=lambda b: b.index)))
        if self.n_layers < 1 or self.d_model < 1 or self.n_heads < 1 or self.d_mlp < 1:
            raise DtlensError(f"backbone sizes must be positive: {self}")
        if self.d_model % self.n_heads:
            raise DtlensError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.normalization_type not in ("LN", "RMS"):
            raise DtlensError(
                f"normalization_type must be LN or RMS, got {self.normalization_type}"
            )
        for b in self.blocks:
            self.block(b.index)  # each block's own fields pass the same checks

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def block(self, index: int) -> BackboneConfig:
        """The uniform config that block `index` is built from."""
        own = {b.index: b for b in self.blocks}.get(index)
        if own is None:
            return dataclasses.replace(self, blocks=())
        return dataclasses.replace(self, blocks=(), **{f: getattr(own, f) for f in BLOCK_FIELDS})


#: The paper's random init: GPT-2 layout, 12 layers, d=768, one head, ReLU.
PAPER_RANDOM = BackboneConfig(
    n_layers=12, d_model=768, n_heads=1, d_mlp=3072, act_fn="relu", normalization_type="LN"
)
#: The `mini` preset's size, shared by its random, language and image backbones.
MINI = BackboneConfig(n_layers=3, d_model=128, n_heads=4, d_mlp=512)


@dataclass(frozen=True)
class DTConfig:
    """A Decision Transformer: embeddings of (R, s, a) tokens, a backbone, a tanh action head.

    Dropout follows the paper: residual/MLP 0.2, attention 0.1, embeddings 0.1.

    Three options reproduce the paper's released code (can-wikipedia-help-offline-rl/
    decision_transformer/models/); their defaults are the standard DT:

    - `padding="released"`: `trajectory_gpt2.py` sets masked causal scores to -1e4 and adds the
      padding mask, (1 - m) x -1e4, on top, so a left-padded query row still sums to 1 (its weight
      goes to the future real tokens) and padded positions differ from block 1 on. "masked": padded
      keys are excluded and padded query rows attend to nothing.
    - `time_embed="after_norm"`: `decision_transformer.py` adds the timestep embedding to the
      token stream after `embed_ln`; "before_norm" (original DT, HF) adds it to each token first.
    - `tie_action_head=True`: `--share_input_output_proj` predicts actions as
      tanh(h @ embed_action.weight), the action embedding transposed, no bias (the released head
      always applies tanh; here `action_tanh` still decides).
    """

    state_dim: int
    act_dim: int
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    max_ep_len: int = 1000
    resid_dropout: float = 0.2
    attn_dropout: float = 0.1
    embed_dropout: float = 0.1
    action_tanh: bool = True
    padding: Padding = "masked"
    time_embed: TimeEmbed = "before_norm"
    tie_action_head: bool = False

    def __post_init__(self) -> None:
        if self.state_dim < 1 or self.act_dim < 1 or self.max_ep_len < 1:
            raise DtlensError(f"state_dim, act_dim and max_ep_len must be positive: {self}")
        if self.padding not in ("masked", "released"):
            raise DtlensError(f"padding must be masked or released, got {self.padding!r}")
        if self.time_embed not in ("before_norm", "after_norm"):
            raise DtlensError(
                f"time_embed must be before_norm or after_norm, got {self.time_embed!r}"
            )
        if isinstance(self.backbone, dict):  # from JSON
            object.__setattr__(self, "backbone", BackboneConfig(**self.backbone))

    @property
    def d_model(self) -> int:
        return self.backbone.d_model

    @property
    def n_layers(self) -> int:
        return self.backbone.n_layers

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise DtlensError(f"unknown DTConfig fields: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> DTConfig:
        return dataclasses.replace(self, **changes)


def config_mismatches(expected: DTConfig, found: DTConfig) -> list[str]:
    """Fields that differ, as 'name: expected != found' (nested backbone fields dotted)."""
    a, b = expected.to_dict(), found.to_dict()
    out = []
    for key in a:
        if key == "backbone":
            out += [
                f"backbone.{k}: {a[key][k]!r} != {b[key][k]!r}"
                for k in a[key]
                if a[key][k] != b[key][k]
            ]
        elif a[key] != b[key]:
            out.append(f"{key}: {a[key]!r} != {b[key]!r}")
    return out
