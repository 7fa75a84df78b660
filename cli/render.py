"""Printing what a diagnostic computed: its summary table and the files it wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table as RichTable

from cli.common import console


def cell(c: Any) -> str:
    """Floats with 3 decimals (4 significant digits when very small or large)."""
    if not isinstance(c, float):
        return str(c)
    return f"{c:.3f}" if c == 0 or 1e-2 <= abs(c) < 1e5 else f"{c:.4g}"


def show(table: Any) -> None:
    """A `dtlens.diagnostics.contract.Table` as a rich table."""
    out = RichTable(*table.header, title=table.title)
    for row in table.rows:
        out.add_row(*map(cell, row))
    console.print(out)


def run_diagnostic(
    name: Any, target: Any, folder: Path | None = None, stem: str | None = None, **options: Any
) -> Any:
    """Compute the registered diagnostic `name` (or a `Diagnostic` itself, e.g. an interp
    analysis), write it, print its summary; returns the dataset."""
    from dtlens.diagnostics.registry import DIAGNOSTICS

    diag = DIAGNOSTICS[name] if isinstance(name, str) else name
    written = diag.write(target, folder, stem, **options)
    show(diag.summary(written.ds))
    console.print(f"wrote {written.nc}, {written.png}", highlight=False)
    return written.ds
