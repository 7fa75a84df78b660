"""`Preset`: which runs and diagnostics a reproduction makes (the presets themselves are in
`dtlens.experiments.presets`; `dtlens.experiments.reproduce.plan` turns one into runs)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dtlens.diagnostics.contract import Settings
from dtlens.errors import DtlensError
from dtlens.experiments.studies import BLOCK
from dtlens.model.config import MINI, BackboneConfig
from dtlens.train.config import TrainConfig

#: The controls of what language pretraining gives, as K=20 roles (role = init): what each keeps
#: of the language weights, and what it lacks.
CONTROLS = {
    "synthetic": ("pretraining on non-language tokens", "language itself"),
    "shuffled:text": ("the language weights' values and statistics", "their learned arrangement"),
    "matched:text": ("each language tensor's mean and scale", "everything else in the weights"),
}


@dataclass(frozen=True)
class Preset(Settings):
    """Which runs and diagnostics a reproduction makes, per dataset; the diagnostics' settings
    are those of `Settings`."""

    name: str
    datasets: dict[str, str]  # label -> dataset id or path
    env_ids: dict[str, str | None]  # label -> gymnasium env for evaluation (None: the dataset's)
    random: str  # the random init of the K=20 comparison
    language: str  # the language-pretrained init (no-context, block-swap donor)
    image: str  # the image-pretrained init
    train: TrainConfig  # shared fine-tuning settings (K=20 runs)
    seeds: tuple[int, ...] = (666,)
    block_swap_epochs: dict[str, int] = field(default_factory=dict)  # label -> epochs (K=1)
    block_swap_size: BackboneConfig = MINI  # the random model that receives a donor block
    block_swap_blocks: tuple[int, ...] | None = None  # blocks that receive one (None: all)
    probe_size: int = 100
    #: More K=20 roles beside the three: role -> init (e.g. the controls of what pretraining gives).
    extra: dict[str, str] = field(default_factory=dict)
    #: label -> the dataset whose held-out windows' action error every run of it logs (`--heldout`).
    heldouts: dict[str, str] = field(default_factory=dict)
    #: label -> epochs of that dataset's runs (default: `train.epochs`).
    task_epochs: dict[str, int] = field(default_factory=dict)
    #: label -> roles rerun at K=20 with the DT's own layers initialised as GPT-2 (`--dt-init
    #: gpt2`), as roles "<role> gpt2-init".
    gpt2_init: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: label -> the conditions cut on that task (results/laptop/PLAN.md: to fit the machine):
    #: roles of `extra` and block-replacement runs (`BLOCK`); `plan` leaves their runs out.
    cuts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: What was cut, where and why, in words (the dry run and the report's first lines).
    cut_note: str = ""

    def __post_init__(self) -> None:
        blocks = {BLOCK.format(b) for b in range(self.block_swap_size.n_layers)}
        for label, cut in self.cuts.items():
            wrong = [c for c in cut if c not in self.extra and c not in blocks]
            if wrong:
                raise DtlensError(
                    f"{self.name} preset, {label}: cannot cut {', '.join(wrong)} (only the roles "
                    f"{', '.join(self.extra) or '(none)'} and block replacement runs)"
                )

    @property
    def inits(self) -> tuple[str, ...]:
        return (self.random, self.language, self.image, *self.extra.values())

    @property
    def roles(self) -> dict[str, str]:
        """Every K=20 role and its init."""
        return {"random": self.random, "language": self.language, "image": self.image} | self.extra
