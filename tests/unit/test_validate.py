"""Tests for s3_retriever.validate: each argument check on its own, then bad input to the
public API: a named exception from the library's own check, a message that says what to do,
and an index left exactly as it was (named cases, then properties)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from s3_retriever import (
    EmptyIndexError,
    InvalidInputError,
    S3Error,
    S3Index,
    S3Settings,
    UnknownDocumentError,
)
from s3_retriever import validate as v
from tests.helpers import TEXTS, tiny_lm, tiny_saes


# ------------------------------------------------------------------ the checks themselves
def test_is_int():
    assert v.is_int(3) and v.is_int(-1) and v.is_int(np.int64(2)) and v.is_int(np.uint8(0))
    assert not any(v.is_int(x) for x in (True, False, 2.0, "3", None, np.float32(1)))


def test_text():
    assert v.text("hi ", "q") == "hi "
    for bad, message in [(None, "q must be a str, got NoneType"), (b"x", "got bytes"),
                         ("", "q is empty"), (" \n\t", "q is empty or whitespace only"),
                         ("ab\ud800", "q holds a lone surrogate at character 2")]:
        with pytest.raises(InvalidInputError, match=message):
            v.text(bad, "q")


def test_positive_int_and_optional():
    assert v.positive_int(1, "k") == 1 and v.positive_int(10**12, "k") == 10**12
    for bad in (0, -1, True, False, 2.0, "3", None):
        with pytest.raises(InvalidInputError, match=f"k must be a positive integer, got "
                                                    f"{re.escape(repr(bad))}$"):
            v.positive_int(bad, "k")
    assert v.optional_positive_int(None, "k") is None
    assert v.optional_positive_int(4, "k") == 4
    with pytest.raises(InvalidInputError, match="k must be a positive integer"):
        v.optional_positive_int(0, "k")


def test_fraction():
    assert v.fraction(0, "w") == 0.0 and v.fraction(1, "w") == 1.0
    assert v.fraction(0.25, "w") == 0.25 and isinstance(v.fraction(1, "w"), float)
    for bad in (-0.01, 1.01, math.nan, math.inf, True, "0.5", None):
        with pytest.raises(InvalidInputError, match="w must be a number in \\[0, 1\\]"):
            v.fraction(bad, "w")


def test_choice():
    assert v.choice("b", ["a", "b"], "mode") == "b"
    assert v.choice("a", (x for x in "ab"), "mode") == "a"  # any iterable of options
    for bad in ("c", None, 1, ["a"]):
        with pytest.raises(InvalidInputError, match=r"mode must be one of \('a', 'b'\)"):
            v.choice(bad, ["a", "b"], "mode")


def test_doc_id_and_id_list():
    assert v.doc_id("a", "id") == "a"
    with pytest.raises(InvalidInputError, match="leave ids=None for generated ids"):
        v.doc_id(None, "id")
    with pytest.raises(InvalidInputError, match="id is empty"):
        v.doc_id(" ", "id")
    with pytest.raises(InvalidInputError, match="lone surrogate"):
        v.doc_id("\udcff", "id")
    assert v.id_list("a", "ids") == ["a"]  # a single str is one id
    assert v.id_list(("a", "b"), "ids") == ["a", "b"]
    assert v.id_list(iter(["c"]), "ids") == ["c"] and v.id_list([], "ids") == []
    for bad in (None, b"ab", {"a": 1}, 5):
        with pytest.raises(InvalidInputError, match="ids must be a list of document ids"):
            v.id_list(bad, "ids")
    with pytest.raises(InvalidInputError, match=r"ids\[1\] must be a str, got int"):
        v.id_list(["a", 2], "ids")


def test_one_per():
    assert v.one_per(None, 3, "ids", "str") == [None, None, None]
    assert v.one_per(("a", "b"), 2, "ids", "str") == ["a", "b"]
    with pytest.raises(InvalidInputError, match="3 ids for 2 texts"):
        v.one_per(["a", "b", "c"], 2, "ids", "str")
    for bad in ("ab", b"ab", {"a": 1}, 7, iter(["a"])):
        with pytest.raises(InvalidInputError, match=r"ids must be a list of str \(one per"):
            v.one_per(bad, 2, "ids", "str")


def test_metadata():
    assert v.metadata(None, "m") == {}
    given = {"a": [1, {"b": None}], "c": "é"}
    got = v.metadata(given, "m")
    assert got == given and got is not given
    for bad, message in [([("a", 1)], "m must be a dict, got list"),
                         ({1: "a"}, "m has a key that is not a str: 1"),
                         ({"a": object()}, "m is not JSON-serialisable"),
                         ({"a": math.nan}, "m is not JSON-serialisable")]:
        with pytest.raises(InvalidInputError, match=message):
            v.metadata(bad, "m")


@pytest.mark.parametrize("bad", [{"a": "\ud800"}, {"\udcff": 1}])
def test_metadata_refuses_lone_surrogates(bad):
    with pytest.raises(InvalidInputError, match="m "):
        v.metadata(bad, "m")


# ------------------------------------------------------------------ through the public API


@pytest.fixture(scope="module")
def index(lm):
    idx = S3Index(tiny_lm(lm.tokenizer), tiny_saes(), S3Settings(chunk_tokens=16,
                                                                 context_tokens=4))
    idx.add_texts(TEXTS, metadatas=[{"topic": "science"}, {"topic": "nature"}, {}],
                  ids=["curie", "amazon", "bach"], show_progress=False)
    return idx


def _state(index: S3Index) -> tuple:
    return (len(index), index.index.n_tokens,
            tuple((d.doc_id, d.deleted, tuple(sorted(d.metadata.items())))
                  for d in index.index.docs))


@pytest.mark.parametrize("call, message", [
    (lambda i: i.add_texts(["ok", "bad \ud800 surrogate"]), "text 1 holds a lone surrogate"),
    (lambda i: i.search("where \udcff"), "query holds a lone surrogate at character 6"),
    (lambda i: i.add_texts(["fine"], ids=[None]), r"ids\[0\] must be a str, got NoneType"),
    (lambda i: i.add_texts(["fine"], ids=[""]), r"ids\[0\] is empty"),
    (lambda i: i.add_texts(["fine"], metadatas=[["a", 1]]), r"metadatas\[0\] must be a dict"),
    (lambda i: i.add_texts(["fine"], metadatas=[{1: "a"}]), "key that is not a str"),
    (lambda i: i.add_texts(["fine"], metadatas={"a": 1}), "metadatas must be a list of dicts"),
    (lambda i: i.add_texts("one string"), "not str; wrap a single text"),
    (lambda i: i.add_texts([b"bytes"]), "text 0 must be a str, got bytes"),
    (lambda i: i.add_texts(["  "]), "text 0 is empty"),
    (lambda i: i.add_texts(["x"], ids=["curie"]), "duplicate document ids"),
    (lambda i: i.search("q", budget_tokens=True), "budget_tokens must be a positive integer"),
    (lambda i: i.search("q", k=0), "k must be a positive integer, got 0"),
    (lambda i: i.search("q", k=2.5), "k must be a positive integer"),
    (lambda i: i.search("q", filters={"topic": {"$in": 5}}), r"\$in takes a list of values"),
    (lambda i: i.search("q", filters={"topic": {"$regex": "x"}}), "unknown operator"),
    (lambda i: i.search("q", filters=["topic"]), "filters must be a dict"),
    (lambda i: i.search("q", doc_ids="curie"), "not a single string"),
    (lambda i: i.search("q", doc_ids=[None]), r"doc_ids\[0\] must be a str"),
    (lambda i: i.search("q", mode="dense"), "mode must be one of"),
    (lambda i: i.search("q", fusion_weight=2), "fusion_weight must be a number in"),
    (lambda i: i.search("   "), "query is empty"),
    (lambda i: i.search(None), "query must be a str"),
    (lambda i: i.answer("q", max_new_tokens=0), "max_new_tokens must be a positive"),
    (lambda i: i.delete(None), "ids must be a list of document ids"),
    (lambda i: i.delete([None]), r"ids\[0\] must be a str"),
    (lambda i: i.delete(5), "ids must be a list of document ids"),
    (lambda i: i.add_documents("text"), "add_documents takes a list of documents"),
    (lambda i: i.add_documents(5), "add_documents takes a list of documents"),
    (lambda i: i.add_documents([{"text": "x", "metadata": [1]}]),
     r"metadatas\[0\] must be a dict"),
    (lambda i: i.add_documents([{"page_content": None}]), "text 0 must be a str"),
])
def test_bad_input_is_named_and_changes_nothing(index, call, message):
    before = _state(index)
    with pytest.raises(InvalidInputError, match=message):
        call(index)
    assert _state(index) == before


def test_unknown_ids_and_empty_index(index, lm):
    before = _state(index)
    with pytest.raises(UnknownDocumentError, match=r"unknown document ids: \['nope'\]"):
        index.delete(["curie", "nope"])
    assert _state(index) == before and isinstance(UnknownDocumentError("x"), KeyError)
    with pytest.raises(UnknownDocumentError, match="no document 'nope'"):
        index.get_document("nope")
    empty = S3Index(index.lm, index.saes, S3Settings(chunk_tokens=16))
    with pytest.raises(EmptyIndexError, match="add documents before searching"):
        empty.search("q")


def test_settings_are_validated_like_code(index):
    for bad, message in [({"chunk_tokens": True}, "chunk_tokens"), ({"mode": 3}, "mode"),
                         ({"span_tokens": -1}, "span_tokens"), ({"rrf_k": 0}, "rrf_k"),
                         ({"nope": 1}, "unknown settings")]:
        with pytest.raises(InvalidInputError, match=message):
            S3Settings.from_dict(bad)
    settings = S3Settings(chunk_tokens=None)
    S3Index(index.lm, index.saes, settings)
    assert settings.chunk_tokens is None  # the caller's object is never changed


# ------------------------------------------------------------------ properties
values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10) | st.floats(allow_nan=True) |
    st.text(max_size=12) | st.binary(max_size=4) | st.sampled_from(["\ud800", "$in", "curie"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(max_size=4) | st.sampled_from(["$in", "$eq", "$nin", "topic"]), inner,
        max_size=3),
    max_leaves=6)

PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@PROPERTY
@given(query=values | st.text(max_size=20), k=values, budget=values, filters=values,
       doc_ids=values, mode=values)
def test_search_with_arbitrary_arguments(index, query, k, budget, filters, doc_ids, mode):
    before = _state(index)
    try:
        spans = index.search(query, k=k, budget_tokens=budget, filters=filters,
                             doc_ids=doc_ids, mode=mode)
    except S3Error:
        pass
    else:
        assert [s.score for s in spans] == sorted((s.score for s in spans), reverse=True)
    assert _state(index) == before


@PROPERTY
@given(texts=values, ids=values, metadatas=values)
def test_add_with_arbitrary_arguments(index, texts, ids, metadatas):
    before = _state(index)
    try:
        added = index.add_texts(texts, ids=ids, metadatas=metadatas, show_progress=False)
    except S3Error:
        assert _state(index) == before
    else:
        index.delete(added)  # keep the shared index as it was
        assert len(index) == before[0]


@PROPERTY
@given(ids=values)
def test_delete_with_arbitrary_arguments(index, ids):
    live = {"curie", "amazon", "bach"}
    assume(not (isinstance(ids, str) and ids in live)
           and not (isinstance(ids, list) and live & {i for i in ids if isinstance(i, str)}))
    before = _state(index)
    try:
        index.delete(ids)
    except S3Error:
        pass
    else:
        assert ids == []
    assert _state(index) == before
