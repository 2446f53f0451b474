"""The machinery under the config tree: fields that carry their help text and constraints, and typed building
from plain values (YAML, command-line overrides) with errors that name the key.

A section is a frozen dataclass whose fields are declared with ``opt(default, help, choices=/ge=/gt=/le=/lt=)``;
``build(cls, values, prefix)`` checks types, choices and ranges field by field.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import field
from typing import Any, Literal, Union


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the key and what was expected."""


def opt(default: Any, help: str, *, choices: tuple | None = None, ge=None, gt=None, le=None, lt=None):
    """A config field with its help text and constraints."""
    meta = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls, help: str):
    return field(default_factory=cls, metadata={"help": help})


def build(cls, values: dict, prefix: str = ""):
    """An instance of section ``cls`` from plain values; unknown keys are refused with the closest valid one."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), fields, n=1)
        hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown key '{prefix}{key}'{hint}; valid keys here: {', '.join(fields)}")
    kwargs = {}
    for name, value in values.items():
        tp, key = hints[name], f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, value if value is not None else {}, key + ".")
        else:
            kwargs[name] = coerce(value, tp, key, fields[name].metadata)
    return cls(**kwargs)


def check_field(section_obj, name: str, value: Any, key: str) -> Any:
    """``value`` coerced and checked as field ``name`` of ``section_obj``'s class would be (``key`` names it in
    errors): what a caller that overrides one setting at run time uses, so the rule lives with the field."""
    cls = type(section_obj)
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return coerce(value, typing.get_type_hints(cls)[name], key, f.metadata)


def coerce(value: Any, tp: Any, key: str, meta) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(value, inner, key, meta)
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        elem = args[0]
        if origin is tuple and len(args) >= 2 and args[1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {list(value)!r}")
        items = [coerce(v, elem, f"{key}[{i}]", meta) for i, v in enumerate(value)]
        if origin is tuple and not items:
            raise ConfigError(f"{key}: expected at least one value")
        return tuple(items) if origin is tuple else items
    if origin is Literal:
        return _check_choice(value, args, key)
    out = _scalar(value, tp, key)
    if meta.get("choices") is not None:
        _check_choice(out, meta["choices"], key)
    _check_range(out, key, meta)
    return out


def describe(cls, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every leaf key of section ``cls``, for `vdp keys` and docs."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, key + ".")
            continue
        meta = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        allowed = _constraint_text(meta)
        kind = allowed if meta.get("choices") is not None else _type_name(tp) + (f", {allowed}" if allowed else "")
        rows.append((key, kind, repr(plain(default)), meta.get("help", "")))
    return rows


def plain(value):
    """Dataclass values as YAML-friendly builtins (tuples become lists)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


# ------------------------------------------------------------------------------------ internals
def _scalar(value: Any, tp: type, key: str) -> Any:
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
                return value.lower() in ("true", "yes", "on", "1")
            raise ValueError
        if tp is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value.strip())
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if not math.isfinite(out):
                raise ValueError
            return out
        if tp is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value).lower() if isinstance(value, bool) else str(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}") from None
    raise ConfigError(f"{key}: unsupported type {tp}")


def _check_choice(value, choices, key):
    for c in choices:
        if value == c or (isinstance(value, str) and str(c) == value):
            return c
    raise ConfigError(f"{key}: {value!r} is not allowed; expected one of {list(choices)}")


_BOUNDS = {"ge": lambda v, b: v >= b, "gt": lambda v, b: v > b, "le": lambda v, b: v <= b, "lt": lambda v, b: v < b}


def _check_range(value, key, meta):
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    for bound, ok in _BOUNDS.items():
        if meta.get(bound) is not None and not ok(value, meta[bound]):
            raise ConfigError(f"{key}: {value!r} is out of range; expected {_constraint_text(meta)}")


def _constraint_text(meta) -> str:
    if meta.get("choices") is not None:
        return "one of " + str(list(meta["choices"]))
    parts = [
        f"{word} {meta[b]}"
        for b, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
        if meta.get(b) is not None
    ]
    return " and ".join(parts)


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + " or null"
    if origin in (tuple, list):
        return f"a list of {_type_name(args[0]).split(' ', 1)[-1]}s"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))
