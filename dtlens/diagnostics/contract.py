"""The Diagnostic contract: what every analysis provides, so that the CLI, `reproduce` and the
report treat them alike.

A diagnostic is one module that builds one `Diagnostic`: a name (its files are
`RUN/diagnostics/{name}.nc` and `RUN/figures/{name}.png`), `compute(run, **options)` returning an
`xr.Dataset`, `plot(ds, path)`, `summary(ds)` (the table the CLI prints and the report shows) and,
where the paper claims something, a `Finding`: the statistic of one result, the two roles it
compares and the direction the paper reports. `dtlens.diagnostics.registry` lists them in the
paper's order.

Study diagnostics (`scope="study"`) compute from several runs at once (`compute(runs)`, runs keyed
by (role, K, seed) or (variant, seed)) and live in the study folder instead of a run's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from dtlens.errors import DtlensError
from dtlens.io import save_netcdf
from dtlens.stats import Comparison, Expect, compare


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
    #: Which runs of a reproduction it analyses: the K=20 runs ("main") or the K=1 runs ("k1").
    runs: Literal["main", "k1"] = "main"
    #: Options `reproduce` passes, per preset attribute: {option: preset attribute}.
    preset_options: Mapping[str, str] = field(default_factory=dict)

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
            with xr.open_dataset(path) as ds:
                return ds.load()
        except (OSError, ValueError) as e:
            raise DtlensError(f"{path}: unreadable ({e}); delete it and compute it again") from None
