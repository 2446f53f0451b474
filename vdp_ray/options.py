"""Options dataclasses that are also command lines: a field declared with ``arg(...)`` becomes a `vdp` flag, with
its default, type, choices and help taken from the field, so a command's defaults are the library's.

    @dataclass
    class EvalOptions:
        checkpoint: str = arg(..., "an export folder", flag="--checkpoint")   # ... = required
        clips: int = arg(64, "clips to score")                                 # --clips, type int, default 64

    add_arguments(parser, EvalOptions)          # the verb's parser
    opts = from_args(EvalOptions, args)         # back to the dataclass

Library code refuses bad values with ``OptionError(field, message)``; the command line names the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING, field
from typing import Any, Union

REQUIRED = ...  # ``arg(REQUIRED, ...)``: the option must be given


class OptionError(ValueError):
    """A bad option value; ``field`` names the dataclass field (the CLI shows its flag)."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field, self.message = field_name, message


def arg(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
    metavar=None,
    choices=None,
    parse=None,
    show=None,
    group: str | None = None,
    exclusive: str | None = None,
    positional: bool = False,
    cli_default: Any = MISSING,
):
    """A dataclass field that is also a command-line option.

    flag: the option's name (default ``--field-name``); parse: text -> value (e.g. megabytes -> bytes);
    show: value -> the text shown as the default in --help; group / exclusive: argparse groups by title;
    cli_default: a different default on the command line than in the library (e.g. an output folder)."""
    meta = {
        "cli": {
            "help": help,
            "flag": flag,
            "aliases": aliases,
            "metavar": metavar,
            "choices": choices,
            "parse": parse,
            "show": show,
            "group": group,
            "exclusive": exclusive,
            "positional": positional,
            "cli_default": cli_default,
        }
    }
    if default is REQUIRED:
        return field(default=None, metadata={**meta, "required": True})
    if isinstance(default, (list, dict, tuple)) and not isinstance(default, tuple):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(cls, name: str) -> str:
    """The command-line spelling of field ``name`` of ``cls`` or of an options dataclass inside it (for messages)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            found = flag_of(hints[f.name], name)
            if found != name:
                return found
        elif f.name == name and "cli" in f.metadata:
            return f.metadata["cli"]["flag"] or f"--{name.replace('_', '-')}"
    return name


def field_types(cls) -> dict[str, Any]:
    """Each field's type, the one inside Optional (``int | None`` -> ``int``)."""
    return {name: _unwrap(tp) for name, tp in typing.get_type_hints(cls).items()}


def add_arguments(parser: argparse.ArgumentParser, cls, prefix: str = "") -> None:
    """One argument per ``arg`` field of ``cls`` (nested option dataclasses included, their flags unprefixed)."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            add_arguments(parser, tp, prefix=f"{prefix}{f.name}.")
            continue
        if "cli" not in f.metadata:
            continue
        spec = f.metadata["cli"]
        target = parser
        if spec["group"]:
            if spec["group"] not in groups:
                groups[spec["group"]] = parser.add_argument_group(spec["group"])
            target = groups[spec["group"]]
        if spec["exclusive"]:
            key = "exclusive:" + spec["exclusive"]
            if key not in groups:
                groups[key] = target.add_mutually_exclusive_group()
            target = groups[key]
        names, kwargs = _argument(f, tp, spec, prefix)
        target.add_argument(*names, **kwargs)


def declare(parser: argparse.ArgumentParser, cls, func, description: str) -> None:
    """A verb whose flags are ``cls``'s fields: its description, its arguments, and ``func(args)`` to run it."""
    parser.description = description
    add_arguments(parser, cls)
    parser.set_defaults(func=func, options_class=cls)


def from_args(cls, args: argparse.Namespace, prefix: str = "", **fixed):
    """The dataclass from a parsed namespace (``fixed``: fields set by the caller instead)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in fixed:
            values[f.name] = fixed[f.name]
        elif dataclasses.is_dataclass(hints[f.name]):
            values[f.name] = from_args(hints[f.name], args, prefix=f"{prefix}{f.name}.")
        elif "cli" in f.metadata:
            values[f.name] = getattr(args, _dest(prefix, f.name))
    return cls(**values)


# ------------------------------------------------------------------------------------ internals
def _dest(prefix: str, name: str) -> str:
    return (prefix + name).replace(".", "__")


def _argument(f, tp, spec: dict, prefix: str) -> tuple[list[str], dict]:
    kind = _unwrap(tp)
    default = f.default if f.default is not MISSING else f.default_factory()
    if spec["cli_default"] is not MISSING:
        default = spec["cli_default"]
    kwargs: dict = {"dest": _dest(prefix, f.name), "default": default}
    origin, elems = typing.get_origin(kind), typing.get_args(kind)
    if kind is bool:
        kwargs["action"] = "store_true"
    else:
        scalar = elems[0] if origin in (tuple, list) else kind
        kwargs["type"] = _parser(spec["parse"]) if spec["parse"] else scalar  # parse: one token -> the value
        if origin is tuple and not spec["parse"] and len(elems) >= 2 and elems[1] is not Ellipsis:
            kwargs["nargs"] = len(elems)
        elif origin in (tuple, list) and not spec["parse"]:
            kwargs["nargs"] = "*" if spec["positional"] else "+"
    if spec["choices"] is not None:
        kwargs["choices"] = list(spec["choices"])
    flag = spec["flag"] or f"--{f.name.replace('_', '-')}"
    if spec["metavar"] is not None:
        kwargs["metavar"] = spec["metavar"]
    elif kind is not bool and not spec["positional"] and spec["choices"] is None:
        kwargs["metavar"] = flag.lstrip("-").replace("-", "_").upper()
    help_text = spec["help"]
    shows_default = not (default is None or default is False or (isinstance(default, (list, tuple)) and not default))
    if shows_default and not spec["positional"]:
        help_text += f" (default {_shown(default, spec['show'])})"
    kwargs["help"] = help_text
    if spec["positional"]:
        kwargs.pop("dest")
        return [_dest(prefix, f.name)], kwargs
    if f.metadata.get("required"):
        kwargs["required"] = True
        kwargs.pop("default")
    names = [flag, *spec["aliases"]]
    return names, kwargs


def _shown(default, show) -> str:
    if show is not None:
        return show(default)
    return " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)


def _parser(parse):
    """``parse`` as an argparse type: any error it raises becomes argparse's usage error (exit 2, the message)."""

    def run(text: str):
        try:
            return parse(text)
        except Exception as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    run.__name__ = getattr(parse, "__name__", "value")
    return run


def _unwrap(tp) -> Any:
    """The type inside Optional[...]."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp
