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
from cli import train  # noqa: E402,F401
from cli import data  # noqa: E402,F401
from cli import pretrain  # noqa: E402,F401
from cli import studies  # noqa: E402,F401
from cli import capture  # noqa: E402,F401
from cli import diagnostics  # noqa: E402,F401
from cli import gradients  # noqa: E402,F401
from cli import mutual_info  # noqa: E402,F401
from cli import reproduce  # noqa: E402,F401
from cli import attention  # noqa: E402,F401
from cli import import_hf  # noqa: E402,F401
from cli import interp  # noqa: E402,F401
from cli import interventions  # noqa: E402,F401
from cli import explore  # noqa: E402,F401
