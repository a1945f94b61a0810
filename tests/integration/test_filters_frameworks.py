"""The metadata filter language through the real adapters, on the real model.

LangChain dict filters (``filter=``, fixed or per call) and LlamaIndex ``MetadataFilters``
(AND / OR / NOT, nested, every operator) must return exactly the documents that match, and
refuse what they cannot express. ``k`` exceeds the sentence count, so every candidate
document is returned and the set of document ids is the filter's answer.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from langchain_s3 import S3Retriever as LangChainRetriever
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)
from llama_index.core.vector_stores.utils import build_metadata_filter_fn
from llama_index.retrievers.s3 import S3Retriever as LlamaRetriever
from llama_index.retrievers.s3 import to_engine_filters

from s3_retriever import InvalidInputError, S3Index
from s3_retriever.retrieval.filters import matches

DOCS = {
    "bach": ("Johann Sebastian Bach composed the Brandenburg Concertos in Leipzig.",
             {"year": 1721, "topic": "music", "date": "1721-03-24", "tags": ["baroque", "organ"]}),
    "beatles": ("The Beatles recorded the album Abbey Road in London.",
                {"year": 1969, "topic": "music", "date": "1969-09-26T10:00:00",
                 "tags": ["rock"]}),
    "curie": ("Marie Curie won the Nobel Prize in Chemistry.",
              {"year": 1911, "topic": "science", "date": "1911-12-10", "tags": []}),
    "webb": ("The James Webb telescope observes very distant galaxies.",
             {"year": 2021, "topic": "science", "date": "2021-12-25T12:20:00Z",
              "tags": ["space"]}),
    "amazon": ("The Amazon river flows through the Brazilian rainforest.",
               {"year": "2019", "topic": "nature", "date": "2019-08-01"}),  # a str year
    "spotify": ("A streaming service recommends songs from listening habits.",
                {"year": 2021, "topic": "music", "date": "2021-03-04", "tags": ["pop"]}),
}
EVERY = set(DOCS)
QUERY = "Tell me about music, science, rivers and telescopes."
K = 20  # more than the sentences indexed: every candidate document comes back


@pytest.fixture(scope="module")
def index(lm):
    index = S3Index.from_model(lm)
    index.add_texts([t for t, _ in DOCS.values()], [m for _, m in DOCS.values()], list(DOCS),
                    show_progress=False)
    return index


def test_unfiltered_search_returns_every_document(index):
    assert {s.doc_id for s in index.search(QUERY, k=K)} == EVERY


# --------------------------------------------------------------------------- LangChain
LANGCHAIN_CASES = [
    ({"$or": [{"topic": "science"}, {"year": {"$lt": 1800}}]}, {"curie", "webb", "bach"}),
    ({"$and": [{"topic": "music"}, {"date": {"$gte": "1969-09-26"}}]}, {"beatles", "spotify"}),
    ({"year": {"$gt": 2000}}, {"webb", "spotify"}),  # the str "2019" is no number
    ({"year": {"$not": {"$gt": 2000}}}, {"bach", "beatles", "curie", "amazon"}),
    ({"$not": {"topic": "music"}}, {"curie", "webb", "amazon"}),
    ({"tags": {"$contains": "rock"}}, {"beatles"}),
    ({"date": {"$between": ["1900-01-01", "2020-01-01"]}}, {"curie", "beatles", "amazon"}),
    # 12:00Z: as strings "2021-12-25T12:20:00Z" would sort before it
    ({"date": {"$lt": "2021-12-25T13:00:00+01:00"}}, EVERY - {"webb"}),
    ({"$or": [{"$and": [{"topic": "science"}, {"year": {"$gte": 2000}}]},
              {"$not": {"tags": {"$exists": True}}}]}, {"webb", "amazon"}),
    ({"year": {"$ne": 1721}, "topic": {"$in": ["music", "nature"]}},
     {"beatles", "amazon", "spotify"}),
    ({"topic": {"$like": "%i%"}, "$not": [{"year": 1911}, {"tags": {"$contains": "pop"}}]},
     {"bach", "beatles", "webb"}),
    ({"year": 1721, "topic": "science"}, set()),
]


def _lc_ids(docs):
    return {d.metadata["doc_id"] for d in docs}


@pytest.mark.parametrize("flt, want", LANGCHAIN_CASES)
def test_langchain_filters_select_exactly_the_matching_documents(index, flt, want):
    per_call = LangChainRetriever(index=index, k=K).invoke(QUERY, filter=flt)
    fixed = LangChainRetriever(index=index, k=K, filter=flt).invoke(QUERY)
    assert _lc_ids(per_call) == _lc_ids(fixed) == want
    for d in per_call:  # and each result is its document's
        assert matches(DOCS[d.metadata["doc_id"]][1], flt)


def test_langchain_async_filter_and_per_call_override(index):
    r = LangChainRetriever(index=index, k=K, filter={"topic": "music"})
    flt, want = LANGCHAIN_CASES[0]
    assert _lc_ids(asyncio.run(r.ainvoke(QUERY, filter=flt))) == want
    assert _lc_ids(r.invoke(QUERY)) == {"bach", "beatles", "spotify"}
    assert _lc_ids(r.invoke(QUERY, filter=None)) == EVERY


@pytest.mark.parametrize("flt, message", [
    ({"year": {"$regex": "19"}}, r"unknown operator '\$regex'"),
    ({"$nor": [{"topic": "music"}]}, r"unknown logical operator '\$nor'"),
    ({"$and": {"topic": "music"}}, r"\$and takes a list of filters"),
    ({"$or": []}, r"\$or has an empty list"),
    ({"$or": [{"topic": "music"}, {}]}, r"\['\$or'\]\[1\] is an empty filter"),
    ({"year": {"$in": 1969}}, r"\$in takes a list of values"),
    ({"date": {"$gt": None}}, r"\$gt compares numbers, ISO 8601 dates or strings"),
    ({"tags": {"$contains": ["rock", "pop"]}}, r"\$contains takes one value"),
])
def test_langchain_refuses_what_it_cannot_express(index, flt, message):
    with pytest.raises(InvalidInputError, match=message):
        LangChainRetriever(index=index, k=K).invoke(QUERY, filter=flt)
    with pytest.raises(ValueError, match=message):  # a field: refused at construction
        LangChainRetriever(index=index, k=K, filter=flt)


# --------------------------------------------------------------------------- LlamaIndex
def F(key, value, op=FilterOperator.EQ):  # noqa: N802 (reads like the class it builds)
    return MetadataFilter(key=key, value=value, operator=op)


def G(*filters, condition=FilterCondition.AND):  # noqa: N802
    return MetadataFilters(filters=list(filters), condition=condition)


OR, NOT = FilterCondition.OR, FilterCondition.NOT
Op = FilterOperator
LLAMA_CASES = [
    (G(F("topic", "science"), F("year", 1800, Op.LT), condition=OR), {"curie", "webb", "bach"}),
    (G(F("topic", "music"), G(F("date", "2000-01-01", Op.GTE),
                              F("tags", "baroque", Op.CONTAINS), condition=OR)),
     {"bach", "spotify"}),
    (G(F("topic", "music"), condition=NOT), {"curie", "webb", "amazon"}),
    (G(F("topic", "music"), F("year", 2000, Op.GT), condition=NOT), {"curie", "amazon"}),
    (G(F("topic", ["science", "nature"], Op.IN), F("year", [1911], Op.NIN)), {"webb", "amazon"}),
    (G(F("year", 1721, Op.NE)), EVERY - {"bach"}),
    (G(F("year", 1911, Op.GTE), F("year", 2021, Op.LT)), {"curie", "beatles"}),
    (G(F("date", "1969-09-26", Op.GT)), {"beatles", "webb", "spotify", "amazon"}),
    (G(F("date", "1969-09-26", Op.LTE)), {"bach", "curie"}),
    (G(F("tags", ["rock", "space"], Op.ANY)), {"beatles", "webb"}),
    (G(F("tags", ["baroque", "organ"], Op.ALL)), {"bach"}),
    (G(F("tags", ["baroque", "rock"], Op.ALL)), set()),
    (G(F("tags", None, Op.IS_EMPTY)), {"curie", "amazon"}),
    (G(F("topic", "sci", Op.TEXT_MATCH)), {"curie", "webb"}),
    (G(F("topic", "MUS", Op.TEXT_MATCH)), set()),
    (G(F("topic", "MUS", Op.TEXT_MATCH_INSENSITIVE)), {"bach", "beatles", "spotify"}),
    (G(G(F("topic", "science"), G(F("year", 2000, Op.LT), condition=NOT)),
       G(F("topic", "music"), G(F("year", 1721), F("tags", "pop", Op.CONTAINS), condition=OR)),
       condition=OR), {"webb", "bach", "spotify"}),
    ({"$or": [{"topic": "nature"}, {"year": {"$lte": 1721}}]}, {"amazon", "bach"}),  # engine
]


def _li_ids(hits):
    return {h.node.source_node.node_id for h in hits}


@pytest.mark.parametrize("filters, want", LLAMA_CASES)
def test_llamaindex_filters_select_exactly_the_matching_documents(index, filters, want):
    hits = LlamaRetriever(index, similarity_top_k=K, filters=filters).retrieve(QUERY)
    assert _li_ids(hits) == want


def test_llamaindex_async_and_persisted_nested_filters(index, lm, tmp_path):
    filters, want = LLAMA_CASES[-2]  # three levels deep
    r = LlamaRetriever(index, similarity_top_k=K, filters=filters)
    assert _li_ids(asyncio.run(r.aretrieve(QUERY))) == want
    r.persist(tmp_path / "store")
    loaded = LlamaRetriever.from_persist_dir(tmp_path / "store", model=lm)
    assert loaded.filters == filters
    assert _li_ids(loaded.retrieve(QUERY)) == want


@pytest.mark.parametrize("filters, message", [
    (G(F("tags", ["rock", "pop"], Op.CONTAINS)), "CONTAINS .* takes one value.*ANY or ALL"),
    (G(F("topic", "music", Op.IN)), "IN .* needs a list of values, got 'music'"),
    (G(F("tags", [], Op.ANY)), "ANY .* needs at least one value"),
    (G(F("year", 1969, Op.TEXT_MATCH)), "TEXT_MATCH .* matches a str, got 1969"),
    (G(F("year", [1969, 2021], Op.GT)), r"GT \('>'\) takes one value"),
    (G(F("year", None, Op.LTE)), "LTE .* compares with a number, an ISO 8601 date or a str"),
    (G(F("topic", "music"), G(condition=OR), condition=OR), "nested MetadataFilters .* no filters"),
    (MetadataFilters.model_construct(filters=[F("topic", "music")], condition="xor"),
     "unknown filter condition 'xor'"),
    (F("topic", "music"), "got a single MetadataFilter: wrap it"),
])
def test_llamaindex_refuses_what_it_cannot_express(index, filters, message):
    with pytest.raises(InvalidInputError, match=message):
        LlamaRetriever(index, similarity_top_k=K, filters=filters)


def test_llamaindex_engine_filters_are_checked_before_searching(index):
    with pytest.raises(InvalidInputError, match=r"unknown operator '\$regex'"):
        LlamaRetriever(index, similarity_top_k=K, filters={"year": {"$regex": "19"}})
    r = LlamaRetriever(index, similarity_top_k=K)
    with pytest.raises(InvalidInputError, match=r"unknown operator '\$regex'"):
        r.retrieve(QUERY, filters={"year": {"$regex": "19"}})
    with pytest.raises(InvalidInputError, match=r"unknown operator '\$regex'"):
        r.filters = {"year": {"$regex": "19"}}
    assert r.filters is None  # a refused filter leaves the retriever as it was


# --------------------------------------------------------------------------- LlamaIndex's meaning
# The translation must mean what LlamaIndex's own SimpleVectorStore means, wherever that store
# gives an answer (it raises on mixed types and nested groups, and compares bools as ints and
# dates as strings; those cases are left out).
_WORDS = ["music", "science", "sci", "mu", "2021-03-04", "1969-09-26", "2019-08-01"]
_VALUES = st.integers(1700, 2030) | st.sampled_from([2.5, 1969.0]) | st.sampled_from(_WORDS)
_LISTS = st.lists(st.sampled_from(_WORDS), max_size=3) | st.lists(st.integers(1, 3), max_size=3)
_META = st.dictionaries(st.sampled_from(["a", "b"]), _VALUES | _LISTS | st.none(), max_size=2)
_OPS = [op for op in FilterOperator]


def _is_date(v):
    return isinstance(v, str) and v[:1].isdigit()


@st.composite
def _leaf_filters(draw):
    op = draw(st.sampled_from(_OPS))
    if op in (Op.IN, Op.NIN, Op.ANY, Op.ALL):
        value = draw(st.lists(st.sampled_from(_WORDS), min_size=1, max_size=3) |
                     st.lists(st.integers(1, 3), min_size=1, max_size=3))
    elif op == Op.IS_EMPTY:
        value = None
    elif op in (Op.TEXT_MATCH, Op.TEXT_MATCH_INSENSITIVE):
        value = draw(st.sampled_from(_WORDS))
    else:
        value = draw(_VALUES)
    return F(draw(st.sampled_from(["a", "b"])), value, op)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(leaves=st.lists(_leaf_filters(), min_size=1, max_size=3),
       condition=st.sampled_from([FilterCondition.AND, OR, NOT]), meta=_META)
def test_translation_means_what_simple_vector_store_means(leaves, condition, meta):
    for f in leaves:
        v = meta.get(f.key)
        if f.operator in (Op.GT, Op.GTE, Op.LT, Op.LTE) and v is not None:
            assume(type(v) is type(f.value) or (isinstance(v, (int, float)) and
                                                isinstance(f.value, (int, float))))
            assume(not isinstance(v, str) or _is_date(v) == _is_date(f.value))
    filters = G(*leaves, condition=condition)
    try:
        theirs = build_metadata_filter_fn(lambda _: meta, filters)("node")
    except TypeError:  # e.g. TEXT_MATCH on a number, CONTAINS on an int
        assume(False)
    assert matches(meta, to_engine_filters(filters)) is bool(theirs)
