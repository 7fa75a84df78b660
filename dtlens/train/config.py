"""TrainConfig: every knob of a fine-tuning run, with the paper's values as defaults.

Each field's metadata names its CLI flag and a one-line help (`flag(name)`, `help_text(name)`):
the CLI is built from them and validation messages speak in the same flags.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from dtlens.errors import DtlensError
from dtlens.model.config import DT_OPTION_FIELDS, MINI, BackboneConfig, DTOptions, option

DEVICE = re.compile(r"cpu|cuda|cuda:\d+|mps|auto")
PRECISIONS = ("fp32", "tf32", "bf16")
#: Fields a continued run may change (`TrainConfig.differences` ignores them).
CONTINUABLE = ("epochs", "device", "deterministic", "keep_epochs")


@dataclass(frozen=True)
class TrainConfig:
    """Defaults follow PAPER.md: K=20, batch 64, AdamW 1e-4 / wd 1e-4, 5000 warm-up steps (Takagi),
    40 epochs x 2500 steps, dropout 0.2 / 0.1, clip 0.25, action MSE; seeds 666 and 42."""

    init: str = option(
        "random",
        "--init",
        "random, random-paper, gpt2, imagegpt, text, image, synthetic, an HF directory, "
        "a dtlens .safetensors file, or a control of one: shuffled:INIT, matched:INIT.",
    )
    dataset: str = option(
        "mini/hopper-medium", "--dataset", "Embedded id, D4RL .hdf5, or Minari id."
    )
    env_id: str | None = option(
        None, "--env-id", "Gymnasium env for evaluation (default: the dataset's)."
    )
    heldout: str | None = option(
        None,
        "--heldout",
        "Dataset whose fixed windows' action error is logged each epoch, e.g. "
        "mini/hopper-medium-heldout (default: none).",
    )
    context_len: int = option(20, "--context", "K timesteps per window (1 = no context; paper 20).")
    batch_size: int = option(64, "--batch-size", "Windows per step (paper 64).")
    lr: float = option(1e-4, "--lr", "AdamW learning rate after warm-up (paper 1e-4).")
    weight_decay: float = option(1e-4, "--weight-decay", "AdamW weight decay (paper 1e-4).")
    warmup_steps: int = option(
        5000, "--warmup", "Linear warm-up steps (Takagi 5000, Reid 10000; 0 = none)."
    )
    epochs: int = option(
        40, "--epochs", "Epochs to train; with --resume, the new total (paper 40)."
    )
    steps_per_epoch: int = option(2500, "--steps", "Steps per epoch (paper 2500).")
    grad_clip: float | None = option(
        0.25, "--clip", "Gradient-norm clip value (paper 0.25; --no-clip for none)."
    )
    seed: int = option(666, "--seed", "Seed of init, sampling and evaluation (paper 666 and 42).")
    rtg_scale: float = option(
        1000.0, "--rtg-scale", "Returns-to-go are divided by this (paper 1000)."
    )
    target_return: float | None = option(
        None, "--target-return", "Return-to-go target (default: per env, hopper 3600, ...)."
    )
    eval_episodes: int = option(10, "--eval-episodes", "Evaluation episodes per epoch (0 = none).")
    eval_every: int = option(1, "--eval-every", "Evaluate every N epochs (and after the last).")
    eval_max_steps: int = option(1000, "--eval-max-steps", "Step limit of an evaluation episode.")
    replace_block: int | None = option(
        None, "--replace-block", "Random-init DT with this block from --donor."
    )
    donor: str | None = option(
        None, "--donor", "Init that donates the block (with --replace-block)."
    )
    size: BackboneConfig = option(
        lambda: MINI,
        None,
        "Random init: the backbone's shape (--layers, --d-model, --heads; BackboneConfig.sized).",
    )
    imagegpt_norm: str = option(
        "rms", "--imagegpt-norm", "rms, or layernorm for the paper's quirk."
    )
    dt: DTOptions = option(DTOptions, None, "The DT's own options (dropouts, padding, ...).")
    probe_size: int = option(
        100, "--probe-size", "Fixed probe windows every diagnostic uses (paper 100)."
    )
    probe_seed: int = option(0, "--probe-seed", "Seed that draws the probe windows.")
    device: str = option("cpu", "--device", "cpu, cuda, cuda:N, mps, or auto (the best available).")
    precision: str = option(
        "fp32", "--precision", "fp32 (paper), tf32 (CUDA matmuls) or bf16 (autocast)."
    )
    deterministic: bool = option(
        False, "--deterministic", "Deterministic kernels (CUDA: slower; see README)."
    )
    keep_epochs: tuple[int, ...] | None = option(
        None,
        "--keep-epochs",
        "Epoch checkpoints kept besides the latest, e.g. 0,1,4 (default: all).",
    )

    def __post_init__(self) -> None:
        if isinstance(self.size, dict):
            object.__setattr__(self, "size", BackboneConfig(**self.size))
        if isinstance(self.dt, dict):
            object.__setattr__(self, "dt", DTOptions(**self.dt))
        if self.keep_epochs is not None:  # a JSON list, or any iterable: a sorted tuple
            object.__setattr__(self, "keep_epochs", tuple(sorted(set(self.keep_epochs))))
        self._check()

    def _check(self) -> None:
        """Every option in range, else DtlensError in the CLI's words."""
        at_least = {
            "context_len": 1,
            "batch_size": 1,
            "epochs": 1,
            "steps_per_epoch": 1,
            "probe_size": 1,
            "warmup_steps": 0,
            "eval_every": 1,
            "eval_episodes": 0,
            "eval_max_steps": 1,
            "seed": 0,
            "probe_seed": 0,
        }
        for name, low in at_least.items():
            self._require(name, getattr(self, name) >= low, f"be >= {low}")
        self._require("lr", self.lr > 0, "be > 0")
        self._require("weight_decay", self.weight_decay >= 0, "be >= 0")
        self._require("rtg_scale", self.rtg_scale > 0, "be > 0")
        clip_ok = self.grad_clip is None or self.grad_clip > 0
        self._require("grad_clip", clip_ok, "be > 0 (--no-clip for none)")
        self._require("target_return", True, "be finite")
        if self.replace_block is not None:
            self._require("replace_block", self.replace_block >= 0, "be >= 0")
        device_ok = bool(DEVICE.fullmatch(self.device))
        self._require("device", device_ok, "be cpu, cuda, cuda:N, mps or auto")
        self._require("precision", self.precision in PRECISIONS, "be fp32, tf32 or bf16")
        keep_ok = self.keep_epochs is None or all(e >= 0 for e in self.keep_epochs)
        self._require("keep_epochs", keep_ok, "list epochs >= 0")
        norm_ok = self.imagegpt_norm in ("rms", "layernorm")
        self._require("imagegpt_norm", norm_ok, "be rms or layernorm")
        if (self.replace_block is None) != (self.donor is None):
            raise DtlensError("--replace-block and --donor go together")
        if self.replace_block is not None and self.init not in ("random", "random-paper"):
            raise DtlensError(
                "--replace-block puts a donor block into a random-init DT: use --init random "
                "or random-paper"
            )

    def _require(self, name: str, ok: bool, rule: str) -> None:
        """DtlensError '--flag must RULE, got VALUE' unless `ok` (a float must also be finite)."""
        value = getattr(self, name)
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            raise DtlensError(f"{flag(name)} must {rule}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """From `to_dict`'s layout, or from a config.json written before `dt` held the DT's
        options (flat `max_ep_len`, `resid_dropout`, ... at the top)."""
        if flat := {k: d[k] for k in DT_OPTION_FIELDS if k in d}:
            d = {k: v for k, v in d.items() if k not in flat} | {"dt": d.get("dt", {}) | flat}
        known = {f.name for f in dataclasses.fields(cls)}
        if set(d) - known:
            raise DtlensError(f"unknown train config fields: {sorted(set(d) - known)}")
        return cls(**d)

    def differences(self, other: TrainConfig) -> list[str]:
        """Fields that differ, except those a continued run may change: epochs, where it runs
        and which checkpoints it keeps (a DT option by its own name: "padding", not "dt")."""

        def flat(cfg: TrainConfig) -> dict[str, Any]:
            d = cfg.to_dict()
            return {k: v for k, v in d.items() if k != "dt"} | d["dt"]

        a, b = flat(self), flat(other)
        return [k for k in a if k not in CONTINUABLE and a[k] != b[k]]

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def evaluates(self, epoch: int) -> bool:
        """Whether the run evaluates its policy after `epoch` (every `eval_every` and the last)."""
        return self.eval_episodes > 0 and (epoch % self.eval_every == 0 or epoch == self.epochs)

    @property
    def evaluations(self) -> int:
        """How many evaluations the run makes."""
        return sum(map(self.evaluates, range(1, self.epochs + 1)))


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def flag(name: str) -> str:
    """The CLI flag of TrainConfig or DTOptions field `name` (`--context` for context_len, ...)."""
    return (_FIELDS.get(name) or DT_OPTION_FIELDS[name]).metadata["flag"] or name


def help_text(name: str) -> str:
    """The one-line help of TrainConfig or DTOptions field `name`."""
    return (_FIELDS.get(name) or DT_OPTION_FIELDS[name]).metadata["help"]
