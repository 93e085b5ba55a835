"""Config dataclasses to and from plain dicts, JSON and command-line flags: one list of fields.

A config's fields (names, types, defaults) and their ``metadata`` (``help``, ``flags``,
``choices``, ``metavar``) are the only list: :func:`to_dict` / :func:`from_dict` serialise it,
and :func:`add_arguments` / :func:`overrides_from_args` generate its argparse flags, so an
option cannot reach the engine by one path and be dropped by another.

    @dataclass
    class Config:
        epochs: int = field(default=5, metadata={"help": "epochs per round"})

    add_arguments(parser, Config)            # --epochs N
    config = from_dict(Config, {**base, **overrides_from_args(args, Config)})

Supported field types: ``int``, ``float``, ``str``, ``bool``, ``X | None`` of those, and
``dict`` (given as JSON on the command line). A bool that defaults to True gets a ``--no-X``
flag (every bool gets both forms).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

__all__ = [
    "add_arguments",
    "field_flags",
    "from_dict",
    "json_ready",
    "overrides_from_args",
    "to_dict",
]

_SCALARS = (bool, int, float, str)


def json_ready(value: Any) -> Any:
    """``value`` with plain JSON types: dataclasses and mappings as dicts (string keys), tuples
    as lists, numpy scalars as numbers, paths and other objects as ``str``, non-finite floats
    as ``None``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int):
        return value
    return str(value)


def to_dict(obj: Any) -> dict[str, Any]:
    """Every field of the dataclass ``obj``, JSON-ready (see :func:`json_ready`)."""
    return json_ready(obj)


def _field_type(cls: type, f: dataclasses.Field) -> tuple[type, bool]:
    """``(base type, optional)`` of a field (``int | None`` -> ``(int, True)``)."""
    hint = typing.get_type_hints(cls)[f.name]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported type {hint}")
        return _base(args[0]), True
    return _base(hint), False


def _base(hint: Any) -> type:
    base = typing.get_origin(hint) or hint
    if base in _SCALARS or base is dict:
        return base
    raise TypeError(f"unsupported config field type {hint}")


def _check(cls: type, f: dataclasses.Field, value: Any) -> Any:
    kind, optional = _field_type(cls, f)
    where = f"{cls.__name__}.{f.name}"
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where} must not be null")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is not bool and isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{where} must be {kind.__name__}, got {value!r}")
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"{where} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return dict(value) if kind is dict else value


def from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """``cls(**data)`` after checking that every key is a field and every value has its type;
    missing keys keep their defaults. Raises ValueError naming what is wrong."""
    if not isinstance(data, Mapping):
        raise ValueError(f"a {cls.__name__} is a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return cls(**{k: _check(cls, fields[k], v) for k, v in data.items()})


# --------------------------------------------------------------------------- argparse


def field_flags(f: dataclasses.Field) -> list[str]:
    """The flags of a field: ``metadata["flags"]`` or ``--<name with dashes>``."""
    return list(f.metadata.get("flags") or ["--" + f.name.replace("_", "-")])


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _parse_value(kind: type, optional: bool):
    def parse(text: str) -> Any:
        if optional and text.lower() == "none":
            return None
        if kind is dict:
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
            if not isinstance(value, dict):
                raise argparse.ArgumentTypeError("a JSON object is needed")
            return value
        return kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


def add_arguments(parser, cls: type, exclude: tuple[str, ...] = ()) -> None:
    """One flag per field of ``cls`` (not in ``exclude``), its default shown in the help.

    Flags not given leave no attribute on the namespace (``argparse.SUPPRESS``), so
    :func:`overrides_from_args` returns only what the command line said.
    """
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        kind, optional = _field_type(cls, f)
        default = _default(f)
        text = f.metadata.get("help", "")
        shown = json.dumps(default) if kind is dict else default
        kw: dict[str, Any] = {
            "dest": f.name,
            "default": argparse.SUPPRESS,
            "help": f"{text} (default: {shown})" if text else f"default: {shown}",
        }
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = _parse_value(kind, optional)
            if f.metadata.get("choices") is not None:
                kw["choices"] = list(f.metadata["choices"])
            kw["metavar"] = f.metadata.get("metavar") or ("JSON" if kind is dict else None)
        parser.add_argument(*field_flags(f), **kw)


def overrides_from_args(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` that the command line gave (see :func:`add_arguments`)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
