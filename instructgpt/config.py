"""Typed configs from params: a dataclass per concern, built from a params section at the stage edge.

`from_params` checks that every key is a field of the dataclass, and that each value has the
field's type, so a typo in `params.yaml` fails loudly with the key named, instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping, TypeVar

from instructgpt.errors import ConfigError

T = TypeVar("T")


def from_params(cls: type[T], section: Mapping[str, Any] | None, where: str) -> T:
    """Build dataclass `cls` from `section`; `where` names the section in errors (e.g. 'params.yaml:ingest')."""
    section = dict(section or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(section) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown}; known keys: {sorted(fields)}", file=where, field=unknown[0]
        )
    values: dict[str, Any] = {}
    for name, value in section.items():
        values[name] = _coerce(value, hints[name], where, name)
    try:
        return cls(**values)
    except TypeError as err:  # a required field is missing
        raise ConfigError(str(err), file=where) from err
    except ValueError as err:  # __post_init__ range checks
        raise ConfigError(str(err), file=where) from err


def _coerce(value: Any, hint: Any, where: str, name: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, name)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"must be one of {list(args)}, got {value!r}", file=where, field=name)
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"must be a list, got {value!r}", file=where, field=name)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, where, name) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"must be a mapping, got {value!r}", file=where, field=name)
        val_hint = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, val_hint, where, f"{name}.{k}") for k, v in value.items()}
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"must be a number, got {value!r}", file=where, field=name)
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"must be an integer, got {value!r}", file=where, field=name)
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"must be true or false, got {value!r}", file=where, field=name)
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"must be a string, got {value!r}", file=where, field=name)
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"must be a mapping, got {value!r}", file=where, field=name)
        return from_params(hint, value, f"{where}.{name}")
    return value
