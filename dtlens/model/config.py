"""Typed configs: the backbone's architecture and the Decision Transformer around it.

Plain dataclasses (no torch): the CLI and the train config read them without loading a model.
"""

from __future__ import annotations

import dataclasses
import math
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

    @classmethod
    def sized(cls, n_layers: int, d_model: int, n_heads: int) -> BackboneConfig:
        """A GPT-2-layout backbone of these sizes, with GPT-2's MLP width d_mlp = 4 x d_model."""
        return cls(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_mlp=4 * d_model)

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
MINI = BackboneConfig.sized(n_layers=3, d_model=128, n_heads=4)


PADDINGS = ("masked", "released")
TIME_EMBEDS = ("before_norm", "after_norm")
DT_INITS = ("released", "gpt2")
DTInit = Literal["released", "gpt2"]


def option(default: Any, flag: str | None, help: str) -> Any:
    """A config field with its CLI flag (None: not one flag) and one-line help; a callable
    default is a factory."""
    metadata = {"flag": flag, "help": help}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class DTOptions:
    """The Decision Transformer's own options (all but its sizes and backbone), declared once:
    `DTConfig` derives from it and `TrainConfig.dt` holds it.

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

    `dt_init` initialises the DT's own layers (embeddings, their norm, the action head; the
    backbone has its own init): "released" keeps PyTorch's module defaults, as kzl's DT and the
    paper's released code (the timestep embedding N(0, 1), linear layers uniform in
    +-1/sqrt(fan_in)); "gpt2" draws weights N(0, 0.02) with zero biases and unit norms, as HF's
    `DecisionTransformerModel._init_weights` and CORL's `dt.py`.
    """

    max_ep_len: int = option(
        1000, "--max-ep-len", "Longest episode: size of the timestep embedding."
    )
    resid_dropout: float = option(0.2, "--resid-dropout", "Residual and MLP dropout (paper 0.2).")
    attn_dropout: float = option(0.1, "--attn-dropout", "Attention dropout (paper 0.1).")
    embed_dropout: float = option(0.1, "--embed-dropout", "Embedding dropout (paper 0.1).")
    action_tanh: bool = option(True, None, "tanh on the predicted actions.")
    padding: Padding = option(
        "masked", "--padding", "masked, or released: the paper's GPT-2 padding (DTConfig.padding)."
    )
    time_embed: TimeEmbed = option(
        "before_norm", "--time-embed", "before_norm, or after_norm as the paper's released DT."
    )
    tie_action_head: bool = option(
        False, "--tie-action-head", "Action head = action embedding transposed (paper's option)."
    )
    dt_init: DTInit = option(
        "released",
        "--dt-init",
        "The DT's own layers: released (PyTorch defaults, as the paper's code) or gpt2 "
        "(N(0, 0.02), as HF and CORL).",
    )

    def __post_init__(self) -> None:
        """Every option in range, else DtlensError in the CLI's words."""
        self._require("max_ep_len", self.max_ep_len >= 1, "be >= 1")
        for name in ("resid_dropout", "attn_dropout", "embed_dropout"):
            value = getattr(self, name)
            self._require(name, math.isfinite(value) and 0 <= value < 1, "be in [0, 1)")
        self._require("padding", self.padding in PADDINGS, "be masked or released")
        self._require("time_embed", self.time_embed in TIME_EMBEDS, "be before_norm or after_norm")
        self._require("dt_init", self.dt_init in DT_INITS, "be released or gpt2")

    def _require(self, name: str, ok: bool, rule: str) -> None:
        if not ok:
            flag = DT_OPTION_FIELDS[name].metadata["flag"] or name
            raise DtlensError(f"{flag} must {rule}, got {getattr(self, name)!r}")

    @property
    def options(self) -> DTOptions:
        """These options alone (a DTConfig's without its sizes and backbone)."""
        return DTOptions(**{name: getattr(self, name) for name in DT_OPTION_FIELDS})


DT_OPTION_FIELDS = {f.name: f for f in dataclasses.fields(DTOptions)}


@dataclass(frozen=True)
class DTConfig(DTOptions):
    """A Decision Transformer: embeddings of (R, s, a) tokens, a backbone, a tanh action head;
    its options are `DTOptions`'."""

    state_dim: int = field(kw_only=True)
    act_dim: int = field(kw_only=True)
    backbone: BackboneConfig = field(default_factory=BackboneConfig, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.state_dim < 1 or self.act_dim < 1:
            raise DtlensError(f"state_dim and act_dim must be positive: {self}")
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
