"""Tests for s3_retriever.retrieval.filters: the metadata filter language, checked and matched."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3_retriever.errors import InvalidInputError
from s3_retriever.retrieval.filters import (
    FILTER_OPERATORS,
    LOGICAL_OPERATORS,
    CheckedFilter,
    check,
    matches,
)


# --------------------------------------------------------------------------- check
def test_check_accepts_every_form_and_copies():
    assert check(None) is None
    given = {"a": {"$in": [1, 2]}, "b": [3], "c": 4, "d": {"$ne": 5}, "e": {"$nin": (1,)},
             "f": {"$eq": None}, "g": {"$gt": 1, "$lte": 2.5}, "h": {"$between": ["a", "b"]},
             "i": {"$exists": False}, "j": {"$contains": "x"}, "k": {"$like": "a%"},
             "l": {"$ilike": "_b"}, "m": {"$not": {"$lt": "2024-01-01"}},
             "$and": [{"a": 1}], "$or": [{"a": 1}, {"b": {"$gte": 0}}], "$not": {"z": 1}}
    got = check(given)
    assert got == given and got is not given and isinstance(got, CheckedFilter)
    assert set(FILTER_OPERATORS) == {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$between",
                                     "$in", "$nin", "$exists", "$contains", "$like", "$ilike",
                                     "$not"}
    assert LOGICAL_OPERATORS == ("$and", "$or", "$not")


def test_an_empty_filter_is_no_filter():
    got = check({})
    assert got == {} and not got  # falsy: the engine skips filtering
    assert matches({"a": 1}, got) and matches({}, {})


@pytest.mark.parametrize("bad, message", [
    (["a"], "^filters must be a dict of metadata conditions, got list"),
    ("a", "got str"),
    ({1: "x"}, "the key 1 is not a str"),
    ({"a": {}}, r"filters\['a'\] is an empty condition"),
    ({"a": {"$regex": "x"}}, r"unknown operator '\$regex'; use \$eq, \$ne, \$gt, .*\$not$"),
    ({"a": {"b": 1}}, r"unknown operator 'b'.*to compare with a dict value use \{'\$eq'"),
    ({"a": {"$or": [1]}}, r"unknown operator '\$or'.*combines whole filters"),
    ({"a": {1: 2}}, "unknown operator 1"),
    ({"a": {"$in": 5}}, r"\$in takes a list of values, got int 5"),
    ({"a": {"$nin": "xy"}}, r"\$nin takes a list of values, got str"),
    ({"a": {"$in": [b"x"]}}, "bytes b'x' is not a metadata value"),
    ({"a": b"x"}, "is not a metadata value"),
    ({"a": {"$eq": {1: 2}}}, "is not a metadata value"),
    ({"a": {"$eq": {1, 2}}}, "set .* is not a metadata value"),
    ({"a": float("nan")}, "NaN equals nothing"),
    ({"a": {"$in": [1, float("nan")]}}, "NaN equals nothing"),
    ({"a": {"$gt": None}}, r"\$gt compares numbers, ISO 8601 dates or strings, got NoneType"),
    ({"a": {"$lt": True}}, r"\$lt compares .* got bool True"),
    ({"a": {"$gte": [1]}}, r"\$gte compares .* got list"),
    ({"a": {"$lte": float("nan")}}, r"\$lte compares .* got float nan"),
    ({"a": {"$between": [1]}}, r"\$between takes \[low, high\], got list \[1\]"),
    ({"a": {"$between": 1}}, r"\$between takes \[low, high\]"),
    ({"a": {"$between": [1, "2024-01-01"]}}, "not of one kind"),
    ({"a": {"$between": ["a", "2024-01-01"]}}, "not of one kind"),
    ({"a": {"$between": [None, 2]}}, r"\$gte compares .* got NoneType"),
    ({"a": {"$exists": 1}}, r"\$exists takes True or False, got int 1"),
    ({"a": {"$contains": ["x", "y"]}}, r"\$contains takes one value, got list .* \$and or \$or"),
    ({"a": {"$like": 5}}, r"\$like takes a str pattern, got int 5"),
    ({"a": {"$ilike": None}}, r"\$ilike takes a str pattern"),
    ({"a": {"$not": {}}}, r"filters\['a'\]\['\$not'\] is an empty condition"),
    ({"a": {"$not": {"$bad": 1}}}, r"unknown operator '\$bad'"),
    ({"$and": {"a": 1}}, r"filters\['\$and'\]: \$and takes a list of filters, got dict"),
    ({"$or": "a"}, r"\$or takes a list of filters, got str 'a'"),
    ({"$and": []}, r"\$and has an empty list; give at least one filter"),
    ({"$or": [{"a": 1}, 2]}, r"filters\['\$or'\]\[1\] must be a dict of metadata conditions"),
    ({"$or": [{"a": 1}, {}]}, r"filters\['\$or'\]\[1\] is an empty filter"),
    ({"$not": {}}, r"filters\['\$not'\] is an empty filter"),
    ({"$not": 3}, r"filters\['\$not'\] must be a dict"),
    ({"$not": []}, r"\$not has an empty list"),
    ({"$nor": [{"a": 1}]}, r"unknown logical operator '\$nor'; use \$and, \$or, \$not"),
    ({"$eq": 1}, r"unknown logical operator '\$eq'.*under a key"),
    ({"$or": [{"$and": [{"a": {"$in": 1}}]}]},
     r"^filters\['\$or'\]\[0\]\['\$and'\]\[0\]\['a'\]: \$in takes a list"),
])
def test_check_refuses_bad_filters_by_name(bad, message):
    with pytest.raises(InvalidInputError, match=message):
        check(bad)
    with pytest.raises(InvalidInputError, match=message):  # matches checks what it is given
        matches({"a": 1}, bad)


def test_a_checked_filter_pickles_and_copies_as_itself():
    checked = check({"$or": [{"a": 1}, {"d": {"$gt": "2024-01-01"}}]})
    for other in (pickle.loads(pickle.dumps(checked)), copy.copy(checked),
                  copy.deepcopy(checked)):
        assert isinstance(other, CheckedFilter) and other == checked
        assert matches({"d": "2024-01-01T00:01Z"}, other)
        assert not matches({"d": "2023-12-31"}, other)


def test_check_names_the_argument():
    with pytest.raises(InvalidInputError, match=r"^where\['a'\] is an empty condition"):
        check({"a": {}}, "where")


def test_check_refuses_absurd_nesting_cleanly():
    deep: dict = {"a": 1}
    for _ in range(100):
        deep = {"$not": deep}
    with pytest.raises(InvalidInputError, match="nested more than"):
        check(deep)
    deep = {"a": 1}
    for _ in range(100):
        deep = {"$not": {"$not": deep}}
    with pytest.raises(InvalidInputError, match="nested more than"):
        check(deep)


# --------------------------------------------------------------------------- matches
META = {"a": 1, "b": 3, "c": 4, "n": None, "f": 2.5, "t": True, "s": "Bach",
        "tags": ["rock", "jazz", 7], "l": [1, 2], "d": {"x": [1]}}


@pytest.mark.parametrize("cond, want", [
    ({}, True),
    # equality
    ({"a": 1}, True),
    ({"a": 2}, False),
    ({"a": 1.0}, True),                 # numbers by value
    ({"zz": 1}, False),                 # a plain value needs the key
    ({"n": None}, True),                # None is a value like any other
    ({"zz": None}, False),
    ({"t": True}, True),
    ({"t": 1}, False),                  # a bool is not a number ...
    ({"a": True}, False),               # ... nor a number a bool
    ({"l": [1, 2]}, False),             # a plain list means "any of" ...
    ({"l": {"$eq": [1, 2]}}, True),     # ... $eq compares with a list value
    ({"l": {"$eq": (1, 2.0)}}, True),
    ({"l": {"$eq": [2, 1]}}, False),
    ({"d": {"$eq": {"x": [1]}}}, True),
    ({"d": {"$eq": {"x": [True]}}}, False),
    ({"a": {"$eq": 1}}, True),
    ({"a": {"$eq": 2}}, False),
    ({"zz": {"$eq": None}}, False),     # $eq needs the key too
    ({"a": {"$ne": 2}}, True),
    ({"a": {"$ne": 1}}, False),
    ({"t": {"$ne": 1}}, True),
    ({"zz": {"$ne": 1}}, True),         # a missing key is "not equal"
    # membership
    ({"a": [1, 2]}, True),
    ({"a": [2, 3]}, False),
    ({"zz": [1]}, False),
    ({"a": {"$in": [1, 9]}}, True),
    ({"a": {"$in": {9}}}, False),
    ({"a": {"$in": []}}, False),
    ({"t": {"$in": [1]}}, False),
    ({"t": {"$in": [True]}}, True),
    ({"l": {"$in": [[1, 2], "x"]}}, True),
    ({"zz": {"$in": [None]}}, False),
    ({"n": {"$in": [None]}}, True),
    ({"a": {"$nin": [2, 3]}}, True),
    ({"a": {"$nin": (1,)}}, False),
    ({"zz": {"$nin": [1]}}, True),      # a missing key is in no list
    # order: numbers
    ({"a": {"$gt": 0}}, True),
    ({"a": {"$gt": 1}}, False),
    ({"a": {"$gte": 1}}, True),
    ({"f": {"$lt": 3}}, True),
    ({"f": {"$lte": 2.5}}, True),
    ({"f": {"$lt": 2.5}}, False),
    ({"b": {"$gt": 2, "$lt": 4}}, True),
    ({"b": {"$between": [3, 4]}}, True),
    ({"b": {"$between": [3.5, 4]}}, False),
    ({"b": {"$gt": float("inf")}}, False),
    ({"b": {"$gt": float("-inf")}}, True),
    # order across types: false, and its negation true
    ({"s": {"$gt": 1}}, False),
    ({"t": {"$gt": 0}}, False),         # a bool is not a number
    ({"n": {"$lt": 1}}, False),
    ({"zz": {"$lt": 1}}, False),
    ({"a": {"$gt": "0"}}, False),
    ({"s": {"$not": {"$gt": 1}}}, True),
    ({"zz": {"$not": {"$gt": 1}}}, True),
    # order: plain strings (code point order)
    ({"s": {"$gt": "A"}}, True),
    ({"s": {"$gt": "b"}}, False),       # "B" < "b"
    ({"s": {"$between": ["B", "C"]}}, True),
    # existence
    ({"n": {"$exists": True}}, True),   # present, even if None
    ({"zz": {"$exists": True}}, False),
    ({"zz": {"$exists": False}}, True),
    ({"a": {"$exists": False}}, False),
    # contains: a list element, or a substring
    ({"tags": {"$contains": "jazz"}}, True),
    ({"tags": {"$contains": "ja"}}, False),  # elements compare whole
    ({"tags": {"$contains": 7}}, True),
    ({"tags": {"$contains": 7.0}}, True),
    ({"l": {"$contains": True}}, False),
    ({"s": {"$contains": "ac"}}, True),
    ({"s": {"$contains": "x"}}, False),
    ({"a": {"$contains": 1}}, False),
    ({"zz": {"$contains": "x"}}, False),
    ({"d": {"$contains": "x"}}, False),
    # like
    ({"s": {"$like": "B%"}}, True),
    ({"s": {"$like": "b%"}}, False),
    ({"s": {"$ilike": "b%"}}, True),
    ({"s": {"$like": "B_ch"}}, True),
    ({"s": {"$like": "B_h"}}, False),
    ({"s": {"$like": "%a%"}}, True),
    ({"s": {"$like": "Bac"}}, False),   # the whole string
    ({"a": {"$like": "%"}}, False),
    # field-level $not
    ({"a": {"$not": 1}}, False),
    ({"a": {"$not": [2, 3]}}, True),
    ({"a": {"$not": {"$in": [1]}}}, False),
    ({"a": {"$not": {"$not": {"$eq": 1}}}}, True),
    # every operator of a key, and every key, must hold
    ({"a": {"$ne": 2, "$in": [1]}}, True),
    ({"a": {"$ne": 2, "$in": [5]}}, False),
    ({"a": 1, "b": 3, "c": 4}, True),
    ({"a": 1, "b": 3, "c": 5}, False),
    # logical operators, nested
    ({"$and": [{"a": 1}, {"b": 3}]}, True),
    ({"$and": [{"a": 1}, {"b": 4}]}, False),
    ({"$or": [{"a": 2}, {"b": 3}]}, True),
    ({"$or": [{"a": 2}, {"b": 4}]}, False),
    ({"$or": [{"a": 2}]}, False),
    ({"$not": {"a": 1}}, False),
    ({"$not": {"a": 2}}, True),
    ({"$not": {"a": 1, "b": 4}}, True),  # not (a and b)
    ({"$not": [{"a": 2}, {"b": 4}]}, True),  # a list: none of them (PGVector)
    ({"$not": [{"a": 2}, {"b": 3}]}, False),
    ({"$or": [{"a": 2}, {"$and": [{"b": 3}, {"$not": {"c": {"$gt": 4}}}]}]}, True),
    ({"$or": [{"a": 2}, {"$and": [{"b": 3}, {"$not": {"c": {"$gte": 4}}}]}]}, False),
    ({"a": 1, "$or": [{"zz": 1}, {"s": "Bach"}]}, True),  # keys and operators side by side
    ({"a": 2, "$or": [{"zz": 1}, {"s": "Bach"}]}, False),
])
def test_matches(cond, want):
    assert matches(META, check(cond)) is want
    assert matches(META, cond) is want  # an unchecked filter is checked on the way


def test_matches_does_not_mix_up_types():
    assert not matches({"a": "1"}, {"a": 1})
    assert not matches({"a": [1, 2]}, {"a": 1})
    assert matches({"a": [1, 2]}, {"a": {"$eq": [1, 2]}})
    assert not matches({"a": 0}, {"a": False}) and not matches({"a": False}, {"a": 0})
    assert matches({"a": (1, 2)}, {"a": {"$eq": [1, 2]}})  # a tuple before a save is a list


# --------------------------------------------------------------------------- dates
@pytest.mark.parametrize("value, op, operand, want", [
    ("2024-05-01", "$gt", "2024-04-30", True),
    ("2024-05-01", "$gt", "2024-05-01", False),
    ("2024-05-01", "$gte", "2024-05-01", True),
    ("2024-05-01T10:00:00", "$gt", "2024-05-01", True),   # a date is its midnight ...
    ("2024-05-01T00:00:00", "$gte", "2024-05-01", True),
    ("2024-05-01T10:00:00", "$lte", "2024-05-01", False),  # ... so later that day is after it
    ("2024-05-01T10:00", "$lt", "2024-05-01T10:00:01", True),
    ("2024-05-01 10:00:00", "$gt", "2024-05-01T09:59:59.999", True),
    ("2024-05-01T10:00:00.5", "$gt", "2024-05-01T10:00:00,25", True),
    ("2024-05-01T10:00:00Z", "$gte", "2024-05-01T10:00:00", True),   # no offset is UTC
    ("2024-05-01T10:00:00+02:00", "$lt", "2024-05-01T09:00:00Z", True),
    ("2024-05-01T10:00:00+0200", "$lt", "2024-05-01T09:00:00", True),
    ("2024-05-01T10:00:00-05", "$gt", "2024-05-01T14:00:00Z", True),
    ("2021-03-04", "$between", ["2021-01-01", "2021-12-31T23:59:59"], True),
    ("2022-01-01", "$between", ["2021-01-01", "2021-12-31T23:59:59"], False),
    # these string comparisons would give the opposite answer
    ("2024-05-01T10:00:00", "$gt", "2024-05-01T09:00:00.5+00:00", True),
    ("2024-05-01", "$lt", "2024-05-01 00:00:01", True),
    # not dates: the comparison is false, whatever the operator
    ("2024-13-01", "$lt", "2025-01-01", False),
    ("2024-02-30", "$gt", "2000-01-01", False),
    ("2024-05-01T25:00", "$gt", "2000-01-01", False),
    ("01/05/2024", "$gt", "2000-01-01", False),
    ("2024", "$gt", "2000-01-01", False),
    (20240501, "$gt", "2000-01-01", False),
    (None, "$gt", "2000-01-01", False),
    (["2024-05-01"], "$gt", "2000-01-01", False),
])
def test_dates_compare_as_dates(value, op, operand, want):
    assert matches({"d": value}, check({"d": {op: operand}})) is want
    assert matches({"d": value}, check({"d": {"$not": {op: operand}}})) is (not want)


def test_equality_of_dates_is_exact():
    # $eq / $in compare strings as written; a range compares instants
    meta = {"d": "2024-05-01T00:00:00"}
    assert not matches(meta, {"d": "2024-05-01"})
    assert matches(meta, {"d": {"$gte": "2024-05-01", "$lte": "2024-05-01"}})


# --------------------------------------------------------------------------- like
@pytest.mark.parametrize("pattern, text, want", [
    ("100\\%", "100%", True),
    ("100\\%", "1000", False),
    ("a\\_b", "a_b", True),
    ("a\\_b", "axb", False),
    ("a\\\\b", "a\\b", True),
    ("a.c", "abc", False),         # regex characters are literal
    ("(x)*%", "(x)*yz", True),
    ("(x)*", "(x)yz", False),
    ("%", "", True),
    ("_", "", False),
    ("a%", "a\nb", True),          # % spans newlines
    ("end\\", "end\\", True),      # a trailing backslash is itself
])
def test_like_is_sql_like(pattern, text, want):
    assert matches({"s": text}, {"s": {"$like": pattern}}) is want


def test_ilike_ignores_case():
    assert matches({"s": "ÉCOLE Normale"}, {"s": {"$ilike": "école%"}})
    assert not matches({"s": "ÉCOLE Normale"}, {"s": {"$like": "école%"}})


# --------------------------------------------------------------------------- laws
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from([0.0, 1.0, 2.5]) |
    st.sampled_from(["a", "b", "2024-05-01", "2024-05-01T10:00:00Z", "2023-01-01"]),
    lambda inner: st.lists(inner, max_size=3), max_leaves=4)
scalars = st.integers(-3, 3) | st.sampled_from([1.5, "a", "b", "2024-01-01", "2024-05-01"])
conditions = (
    json_values |
    st.builds(lambda op, v: {op: v}, st.sampled_from(["$eq", "$ne", "$contains"]), scalars) |
    st.builds(lambda op, v: {op: v}, st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), scalars) |
    st.builds(lambda op, v: {op: v}, st.sampled_from(["$in", "$nin"]), st.lists(json_values)) |
    st.builds(lambda v: {"$exists": v}, st.booleans()) |
    st.builds(lambda p: {"$like": p}, st.sampled_from(["a%", "%", "_", "2024%"])))
leaf = st.builds(lambda k, c: {k: c}, st.sampled_from(["x", "y"]), conditions)
filters = st.recursive(leaf, lambda inner: (
    st.builds(lambda op, fs: {op: fs}, st.sampled_from(["$and", "$or"]),
              st.lists(inner, min_size=1, max_size=3)) |
    st.builds(lambda f: {"$not": f}, inner)), max_leaves=5)
metas = st.dictionaries(st.sampled_from(["x", "y"]), json_values, max_size=2)


@settings(max_examples=300, deadline=None)
@given(f=filters, g=filters, meta=metas)
def test_logic_laws(f, g, meta):
    m = matches(meta, check(f))
    assert m is matches(json.loads(json.dumps(meta)), f)  # the same after a save and load
    assert matches(meta, {"$not": f}) is (not m)
    assert matches(meta, {"$and": [f, g]}) is (m and matches(meta, g))
    assert matches(meta, {"$or": [f, g]}) is (m or matches(meta, g))
    assert matches(meta, {"$not": [f, g]}) is not matches(meta, {"$or": [f, g]})


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(["x", "y"]), cond=conditions, meta=metas)
def test_negated_operators_are_negations(key, cond, meta):
    assert matches(meta, {key: {"$not": cond}}) is not matches(meta, {key: cond})
    if isinstance(cond, dict) and "$eq" in cond:
        assert matches(meta, {key: {"$ne": cond["$eq"]}}) is not matches(meta, {key: cond})
    if isinstance(cond, dict) and "$in" in cond:
        assert matches(meta, {key: {"$nin": cond["$in"]}}) is not matches(meta, {key: cond})


@settings(max_examples=200, deadline=None)
@given(value=st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=6) |
                          st.binary(max_size=2) | st.sampled_from(["$in", "$or", "$not", "$gt"]),
                          lambda inner: st.lists(inner, max_size=3) |
                          st.dictionaries(st.sampled_from(["$in", "$or", "$not", "$gt", "$eq",
                                                           "$like", "x"]), inner, max_size=3),
                          max_leaves=8),
       meta=metas)
def test_anything_is_refused_by_name_or_matched(value, meta):
    try:
        checked = check(value)
    except InvalidInputError:
        return
    assert checked is None or matches(meta, checked) in (True, False)
