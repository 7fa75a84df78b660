"""The Diagnostic contract: what every analysis provides, so that the CLI, `reproduce` and the
report treat them alike.

A diagnostic is one module that builds one `Diagnostic`: a name (its files are
`RUN/diagnostics/{name}.nc` and `RUN/figures/{name}.png`), `compute(run, **options)` returning an
`xr.Dataset`, `plot(ds, path)`, `summary(ds)` (the table the CLI prints and the report shows) and,
where the paper claims something, a `Finding`: the statistic of one result, the two roles it
compares and the direction the paper reports. `dtlens.diagnostics.registry` lists them in the
paper's order.

Study diagnostics (`scope="study"`) compute from several runs at once (`compute(runs)`, runs keyed
by `RunKey`) and live in the study folder instead of a run's. What `dtlens reproduce` computes is
declared here too: which of its runs a diagnostic reads (`Reads`) and the options it passes,
from the preset's `Settings`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import xarray as xr

from dtlens.errors import DtlensError
from dtlens.io import open_netcdf, save_netcdf
from dtlens.stats import Comparison, Expect, compare

T = TypeVar("T")

#: The groups of runs of a reproduction: the K=20 runs of every init ("main"), the K=1 and K=20
#: runs of the random and language inits ("no_context"), the image init without clipping
#: ("no_clip") and the K=1 block-swap variants ("block_swap").
RunGroup = Literal["main", "no_context", "no_clip", "block_swap"]


@dataclass(frozen=True, order=True)
class RunKey:
    """One fine-tuning run of a reproduction: its role (the init: random / language / image, or a
    block-swap variant such as "block 0"), its seed and its context length K."""

    role: str
    seed: int
    context: int = 20

    def label(self, group: RunGroup) -> str:
        """Its name in reproduce.json: "role|K|seed" in the no_context group, else "role|seed"."""
        parts = (
            (self.role, self.context, self.seed)
            if group == "no_context"
            else (self.role, self.seed)
        )
        return "|".join(map(str, parts))

    @classmethod
    def parse(cls, label: str, group: RunGroup) -> RunKey:
        """The key `label` names in `group` (the inverse of `label`)."""
        role, *k, seed = label.rsplit("|", 2 if group == "no_context" else 1)
        return cls(role, int(seed), int(k[0]) if k else GROUP_CONTEXT[group])


#: The context length of the runs of a group whose keys do not name it.
GROUP_CONTEXT: dict[RunGroup, int] = {"main": 20, "no_clip": 20, "block_swap": 1}


@dataclass(frozen=True)
class Reads:
    """Which runs of a reproduction a diagnostic analyses: those of `group` whose role is one of
    `roles` (None: any) and whose context length is `context` (None: any). A run diagnostic
    analyses each in turn, a study diagnostic all of them together."""

    group: RunGroup = "main"
    roles: tuple[str, ...] | None = None
    context: int | None = None

    def select(self, runs: Mapping[RunKey, T]) -> dict[RunKey, T]:
        """The entries of `runs` (one group's) this diagnostic reads, in their order."""
        return {
            key: run
            for key, run in runs.items()
            if (self.roles is None or key.role in self.roles)
            and (self.context is None or key.context == self.context)
        }


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What a reproduction's preset sets for its diagnostics (`dtlens.experiments.presets.Preset`
    extends it); each diagnostic turns it into its options (`Diagnostic.options`)."""

    attention_epochs: tuple[int, ...] = (0, 1, 4, 10, 40)
    gradient_epoch: int = 1
    mi_blocks: tuple[int, ...] | None = None  # None: first, middle, last
    mi_seeds: int = 3
    mi_samples: int = 1000  # windows for MI: the default estimator's calibrated size
    gradient_samples: int = 100  # probe windows of the per-sample gradients
    gradient_confusion_samples: int = 50  # of which pairwise cosines give gradient confusion
    paper_variants: bool = True  # the released code's variants too (CKA, MI, gradients, attention)


def no_options(settings: Settings, target: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Table:
    """A small table: what the CLI prints with rich and the report writes as Markdown/HTML."""

    title: str
    header: list[str]
    rows: list[list[Any]]


@dataclass(frozen=True)
class Finding:
    """One of the paper's claims as a comparison over seeds: statistic(a) vs statistic(b).

    Run scope: `value(ds)` is the statistic of one run's result. Study scope: `per_seed(ds, role)`
    gives the statistic of `role` for every seed of the study's result. Where the paper's number
    comes from a formula of its released code that departs from the paper's stated analysis,
    `value` computes it with the released formula (when the result holds the paper variant) and
    `correct(ds)`, described by `correct_statistic`, the correct variant the report shows beside.
    """

    claim: str  # the paper's words
    short: str  # the claim in a few words, for the summary table
    statistic: str  # what is measured, one line
    #: statistic(a) is `expect` than statistic(b) when the paper's claim holds; "two-sided" for
    #: a question that is not the paper's claim (do they differ, either way?)
    expect: Expect
    a: str = "language"
    b: str = "random"
    value: Callable[[xr.Dataset], float] | None = None
    per_seed: Callable[[xr.Dataset, str], np.ndarray] | None = None
    correct: Callable[[xr.Dataset], float] | None = None
    correct_statistic: str = ""

    def compare(self, a: Any, b: Any) -> Comparison:
        return compare(a, b, expect=self.expect)


@dataclass(frozen=True)
class Written:
    """A diagnostic's result and the files it was written to."""

    ds: xr.Dataset
    nc: Path
    png: Path


@dataclass(frozen=True)
class Diagnostic:
    name: str
    title: str
    compute: Callable[..., xr.Dataset]
    plot: Callable[[xr.Dataset, Path], Path]
    summary: Callable[[xr.Dataset], Table]
    finding: Finding | None = None
    scope: Literal["run", "study"] = "run"
    #: The runs `dtlens reproduce` computes it on (None: only its command computes it).
    reads: Reads | None = None
    #: The options `reproduce` passes, from its preset's settings and the run (or the runs, keyed
    #: by `RunKey`) analysed.
    options: Callable[[Settings, Any], Mapping[str, Any]] = no_options

    def nc_path(self, folder: Path, stem: str | None = None) -> Path:
        return Path(folder) / "diagnostics" / f"{stem or self.name}.nc"

    def png_path(self, folder: Path, stem: str | None = None) -> Path:
        return Path(folder) / "figures" / f"{stem or self.name}.png"

    def write(
        self, target: Any, folder: Path | None = None, stem: str | None = None, **options: Any
    ) -> Written:
        """Compute on `target` (a Run, or for a study the runs), write the netCDF and the figure
        under `folder` (default: the run's folder) as `stem` (default: the name)."""
        if folder is None:
            if self.scope == "study":
                raise DtlensError(f"{self.name}: a study diagnostic needs a folder")
            folder = target.path
        ds = self.compute(target, **options)
        nc = save_netcdf(ds, self.nc_path(folder, stem))
        png = self.plot(ds, self.png_path(folder, stem))
        return Written(ds, nc, png)

    def load(self, folder: Path) -> xr.Dataset | None:
        """The saved result under `folder`, or None when there is none."""
        path = self.nc_path(folder)
        if not path.is_file():
            return None
        try:
            with open_netcdf(path) as ds:
                return ds.load()
        except (OSError, ValueError) as e:
            raise DtlensError(f"{path}: unreadable ({e}); delete it and compute it again") from None
