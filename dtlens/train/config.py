"""TrainConfig: every knob of a fine-tuning run, with the paper's values as defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dtlens.errors import DtlensError
from dtlens.model.backbones import MINI
from dtlens.model.config import BackboneConfig


@dataclass(frozen=True)
class TrainConfig:
    """Defaults follow PAPER.md: K=20, batch 64, AdamW 1e-4 / wd 1e-4, 5000 warm-up steps (Takagi),
    40 epochs x 2500 steps, dropout 0.2 / 0.1, clip 0.25, action MSE; seeds 666 and 42."""

    init: str = "random"
    dataset: str = "mini/hopper-medium"
    env_id: str | None = None  # None: the dataset's own (D4RL files name none: pass it)
    context_len: int = 20
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 5000
    epochs: int = 40
    steps_per_epoch: int = 2500
    grad_clip: float | None = 0.25
    seed: int = 666
    rtg_scale: float = 1000.0
    max_ep_len: int = 1000
    target_return: float | None = None  # None: the env's default (hopper 3600, ...)
    eval_episodes: int = 10
    eval_every: int = 1
    eval_max_steps: int = 1000
    replace_block: int | None = None
    donor: str | None = None
    size: BackboneConfig = field(default_factory=lambda: MINI)  # shapes `random` only
    imagegpt_norm: str = "rms"
    resid_dropout: float = 0.2
    attn_dropout: float = 0.1
    embed_dropout: float = 0.1
    probe_size: int = 100
    probe_seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if isinstance(self.size, dict):
            object.__setattr__(self, "size", BackboneConfig(**self.size))
        for name in ("context_len", "batch_size", "epochs", "steps_per_epoch", "probe_size"):
            if getattr(self, name) < 1:
                raise DtlensError(f"{name} must be at least 1, got {getattr(self, name)}")
        if (self.replace_block is None) != (self.donor is None):
            raise DtlensError("--replace-block and --donor go together")
        if self.replace_block is not None and self.init != "random":
            raise DtlensError(
                "--replace-block puts a donor block into a random-init DT: use --init random"
            )
        if self.imagegpt_norm not in ("rms", "layernorm"):
            raise DtlensError(f"imagegpt_norm must be rms or layernorm, got {self.imagegpt_norm}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if set(d) - known:
            raise DtlensError(f"unknown train config fields: {sorted(set(d) - known)}")
        return cls(**d)

    def differences(self, other: TrainConfig) -> list[str]:
        """Fields that differ, except those a continued run may change: epochs, device."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in ("epochs", "device") and a[k] != b[k]]

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
