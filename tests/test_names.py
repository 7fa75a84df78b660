"""One name per analysis: its module (`dtlens.diagnostics.analyses.NAME` or
`dtlens.interp.analyses.NAME`), its `Diagnostic.name`, its registry key, its command (`_` written
`-`) and its files (`diagnostics/NAME.nc`, `figures/NAME.png`) agree. The lists come from the
packages, the registries and the Typer app, so a new analysis that breaks the rule fails here."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest
import typer

from cli.main import app
from dtlens.diagnostics import analyses as paper_analyses
from dtlens.diagnostics.registry import DIAGNOSTICS
from dtlens.interp import analyses as interp_analyses
from dtlens.interp.registry import ANALYSES, INTERP

PACKAGES = {paper_analyses: DIAGNOSTICS, interp_analyses: INTERP}
COMMANDS = set(typer.main.get_command(app).commands)


def modules(package) -> dict[str, object]:
    """Every module of an analyses package, by its name."""
    return {
        info.name: importlib.import_module(f"{package.__name__}.{info.name}")
        for info in pkgutil.iter_modules(package.__path__)
    }


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_each_analysis_module_is_registered_under_its_own_name(package):
    registry = PACKAGES[package]
    found = modules(package)
    assert sorted(found) == sorted(registry)  # no module left out, nothing registered elsewhere
    for name, module in found.items():
        assert module.DIAGNOSTIC is registry[name], name


@pytest.mark.parametrize("name", ANALYSES)
def test_one_name_across_diagnostic_command_and_files(name):
    diag = ANALYSES[name]
    assert diag.name == name
    assert name.replace("_", "-") in COMMANDS, f"no command `dtlens {name.replace('_', '-')}`"
    assert diag.nc_path(Path("RUN")) == Path("RUN/diagnostics") / f"{name}.nc"
    assert diag.png_path(Path("RUN")) == Path("RUN/figures") / f"{name}.png"


def test_the_registries_do_not_share_a_name():
    assert not set(DIAGNOSTICS) & set(INTERP)
    assert list(ANALYSES) == [*DIAGNOSTICS, *INTERP]
