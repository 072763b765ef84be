"""Model configs as plain frozen dataclasses, checked field by field on construction."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any


def _matches(value: Any, hint: Any) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is tuple:  # only tuple[X, ...] is used
        return isinstance(value, tuple) and all(_matches(v, args[0]) for v in value)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) if isinstance(hint, type) else str(hint).replace("typing.", "")


def check_fields(config: Any) -> None:
    """Raise TypeError naming the field whose value does not have the annotated type.

    Lists are accepted for tuple fields (configs read from JSON/YAML) and ints for float
    fields; both are converted in place.
    """
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value, hint = getattr(config, field.name), hints[field.name]
        if isinstance(value, list) and typing.get_origin(hint) in (tuple, typing.Union, types.UnionType):
            value = tuple(value)
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not _matches(value, hint):
            raise TypeError(f"{type(config).__name__}.{field.name} must be {_type_name(hint)}, "
                            f"got {value!r} ({type(value).__name__})")
        object.__setattr__(config, field.name, value)


def config_from_dict(cls: type, values: Mapping[str, Any]):
    """`cls(**values)`, with unknown keys reported together with the valid ones."""
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid: {valid}")
    return cls(**values)
