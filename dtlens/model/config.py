"""Typed configs: the backbone's architecture and the Decision Transformer around it.

Plain dataclasses (no torch): the CLI and the train config read them without loading a model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from dtlens.errors import DtlensError

Norm = Literal["LN", "RMS"]


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

    def __post_init__(self) -> None:
        if self.n_layers < 1 or self.d_model < 1 or self.n_heads < 1 or self.d_mlp < 1:
            raise DtlensError(f"backbone sizes must be positive: {self}")
        if self.d_model % self.n_heads:
            raise DtlensError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.normalization_type not in ("LN", "RMS"):
            raise DtlensError(
                f"normalization_type must be LN or RMS, got {self.normalization_type}"
            )

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


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
    """

    state_dim: int
    act_dim: int
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    max_ep_len: int = 1000
    resid_dropout: float = 0.2
    attn_dropout: float = 0.1
    embed_dropout: float = 0.1
    action_tanh: bool = True

    def __post_init__(self) -> None:
        if self.state_dim < 1 or self.act_dim < 1 or self.max_ep_len < 1:
            raise DtlensError(f"state_dim, act_dim and max_ep_len must be positive: {self}")
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
