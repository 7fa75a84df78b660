"""CLI options generated from a config dataclass: one source of defaults, flags and help.

`@config_options(TrainConfig, ["lr", "epochs", ...])` adds one Typer option per named field to a
command, with the field's default and the flag and help of its metadata; the command receives
them together as `config: dict` (field name -> value), or under the name `into` says (options of a
nested config, e.g. `into="dt"` for `DTOptions`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal

import typer


def field_default(cls: type, name: str) -> Any:
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def config_options(
    cls: type, names: Sequence[str], into: str = "config"
) -> Callable[[Callable], Callable]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.name != into]
        generated = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(
                    field_default(cls, name),
                    fields[name].metadata["flag"],
                    help=fields[name].metadata["help"],
                    show_default=True,
                ),
                # A Literal is read as text: the config's own check names the choices.
                annotation=str if typing.get_origin(hints[name]) is Literal else hints[name],
            )
            for name in names
        ]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            config = {name: kwargs.pop(name) for name in names}
            return fn(**{into: config}, **kwargs)

        own_hints = typing.get_type_hints(fn)
        command.__signature__ = sig.replace(parameters=[*own, *generated])
        command.__annotations__ = {p.name: own_hints.get(p.name, p.annotation) for p in own} | {
            p.name: p.annotation for p in generated
        }
        return command

    return decorate
