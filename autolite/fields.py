"""Field types of config dataclasses, checked from their annotations: one rule for every recipe field.

``check_field_types(config)`` runs before a config's own ``__post_init__`` range checks, so a recipe that
says ``min_sqnr: high`` or ``freeze: maybe`` or ``skip: classifier`` (a string where a list is declared) is
refused with one line instead of failing later inside a pass.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from typing import Any

from autolite.errors import RecipeError


def check_field_types(config: Any) -> None:
    """Raise :class:`RecipeError` naming the first field of dataclass ``config`` whose value does not match
    its annotation (``int`` accepts no bools, ``float`` accepts ints, ``list[T]`` accepts lists/tuples of T)."""
    label = getattr(config, "name", "") or type(config).__name__
    for field, hint in _hints(type(config)).items():
        value = getattr(config, field)
        if not matches(value, hint):
            raise RecipeError(f"pass '{label}': {field} must be {describe(hint)}, not {value!r}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init and f.name in hints}


def matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (annotations it does not understand always match)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if list in (hint, origin) or tuple in (hint, origin):
        return isinstance(value, (list, tuple)) and (not args or all(matches(v, args[0]) for v in value))
    if dict in (hint, origin):
        return isinstance(value, dict) and (not args or all(matches(k, args[0]) and matches(v, args[1])
                                                            for k, v in value.items()))
    return not isinstance(hint, type) or isinstance(value, hint)


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null",
          list: "a list", dict: "a mapping"}
_PLURALS = {str: "strings", int: "integers", float: "numbers", bool: "true/false values"}


def describe(hint: Any) -> str:
    """``list[str] | None`` -> ``"a list of a string or null"``-style words for an error message."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin in (list, tuple) and args:
        return f"a list of {_PLURALS.get(args[0], f'({describe(args[0])})')}"
    if origin is dict and args:
        return f"a mapping of {_PLURALS.get(args[0], describe(args[0]))} to {_PLURALS.get(args[1], describe(args[1]))}"
    return _NAMES.get(origin or hint, getattr(hint, "__name__", str(hint)))


def syntax_error(exc: Exception) -> str:
    """``line L, column C: problem`` from a YAML or JSON parse error (files a user wrote by hand)."""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {getattr(exc, 'problem', None) or exc}"
    if isinstance(exc, json.JSONDecodeError):
        return f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
