"""The `dtlens` Typer app. Each sub-module adds its commands to `app`."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="dtlens",
    help="Interpretability for Decision Transformers: pretrained vs random init on offline RL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Command modules register themselves on import (one line each, keep sorted).
from cli import model  # noqa: E402,F401
from cli import data  # noqa: E402,F401
