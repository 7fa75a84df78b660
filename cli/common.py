"""Shared CLI plumbing: user errors become one line on stderr and exit code 1."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from dtlens.errors import DtlensError

console = Console()
err_console = Console(stderr=True)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a DtlensError raised by `fn` into `error: <message>` and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DtlensError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


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
