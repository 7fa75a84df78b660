"""The floor plan: layers that only point down, no cycles, no hidden imports, a light package,
one source of CLI defaults."""

from __future__ import annotations

import ast
import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
import typer.main

from cli.main import app
from cli.studies import STUDY_OPTIONS
from cli.train import TRAIN_OPTIONS
from dtlens.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(pythonpath)}
    return subprocess.run(
        [str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )


def test_import_contracts_hold():
    result = lint(ROOT, ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.lower().replace("0 broken", "")


@pytest.mark.parametrize(
    "module, line",
    [
        ("dtlens/model/config.py", "import dtlens.report.report"),  # up the layers
        ("dtlens/data/scores.py", "import dtlens.model.dt"),  # between independent siblings
        ("dtlens/errors.py", "import cli.main"),  # the library importing its CLI
    ],
)
def test_a_forbidden_import_breaks_the_contracts(tmp_path, module, line):
    for package in ("dtlens", "cli"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("assets"))
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = lint(tmp_path, tmp_path)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout


def test_no_import_cycles():
    graph = grimp.build_graph("dtlens")
    cycles = [
        (a, b)
        for a in sorted(graph.modules)
        for b in sorted(graph.find_modules_directly_imported_by(a))
        if graph.chain_exists(importer=b, imported=a)
    ]
    assert not cycles


def test_no_dtlens_import_hidden_in_a_function():
    hidden = []
    for path in sorted((ROOT / "dtlens").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for sub in ast.walk(node):
                names = (
                    [sub.module or ""]
                    if isinstance(sub, ast.ImportFrom)
                    else [a.name for a in sub.names]
                    if isinstance(sub, ast.Import)
                    else []
                )
                if any(n == "dtlens" or n.startswith("dtlens.") for n in names):
                    hidden.append(f"{path.relative_to(ROOT)}:{sub.lineno}")
    assert not hidden


def test_import_dtlens_and_the_cli_stay_light():
    code = (
        "import sys, dtlens, dtlens.errors, dtlens.train.config, cli.main; "
        "print(sorted(m for m in ('torch', 'transformer_lens', 'xarray') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_lazy_exports_resolve():
    import dtlens
    import dtlens.model

    assert dtlens.DecisionTransformer is dtlens.model.DecisionTransformer
    with pytest.raises(AttributeError):
        _ = dtlens.NoSuchThing


@pytest.mark.parametrize(
    "command, fields",
    [("train", TRAIN_OPTIONS), ("no-context", STUDY_OPTIONS), ("block-swap", STUDY_OPTIONS)],
)
def test_cli_defaults_are_the_config_defaults(command, fields):
    """Every option a command takes from TrainConfig has the field's default, flag and help."""
    click_app = typer.main.get_command(app)
    params = {p.name: p for p in click_app.commands[command].params}
    defaults = TrainConfig()
    meta = {f.name: f.metadata for f in dataclasses.fields(TrainConfig)}
    assert len(fields) >= 10
    for name in fields:
        assert params[name].default == getattr(defaults, name), name
        assert meta[name]["flag"] in params[name].opts, (name, params[name].opts)
        assert params[name].help == meta[name]["help"], name
