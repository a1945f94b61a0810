"""Metadata filters: a small query language, checked before a search, matched per document.

A filter is a dict whose entries must all hold: ``{"key": value}`` (equal),
``{"key": [v1, v2]}`` (any of), ``{"key": {"$op": operand, ...}}`` (see
:data:`FILTER_OPERATORS`) and ``{"$and": [...]}``, ``{"$or": [...]}``, ``{"$not": {...}}``,
nested freely. Numbers compare as numbers, ISO 8601 strings as dates; a comparison between
incompatible types is false (and its negation true). The full reference: docs/filters.md.

Example:
    >>> f = check({"$or": [{"year": {"$gte": 2020}}, {"date": {"$lt": "2019-06-01"}}]})
    >>> matches({"year": 2021}, f), matches({"date": "2019-05-31T23:00"}, f), matches({}, f)
    (True, True, False)
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from s3_retriever.errors import InvalidInputError

__all__ = ['FILTER_OPERATORS', 'LOGICAL_OPERATORS', 'CheckedFilter', 'check', 'matches']

#: Operators on one metadata key: ``{"year": {"$gte": 2020, "$lt": 2024}}``.
FILTER_OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$between", "$in", "$nin",
                    "$exists", "$contains", "$like", "$ilike", "$not")
#: Operators that combine whole filters: ``{"$or": [{"topic": "music"}, {"year": 2020}]}``.
LOGICAL_OPERATORS = ("$and", "$or", "$not")

_MAX_DEPTH = 64
_LISTS = (list, tuple, set, frozenset)
_NUMBER = (int, float)
_MISSING = object()  # the value of a key a document does not have
_BOOL, _LIST, _DICT = object(), object(), object()  # tags of _key
_COMPARE = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}
_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
                  r"(Z|[+-]\d{2}(?::?\d{2})?)?)?", re.ASCII)

Test = Callable[[Any], bool]


class CheckedFilter(dict):
    """A filter :func:`check` accepted: the same dict, plus its compiled ``test`` (so
    :func:`matches` does not re-read the structure for every document)."""

    __slots__ = ("test",)

    def __reduce__(self) -> tuple[Any, ...]:  # pickled and copied as the filter, rechecked
        return check, (dict(self),)


def check(value: Any, what: str = "filters") -> CheckedFilter | None:
    """Validate a filter before any search; returns it (a copy) ready for :func:`matches`.

    Raises:
        InvalidInputError: a malformed filter, an unknown operator or an operand of the
            wrong type, naming where (``filters['$or'][1]['year']: $gt compares ...``).

    Example:
        >>> check({"t": {"$in": 5}})
        Traceback (most recent call last):
        ...
        s3_retriever.errors.InvalidInputError: filters['t']: $in takes a list of values, got int 5
    """
    if value is None:
        return None
    test = _filter(value, what, 0, top=True)
    checked = CheckedFilter(value)
    checked.test = test
    return checked


def matches(meta: Mapping[str, Any], conditions: Mapping[str, Any]) -> bool:
    """Whether a document's metadata meets the filter (checked by :func:`check`, or
    checked now)."""
    test = conditions.test if isinstance(conditions, CheckedFilter) else \
        _filter(conditions, "filters", 0, top=True)
    return test(meta)


# --------------------------------------------------------------------------- values
def _key(v: Any) -> Any:
    """A hashable stand-in for a JSON value: equal exactly when the values are equal as
    JSON (1 == 1.0, but True != 1, and a tuple is a list)."""
    if v.__class__ is str:
        return v
    if v.__class__ is bool:
        return (_BOOL, v)
    if isinstance(v, (list, tuple)):
        return (_LIST, tuple(_key(x) for x in v))
    if isinstance(v, Mapping):
        return (_DICT, frozenset((k, _key(x)) for k, x in v.items()))
    return v


def _as_date(text: str) -> datetime | None:
    """See :func:`_parse_date`; strings too long to be a date skip its cache."""
    return None if len(text) > 48 else _parse_date(text)


@lru_cache(maxsize=1 << 16)
def _parse_date(text: str) -> datetime | None:
    """``YYYY-MM-DD`` or ``YYYY-MM-DD[T ]HH:MM[:SS[.f]][Z|+HH[:MM]]`` as an aware datetime
    (a date is its midnight, no offset is UTC); None for any other string."""
    m = _ISO.fullmatch(text)
    if m is None:
        return None
    y, mo, d, h, mi, s, frac, tz = m.groups()
    try:
        zone = timezone.utc
        if tz and tz != "Z":
            minutes = int(tz[1:3]) * 60 + int(tz[-2:] if len(tz) > 3 else 0)
            zone = timezone((-1 if tz[0] == "-" else 1) * timedelta(minutes=minutes))
        return datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0),
                        int((frac or "0")[:6].ljust(6, "0")), tzinfo=zone)
    except ValueError:  # 2024-13-01, 25:00, an offset of a day or more
        return None


def _describe(v: Any) -> str:
    return f"{type(v).__name__} {v!r}"


def _operand(v: Any, path: str, depth: int = 0) -> None:
    """Refuse operands no JSON metadata value can equal."""
    if v is None or isinstance(v, (str, bool, int)):
        return
    if isinstance(v, float):
        if math.isnan(v):
            raise InvalidInputError(f"{path}: NaN equals nothing; drop the condition")
        return
    if depth < _MAX_DEPTH and isinstance(v, (list, tuple)):
        for x in v:
            _operand(x, path, depth + 1)
        return
    if depth < _MAX_DEPTH and isinstance(v, Mapping) and all(isinstance(k, str) for k in v):
        for x in v.values():
            _operand(x, path, depth + 1)
        return
    raise InvalidInputError(f"{path}: {_describe(v)} is not a metadata value (metadata "
                            "holds JSON: str, number, bool, None, lists and dicts)")


# --------------------------------------------------------------------------- combinators
def _always(_: Any) -> bool:
    return True


def _all(tests: list[Test]) -> Test:
    if not tests:
        return _always
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        a, b = tests
        return lambda x: a(x) and b(x)

    def test(x: Any) -> bool:
        for t in tests:
            if not t(x):
                return False
        return True
    return test


def _any(tests: list[Test]) -> Test:
    if len(tests) == 1:
        return tests[0]

    def test(x: Any) -> bool:
        for t in tests:
            if t(x):
                return True
        return False
    return test


def _negate(t: Test) -> Test:
    return lambda x: not t(x)


# --------------------------------------------------------------------------- whole filters
def _filter(value: Any, path: str, depth: int, top: bool = False) -> Test:
    """The test of a whole filter (a dict of keys and logical operators)."""
    if depth > _MAX_DEPTH:
        raise InvalidInputError(f"{path}: filters nested more than {_MAX_DEPTH} deep")
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{path} must be a dict of metadata conditions, got "
                                f"{type(value).__name__}")
    if not value and not top:
        raise InvalidInputError(f"{path} is an empty filter; give at least one condition")
    tests = []
    for key, cond in value.items():
        if not isinstance(key, str):
            raise InvalidInputError(f"{path}: the key {key!r} is not a str")
        sub = f"{path}[{key!r}]"
        if key in ("$and", "$or") or (key == "$not" and isinstance(cond, (list, tuple))):
            tests.append(_logical(key, cond, sub, depth))
        elif key == "$not":
            tests.append(_negate(_filter(cond, sub, depth + 1)))
        elif key.startswith("$"):
            raise InvalidInputError(
                f"{path}: unknown logical operator {key!r}; use {', '.join(LOGICAL_OPERATORS)}"
                f" (field operators go under a key: {{'year': {{'$gte': 2020}}}})")
        else:
            tests.append(_field(key, _condition(cond, sub, depth)))
    return _all(tests)


def _logical(op: str, parts: Any, path: str, depth: int) -> Test:
    if not isinstance(parts, (list, tuple)):
        raise InvalidInputError(f"{path}: {op} takes a list of filters, got {_describe(parts)}")
    if not parts:
        raise InvalidInputError(f"{path}: {op} has an empty list; give at least one filter")
    tests = [_filter(p, f"{path}[{i}]", depth + 1) for i, p in enumerate(parts)]
    if op == "$and":
        return _all(tests)
    either = _any(tests)
    return either if op == "$or" else _negate(either)  # $not: [...] matches none of them


def _field(key: str, pred: Test) -> Test:
    def test(meta: Mapping[str, Any]) -> bool:
        return pred(meta.get(key, _MISSING))
    return test


# --------------------------------------------------------------------------- one key
def _condition(cond: Any, path: str, depth: int) -> Test:
    """The test of one key's condition: a value, a list of values or operators."""
    if isinstance(cond, Mapping):
        if not cond:
            raise InvalidInputError(f"{path} is an empty condition")
        return _all([_operator(op, arg, path, depth) for op, arg in cond.items()])
    if isinstance(cond, _LISTS):
        return _in(cond, path, "a list")
    return _equal(cond, path)


def _operator(op: Any, arg: Any, path: str, depth: int) -> Test:
    if op == "$eq":
        return _equal(arg, path)
    if op == "$ne":
        return _negate(_equal(arg, path))
    if op in ("$in", "$nin"):
        if not isinstance(arg, _LISTS):
            raise InvalidInputError(f"{path}: {op} takes a list of values, got {_describe(arg)}")
        t = _in(arg, path, op)
        return t if op == "$in" else _negate(t)
    if op in _COMPARE:
        return _compare(op, arg, path)
    if op == "$between":
        if not isinstance(arg, (list, tuple)) or len(arg) != 2:
            raise InvalidInputError(f"{path}: $between takes [low, high], got {_describe(arg)}")
        lo, hi = _compare("$gte", arg[0], path), _compare("$lte", arg[1], path)
        if _kind(arg[0]) != _kind(arg[1]):
            raise InvalidInputError(f"{path}: $between bounds {arg[0]!r} and {arg[1]!r} are "
                                    "not of one kind (numbers, dates or strings)")
        return _all([lo, hi])
    if op == "$exists":
        if not isinstance(arg, bool):
            raise InvalidInputError(f"{path}: $exists takes True or False, got {_describe(arg)}")
        return (lambda v: v is not _MISSING) if arg else (lambda v: v is _MISSING)
    if op == "$contains":
        return _contains(arg, path)
    if op in ("$like", "$ilike"):
        if not isinstance(arg, str):
            raise InvalidInputError(f"{path}: {op} takes a str pattern, got {_describe(arg)}")
        rx = _like(arg, op == "$ilike")
        return lambda v: isinstance(v, str) and rx.fullmatch(v) is not None
    if op == "$not":
        if depth >= _MAX_DEPTH:
            raise InvalidInputError(f"{path}: filters nested more than {_MAX_DEPTH} deep")
        return _negate(_condition(arg, f"{path}['$not']", depth + 1))
    hint = ("" if isinstance(op, str) and op.startswith("$") else
            " (to compare with a dict value use {'$eq': {...}})")
    if op in ("$and", "$or"):
        hint = f" ({op} combines whole filters: {{{op!r}: [{{'year': 2020}}, {{'topic': 'x'}}]}})"
    raise InvalidInputError(f"{path}: unknown operator {op!r}; use "
                            f"{', '.join(FILTER_OPERATORS)}{hint}")


def _equal(arg: Any, path: str) -> Test:
    """Exact JSON equality: numbers by value (1 == 1.0), never a bool for a number."""
    _operand(arg, path)
    if arg is None:
        return lambda v: v is None
    if isinstance(arg, str):
        return lambda v: v == arg
    if isinstance(arg, bool):
        return lambda v: v.__class__ is bool and v == arg
    if isinstance(arg, _NUMBER):
        return lambda v: v == arg and v.__class__ is not bool
    key = _key(arg)
    return lambda v: isinstance(v, (list, tuple, Mapping)) and _key(v) == key


def _in(values: Any, path: str, op: str) -> Test:
    for v in values:
        _operand(v, path)
    keys = frozenset(_key(v) for v in values)

    def test(v: Any) -> bool:
        return v is not _MISSING and _key(v) in keys
    return test


def _kind(v: Any) -> str:
    if isinstance(v, str):
        return "date" if _as_date(v) is not None else "str"
    return "number"


def _compare(op: str, arg: Any, path: str) -> Test:
    cmp = _COMPARE[op]
    if isinstance(arg, _NUMBER) and not isinstance(arg, bool) and not \
            (isinstance(arg, float) and math.isnan(arg)):
        return lambda v: isinstance(v, _NUMBER) and v.__class__ is not bool and cmp(v, arg)
    if isinstance(arg, str):
        when = _as_date(arg)
        if when is None:
            return lambda v: isinstance(v, str) and cmp(v, arg)

        def test(v: Any) -> bool:
            if not isinstance(v, str):
                return False
            d = _as_date(v)
            return d is not None and cmp(d, when)
        return test
    raise InvalidInputError(f"{path}: {op} compares numbers, ISO 8601 dates or strings, got "
                            f"{_describe(arg)}")


def _contains(arg: Any, path: str) -> Test:
    """A list holding an element equal to ``arg``, or a str holding the str ``arg``."""
    if isinstance(arg, _LISTS):
        raise InvalidInputError(f"{path}: $contains takes one value, got {_describe(arg)}; "
                                "for several combine conditions with $and or $or")
    same = _equal(arg, path)
    text = isinstance(arg, str)

    def test(v: Any) -> bool:
        if isinstance(v, (list, tuple)):
            for x in v:
                if same(x):
                    return True
            return False
        return text and isinstance(v, str) and arg in v
    return test


def _like(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    """SQL LIKE: ``%`` any run of characters, ``_`` one character, ``\\`` escapes."""
    out, chars = [], iter(pattern)
    for c in chars:
        if c == "\\":
            out.append(re.escape(next(chars, "\\")))
        elif c == "%":
            out.append(".*")
        elif c == "_":
            out.append(".")
        else:
            out.append(re.escape(c))
    return re.compile("".join(out), re.DOTALL | (re.IGNORECASE if ignore_case else 0))
