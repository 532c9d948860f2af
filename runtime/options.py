"""One source per option (issue #29): a config dataclass's fields are the defaults, the help, the checks and
the command line's options.

    @dataclass
    class FitConfig:
        lr: float = option(1e-3, "learning rate", low=0.0, high=10.0, low_allowed=False)
        pooling: Pooling = option("attention", "mean is the no-attention ablation")

        def __post_init__(self):
            check_options(self)         # Enum-typed fields become their plain value; bounds are checked

    @app.command()
    @clean_errors
    @options_from(FitConfig)
    def fit(store: str = typer.Argument(...), options: dict = None): ...

A field typed with an Enum (runtime.choices) is a choice: typer shows and checks it, `check_options`
refuses anything else in one line and stores the plain string, so the library and the run files never
hold an Enum. A field with `cli=False` is a library-only setting.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import typing
from enum import Enum

from runtime.errors import UserError


def option(default, help: str = "", *, low=None, high=None, low_allowed: bool = True, cli: bool = True):
    """A config field: its default, its --help line and, for numbers, its bounds (`low` itself allowed
    unless low_allowed is False; `high` always allowed). None is allowed where the default is None."""
    return dataclasses.field(default=default, metadata={"help": help, "low": low, "high": high,
                                                        "low_allowed": low_allowed, "cli": cli})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _choices(hint) -> type[Enum] | None:
    for t in (hint, *typing.get_args(hint)):
        if isinstance(t, type) and issubclass(t, Enum):
            return t
    return None


def check_options(cfg) -> None:
    """Refuse a bad value in one line naming its option (before anything is read or written); turn Enum
    values, and the strings of a choice field, into the plain string value."""
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, meta = getattr(cfg, f.name), f.metadata
        kinds = _choices(hints[f.name])
        if kinds is not None:
            allowed = [k.value for k in kinds]
            plain = value.value if isinstance(value, Enum) else value
            if plain not in allowed:
                raise UserError(f"{flag(f.name)} must be {', '.join(allowed)}; got {plain!r}")
            setattr(cfg, f.name, plain)
            continue
        if meta.get("low") is None and meta.get("high") is None or value is None and f.default is None:
            continue
        lo, hi, closed = meta["low"], meta["high"], meta["low_allowed"]
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and (hi is None or value <= hi) and (lo is None or (value >= lo if closed else value > lo)))
        if not ok:
            rule = " and ".join(([f"{'>=' if closed else '>'} {lo}"] if lo is not None else [])
                                + ([f"<= {hi}"] if hi is not None else []))
            raise UserError(f"{flag(f.name)} must be a number {rule}, got {value!r}")


def cli_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def options_from(cls, skip: tuple[str, ...] = ()):
    """Decorate a typer command whose last parameter is `options`: each command-line field of `cls` (except
    `skip`) becomes a keyword option (`--max-steps`, with the field's default and help), and the command
    is called with `options`, a dict of their plain values by field name."""
    import typer
    hints = _hints(cls)
    fields = [f for f in cli_fields(cls) if f.name not in skip]

    def wrap(fn):
        own = inspect.signature(fn)
        own_hints = typing.get_type_hints(fn)
        params = [p.replace(annotation=own_hints.get(p.name, p.annotation)) for p in own.parameters.values()
                  if p.name != "options"]
        for f in fields:
            kinds = _choices(hints[f.name])
            default = f.default if kinds is None or f.default is None else kinds(f.default)
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
                                            default=typer.Option(default, help=f.metadata.get("help") or None)))

        @functools.wraps(fn)
        def command(*args, **kwargs):
            given = {f.name: kwargs.pop(f.name) for f in fields if f.name in kwargs}
            given = {k: v.value if isinstance(v, Enum) else v for k, v in given.items()}
            return fn(*args, options=given, **kwargs)
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__          # typer must read the new signature, not fn's
        return command
    return wrap
