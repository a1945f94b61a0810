"""Tests for s3_retriever.retrieval.filters: checking metadata filters and matching them."""

from __future__ import annotations

import pytest

from s3_retriever.errors import InvalidInputError
from s3_retriever.retrieval.filters import FILTER_OPERATORS, check, matches


def test_check_accepts_every_form_and_copies():
    assert check(None) is None
    given = {"a": {"$in": [1, 2]}, "b": [3], "c": 4, "d": {"$ne": 5}, "e": {"$nin": (1,)},
             "f": {"$eq": None}}
    got = check(given)
    assert got == given and got is not given
    assert FILTER_OPERATORS == ("$eq", "$ne", "$in", "$nin")


@pytest.mark.parametrize("bad, message", [
    (["a"], "filters must be a dict of metadata conditions, got list"),
    ("a", "got str"),
    ({1: "x"}, "the key 1 is not a str"),
    ({"a": {}}, r"filters\['a'\] is an empty condition"),
    ({"a": {"$regex": "x"}}, r"unknown operator '\$regex'; use \$eq, \$ne, \$in, \$nin"),
    ({"a": {"$in": 5}}, r"\$in takes a list of values, got int 5"),
    ({"a": {"$nin": "xy"}}, r"\$nin takes a list of values, got str"),
])
def test_check_refuses_bad_filters_by_name(bad, message):
    with pytest.raises(InvalidInputError, match=message):
        check(bad)


def test_check_names_the_argument():
    with pytest.raises(InvalidInputError, match=r"^where\['a'\] is an empty condition"):
        check({"a": {}}, "where")


META = {"a": 1, "b": 3, "c": 4, "n": None}


@pytest.mark.parametrize("cond, want", [
    ({}, True),
    ({"a": 1}, True),
    ({"a": 2}, False),
    ({"zz": 1}, False),                 # a plain value needs the key
    ({"n": None}, True),                # None is a value like any other
    ({"zz": None}, False),
    ({"a": [1, 2]}, True),              # a list: any of
    ({"a": [2, 3]}, False),
    ({"zz": [1]}, False),
    ({"a": {"$eq": 1}}, True),
    ({"a": {"$eq": 2}}, False),
    ({"zz": {"$eq": None}}, False),     # $eq needs the key too
    ({"a": {"$ne": 2}}, True),
    ({"a": {"$ne": 1}}, False),
    ({"zz": {"$ne": 1}}, True),         # a missing key is "not equal"
    ({"a": {"$in": [1, 9]}}, True),
    ({"a": {"$in": {9}}}, False),
    ({"zz": {"$in": [None]}}, False),
    ({"a": {"$nin": [2, 3]}}, True),
    ({"a": {"$nin": (1,)}}, False),
    ({"zz": {"$nin": [1]}}, True),      # a missing key is in no list
    ({"a": {"$ne": 2, "$in": [1]}}, True),  # every operator of a key must hold
    ({"a": {"$ne": 2, "$in": [5]}}, False),
    ({"a": 1, "b": 3, "c": 4}, True),   # every key must hold
    ({"a": 1, "b": 3, "c": 5}, False),
])
def test_matches(cond, want):
    assert matches(META, check(cond)) is want


def test_matches_does_not_mix_up_types():
    assert not matches({"a": "1"}, {"a": 1})
    assert not matches({"a": [1, 2]}, {"a": 1})
    assert matches({"a": [1, 2]}, {"a": {"$eq": [1, 2]}})
