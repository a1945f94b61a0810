"""Metadata filters: check a filter before a search, and match documents against it.

Example:
    >>> matches({"year": 1867, "topic": "science"}, check({"year": {"$in": [1867, 1900]}}))
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from s3_retriever.errors import InvalidInputError

__all__ = ['FILTER_OPERATORS', 'check', 'matches']


FILTER_OPERATORS = ("$eq", "$ne", "$in", "$nin")


def check(value: Any, what: str = "filters") -> dict[str, Any] | None:
    """Metadata conditions: ``{"key": value}``, ``{"key": [v1, v2]}`` (any of) or
    ``{"key": {"$eq"|"$ne"|"$in"|"$nin": ...}}``, where ``$in``/``$nin`` take a list."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{what} must be a dict of metadata conditions, got "
                                f"{type(value).__name__}")
    for key, cond in value.items():
        if not isinstance(key, str):
            raise InvalidInputError(f"{what}: the key {key!r} is not a str")
        if isinstance(cond, Mapping):
            if not cond:
                raise InvalidInputError(f"{what}[{key!r}] is an empty condition")
            for op, arg in cond.items():
                if op not in FILTER_OPERATORS:
                    raise InvalidInputError(f"{what}[{key!r}]: unknown operator {op!r}; use "
                                            f"{', '.join(FILTER_OPERATORS)}")
                if op in ("$in", "$nin") and not isinstance(arg, (list, tuple, set, frozenset)):
                    raise InvalidInputError(f"{what}[{key!r}]: {op} takes a list of values, "
                                            f"got {type(arg).__name__} {arg!r}")
    return dict(value)


def matches(meta: Mapping[str, Any], conditions: Mapping[str, Any]) -> bool:
    """Whether a document's metadata meets every condition (see :func:`check`)."""
    for key, cond in conditions.items():
        has = key in meta
        val = meta.get(key)
        if isinstance(cond, Mapping):
            for op, arg in cond.items():
                if op == "$eq":
                    ok = has and val == arg
                elif op == "$ne":
                    ok = not has or val != arg
                elif op == "$in":
                    ok = has and val in list(arg)
                else:
                    ok = not has or val not in list(arg)
                if not ok:
                    return False
        elif isinstance(cond, (list, tuple, set, frozenset)):
            if not has or val not in list(cond):
                return False
        elif not has or val != cond:
            return False
    return True
