"""Shared CLI plumbing: user errors and file system errors become one line on stderr, exit 1."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from dtlens.errors import DtlensError
from dtlens.model.config import MINI

console = Console()
err_console = Console(stderr=True)


#: `--device` of the commands that load a run's checkpoints (`dtlens.train.run.Run`).
#: The backbone size of a random init (`BackboneConfig.sized`: d_mlp = 4 x d_model).
LAYERS = typer.Option(MINI.n_layers, help="Random init: blocks.")
D_MODEL = typer.Option(MINI.d_model, help="Random init: width (d_mlp = 4 x d_model).")
HEADS = typer.Option(MINI.n_heads, help="Random init: heads.")
DEVICE = typer.Option(
    "cpu", help="Where checkpoints load and the analysis runs: cpu, cuda, cuda:N, mps or auto."
)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a DtlensError raised by `fn` into `error: <message>`, an OSError (permissions, disk
    full, ...) into `error: <path>: <strerror>`, and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DtlensError as e:
            message = str(e)
        except OSError as e:
            message = os_error_message(e)
        err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)

    return wrapper


def os_error_message(e: OSError) -> str:
    """'<path>: <strerror>' ('<path> -> <path2>: ...' for a rename), or the error's own text."""
    if e.strerror is None:
        return str(e)
    if e.filename is None:
        return e.strerror
    path = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else f"{e.filename}"
    return f"{path}: {e.strerror}"


def parse_names(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']: a comma-separated option's names, blanks dropped."""
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_int_list(text: str) -> list[int]:
    """'0,1,4' -> [0, 1, 4]; raises DtlensError on anything else."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise DtlensError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise DtlensError("expected at least one integer")
    return values


def is_interactive() -> bool:
    return sys.stderr.isatty()


def flag(default: bool, *decls: str, help: str) -> Any:
    """A boolean option shown without a value placeholder (Typer 0.29 prints `<bool>`)."""
    return typer.Option(default, *decls, help=help, metavar="")
