"""Tests for s3_retriever.config: S3Settings validation and dict round trip, and the chunk
and span size policies."""

from __future__ import annotations

import dataclasses
import math

import pytest

from s3_retriever.config import (
    FUSIONS,
    MODES,
    SCORERS,
    S3Settings,
    chunk_tokens_for,
    span_tokens_for,
)
from s3_retriever.errors import InvalidInputError

GOOD = {
    "chunk_tokens": [None, 1, 512],
    "context_tokens": [0, 1, 64],
    "scorer": list(SCORERS),
    "heads": [None, [], [["layers.1", 0]], [("layers.1", 0, 0.5)],
              [["layers.1", 0, 1.0, [0.0] * 16]]],
    "query_mean": [True, False],
    "max_df_fraction": [1e-6, 0.01, 1.0, 1],
    "smooth_window": [1, 3],
    "span_tokens": ["auto", 0, 1, 96],
    "mode": list(MODES),
    "fusion": list(FUSIONS),
    "fusion_weight": [0, 0.0, 0.5, 1, 1.0],
    "rrf_k": [1, 60],
}

BAD = {
    "chunk_tokens": [0, -1, 1.5, "512", True],
    "context_tokens": [-1, 1.5, "4", None, True],
    "scorer": ["magic", None, 1, ["attention"]],
    "heads": ["layers.1", [["layers.1"]], [1], ["layers.1", 0], {"layers.1": 0}],
    "query_mean": [1, 0, "yes", None],
    "max_df_fraction": [0, 0.0, -0.1, 1.5, math.nan, "0.1", None, True],
    "smooth_window": [0, -3, 2.0, None, True],
    "span_tokens": [-1, "big", 1.5, None, True],
    "mode": ["dense", None, 0],
    "fusion": ["learned", "max", None],
    "fusion_weight": [-0.1, 1.1, 2, math.nan, math.inf, "0.5", None, True, False],
    "rrf_k": [0, -1, 60.0, None, True],
}


def test_defaults_validate():
    s = S3Settings()
    assert s.validate() is s
    assert (s.scorer, s.mode, s.fusion, s.span_tokens) == ("attention", "hybrid", "linear", "auto")
    assert S3Settings.from_dict({}) == s


@pytest.mark.parametrize("name, value", [(n, v) for n, vs in GOOD.items() for v in vs])
def test_each_field_accepts_good_values(name, value):
    s = S3Settings(**{name: value})
    assert s.validate() is s and getattr(s, name) == value
    assert S3Settings.from_dict({name: value}) == s


@pytest.mark.parametrize("name, value", [(n, v) for n, vs in BAD.items() for v in vs])
def test_each_field_refuses_bad_values_by_name(name, value):
    with pytest.raises(InvalidInputError, match=name):
        S3Settings(**{name: value}).validate()
    with pytest.raises(InvalidInputError, match=name):
        S3Settings.from_dict({name: value})


@pytest.mark.parametrize("name, value", [("span_tokens", False), ("span_tokens", 0.0),
                                         ("context_tokens", False)])
def test_bools_and_floats_are_not_taken_for_zero(name, value):
    with pytest.raises(InvalidInputError, match=name):
        S3Settings(**{name: value}).validate()


def test_messages_say_what_to_pass():
    with pytest.raises(InvalidInputError, match=r"fusion must be one of \('linear', 'rrf'\), "
                                                r"got 'learned'"):
        S3Settings(fusion="learned").validate()
    with pytest.raises(InvalidInputError, match=r"max_df_fraction must be in \(0, 1\], got 0"):
        S3Settings(max_df_fraction=0).validate()
    with pytest.raises(InvalidInputError, match="query_mean must be True or False, got 1"):
        S3Settings(query_mean=1).validate()
    with pytest.raises(InvalidInputError,
                       match=r"span_tokens \(or 0 or 'auto'\) must be a positive integer"):
        S3Settings(span_tokens=-1).validate()


def test_dict_round_trip_and_unknown_names():
    s = S3Settings(chunk_tokens=32, heads=[["layers.1", 2, 0.5]], span_tokens=0,
                   fusion="rrf", rrf_k=10)
    d = s.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(S3Settings)}
    assert S3Settings.from_dict(d) == s
    d["heads"][0][1] = 3  # a copy: editing the dict leaves the settings alone
    assert s.heads == [["layers.1", 2, 0.5]]
    with pytest.raises(InvalidInputError, match=r"unknown settings \['colour', 'k'\]; known: "):
        S3Settings.from_dict({"colour": 1, "k": 2, "mode": "s3"})
    with pytest.raises(InvalidInputError, match="unknown settings"):
        S3Settings.from_dict({1: 2})
    with pytest.raises(InvalidInputError, match="settings must be a dict, got list"):
        S3Settings.from_dict([("mode", "s3")])


@pytest.mark.parametrize("budget, want", [
    (None, 48),      # k only: the minimum
    (10, 48),        # a tenth, clamped up
    (480, 48),
    (500, 50),
    (1000, 100),
    (1024, 102),
    (1920, 192),
    (1930, 192),     # clamped down
    (10**9, 192),
])
def test_auto_span_tokens_follow_the_budget(budget, want):
    assert span_tokens_for("auto", budget) == want


def test_a_fixed_span_size_ignores_the_budget():
    assert [span_tokens_for(0, b) for b in (None, 10, 4096)] == [0, 0, 0]
    assert [span_tokens_for(77, b) for b in (None, 10, 4096)] == [77, 77, 77]


def test_chunk_tokens_for_device():
    assert chunk_tokens_for("cuda") == 2048
    assert chunk_tokens_for("cpu") == 512 and chunk_tokens_for("mps") == 512
