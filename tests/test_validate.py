"""Bad input to the public API: a named exception from the library's own check, a message
that says what to do, and an index left exactly as it was (named cases, then properties)."""

from __future__ import annotations

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


def test_filter_checks_and_matching():
    assert v.filters(None) is None
    cond = v.filters({"a": {"$in": [1, 2]}, "b": [3], "c": 4, "d": {"$ne": 5}})
    assert v.matches({"a": 1, "b": 3, "c": 4}, cond)
    assert not v.matches({"a": 9, "b": 3, "c": 4}, cond)
    assert not v.matches({"a": 1, "b": 3, "c": 4, "d": 5}, cond)
    with pytest.raises(InvalidInputError, match="empty condition"):
        v.filters({"a": {}})
