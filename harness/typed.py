"""Strict building of typed config dataclasses: unknown keys, wrong types and bad values raise
HarnessError with one line naming the key; `lr: 1` and `lr: 1.0` build the same value."""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union

from harness.errors import HarnessError


def type_ok(value, annotation) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(type_ok(value, a) for a in typing.get_args(annotation))
    if origin is Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        (item,) = typing.get_args(annotation)[:1] or (Any,)
        return isinstance(value, (list, tuple)) and all(type_ok(v, item) for v in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _accepts_int(annotation) -> bool:
    if annotation is int or annotation is Any:
        return True
    if typing.get_origin(annotation) in (Union, types.UnionType, Literal):
        return any(a is int or (typing.get_origin(a) is None and isinstance(a, int) and not isinstance(a, bool))
                   or _accepts_int(a) for a in typing.get_args(annotation) if not isinstance(a, str))
    return False


def describe_type(annotation) -> str:
    if typing.get_origin(annotation) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def build(cls, values: dict | None, where: str):
    """Instantiate dataclass `cls` from `values`, rejecting unknown keys and wrong types."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise HarnessError(f"unknown key {key!r} in {where}; valid: {', '.join(names)}")
    for key, value in values.items():
        if not type_ok(value, hints[key]):
            raise HarnessError(f"{where}.{key} = {value!r} has the wrong type; expected {describe_type(hints[key])}")
        if isinstance(value, int) and not isinstance(value, bool) and not _accepts_int(hints[key]):
            values[key] = float(value)   # `lr: 1` and `lr: 1.0` are the same run
    try:
        instance = cls(**values)
    except (TypeError, ValueError) as error:
        raise HarnessError(f"{where}: {error}") from None
    check = getattr(instance, "validate", None)
    if check:
        check(where)
    return instance


def non_negative(where: str, **values) -> None:
    """Raise HarnessError for any negative, NaN or infinite number among `values`."""
    for key, value in values.items():
        if value is not None and not (0 <= value < math.inf):
            raise HarnessError(f"{where}.{key} = {value!r} must be a finite number >= 0")


def positive(where: str, **values) -> None:
    """Raise HarnessError for any number among `values` that is not finite and > 0."""
    for key, value in values.items():
        if value is not None and not (0 < value < math.inf):
            raise HarnessError(f"{where}.{key} = {value!r} must be a finite number > 0")


def check_keys(mapping, valid, where):
    if not isinstance(mapping, dict):
        raise HarnessError(f"{where} must be a mapping, got {type(mapping).__name__}")
    for key in mapping:
        if key not in valid:
            raise HarnessError(f"unknown key {key!r} in {where}; valid: {', '.join(valid)}")

