"""Argument checks of the public API: each raises :class:`InvalidInputError` naming the
argument and what to pass, before anything changes.

Example:
    >>> from s3_retriever.validate import positive_int
    >>> positive_int(True, "k")
    Traceback (most recent call last):
    ...
    s3_retriever.errors.InvalidInputError: k must be a positive integer, got True
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from s3_retriever.errors import InvalidInputError


def is_int(value: Any) -> bool:
    """An integer that is not a bool (numpy integers included)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def text(value: Any, what: str) -> str:
    """A non-blank ``str`` that is valid Unicode (no lone surrogates, which no tokenizer
    or file can hold)."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a str, got {type(value).__name__}")
    if not value.strip():
        raise InvalidInputError(f"{what} is empty or whitespace only")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidInputError(
            f"{what} holds a lone surrogate at character {e.start} (not valid Unicode); "
            "repair it, e.g. s.encode('utf-8', 'replace').decode('utf-8')") from None
    return value


def positive_int(value: Any, what: str) -> int:
    """An ``int`` > 0 (``True`` is not taken as 1)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidInputError(f"{what} must be a positive integer, got {value!r}")
    return value


def optional_positive_int(value: Any, what: str) -> int | None:
    return None if value is None else positive_int(value, what)


def fraction(value: Any, what: str) -> float:
    """A real number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise InvalidInputError(f"{what} must be a number in [0, 1], got {value!r}")
    return float(value)


def choice(value: Any, options: Iterable[str], what: str) -> str:
    options = tuple(options)
    if not isinstance(value, str) or value not in options:
        raise InvalidInputError(f"{what} must be one of {options}, got {value!r}")
    return value


def doc_id(value: Any, what: str) -> str:
    """A document id: a non-empty ``str`` (``None`` is never stored as ``"None"``)."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a str, got {type(value).__name__} "
                                f"{value!r}; leave ids=None for generated ids")
    if not value.strip():
        raise InvalidInputError(f"{what} is empty or whitespace only")
    return text(value, what)


def id_list(values: Any, what: str) -> list[str]:
    """A list of document ids; a single ``str`` is one id."""
    if isinstance(values, str):
        return [doc_id(values, what)]
    if values is None or isinstance(values, (bytes, Mapping)) or \
            not isinstance(values, Iterable):
        raise InvalidInputError(f"{what} must be a list of document ids (str), got "
                                f"{type(values).__name__}")
    return [doc_id(v, f"{what}[{i}]") for i, v in enumerate(values)]


def one_per(values: Any, n: int, what: str, kind: str) -> list[Any]:
    """``values`` as a list of ``n`` items, one per text (``None``: ``n`` Nones)."""
    if values is None:
        return [None] * n
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
        raise InvalidInputError(f"{what} must be a list of {kind} (one per text), got "
                                f"{type(values).__name__}")
    if len(values) != n:
        raise InvalidInputError(f"{len(values)} {what} for {n} texts")
    return list(values)


def metadata(value: Any, what: str) -> dict[str, Any]:
    """A JSON-serialisable dict with ``str`` keys (``None`` is an empty dict)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{what} must be a dict, got {type(value).__name__}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise InvalidInputError(f"{what} has a key that is not a str: {bad[0]!r}")
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as e:
        raise InvalidInputError(f"{what} is not JSON-serialisable ({e})") from None
    return dict(value)
