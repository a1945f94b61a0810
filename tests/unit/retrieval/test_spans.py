"""Tests for s3_retriever.retrieval.spans: Span, span growth, span offsets and keys, and
reading order."""

from __future__ import annotations

import random

import numpy as np
import pytest

from s3_retriever.retrieval.spans import (
    Span,
    grow_spans,
    grown_span_keys,
    order_for_prompt,
    spans_for_document,
)
from s3_retriever.retrieval.units import sentence_token_counts, token_sentence_map
from s3_retriever.text.sentences import split_sentences
from tests.helpers import random_docs

# --------------------------------------------------------------------------- Span


def test_span_fields():
    s = Span("d", 3, 8, "hello", 1.5, start_token=2, end_token=4)
    assert s.id == "d:3-8" and s.n_tokens == 2
    assert Span("d", 0, 1, "h", 0.0).n_tokens is None
    d = s.to_dict()
    assert d["id"] == "d:3-8" and d["n_tokens"] == 2 and d["metadata"] == {}
    meta = {"a": 1}
    s1, s2 = Span("d", 0, 1, "h", 0.0, metadata=meta), Span("d", 0, 1, "h", 0.0)
    meta["a"] = 2
    assert s1.metadata == {"a": 1} and s2.metadata == {} and s2.metadata is not Span(
        "e", 0, 1, "h", 0.0
    ).metadata
    assert hash(s1) == hash(Span("d", 0, 1, "h", 0.0, metadata={"b": 2}))
    with pytest.raises(ValueError):
        Span("d", 5, 3, "", 0.0)
    with pytest.raises(ValueError):
        Span("d", 0, 1, "h", 0.0, start_token=1)


# --------------------------------------------------------------------------- growth


def S(n: int) -> list[tuple[int, int]]:
    return [(10 * i, 10 * i + 5) for i in range(n)]


def test_grow_direction_and_limit():
    scores = np.array([0.1, 0.3, 0.9, 0.5, 0.2, 0.0])
    toks = np.full(6, 10)
    # seed 2; right (0.5) beats left (0.3); then left 0.3 beats right 0.2
    assert grow_spans(scores, S(6), toks, span_tokens=30, max_spans=1) == [(1, 4, 0.9)]
    assert grow_spans(scores, S(6), toks, span_tokens=20, max_spans=1) == [(2, 4, 0.9)]
    assert grow_spans(scores, S(6), toks, span_tokens=29, max_spans=1) == [(2, 4, 0.9)]


def test_grow_closed_side_continues_other_and_big_seed():
    scores = np.array([0.0, 0.8, 0.9, 0.1, 0.1])
    toks = np.array([5, 50, 10, 5, 5])
    # the better left neighbour (50 tokens) does not fit: grow right instead
    assert grow_spans(scores, S(5), toks, span_tokens=20, max_spans=1) == [(2, 5, 0.9)]
    # a seed larger than span_tokens is kept whole, alone
    toks2 = np.array([5, 5, 100, 5, 5])
    assert grow_spans(scores, S(5), toks2, span_tokens=20, max_spans=1) == [(2, 3, 0.9)]


def test_grow_no_overlap_all_sentences_and_order():
    rng = np.random.default_rng(1)
    scores = rng.random(40)
    toks = rng.integers(1, 30, size=40)
    spans = grow_spans(scores, S(40), toks, span_tokens=50)
    used = np.zeros(40, dtype=int)
    for lo, hi, sc in spans:
        used[lo:hi] += 1
        assert hi - lo == 1 or toks[lo:hi].sum() <= 50
        assert scores[lo:hi].max() >= sc - 1e-12 and sc in scores[lo:hi]
    assert (used == 1).all()
    seeds = [sc for _, _, sc in spans]
    assert seeds == sorted(seeds, reverse=True)


def test_grow_max_spans_min_score_sentence_only_and_ties():
    scores = np.array([0.5, -np.inf, 0.5, 0.2, 0.7])
    toks = np.full(5, 4)
    assert grow_spans(scores, S(5), toks, span_tokens=0) == [
        (4, 5, 0.7), (0, 1, 0.5), (2, 3, 0.5), (3, 4, 0.2)
    ]
    assert grow_spans(scores, S(5), toks, span_tokens=0, max_spans=2) == [(4, 5, 0.7), (0, 1, 0.5)]
    assert grow_spans(scores, S(5), toks, span_tokens=0, min_score=0.5) == [
        (4, 5, 0.7), (0, 1, 0.5), (2, 3, 0.5)
    ]
    # equal neighbours: grow left first
    eq = np.array([0.3, 0.9, 0.3])
    assert grow_spans(eq, S(3), np.full(3, 1), span_tokens=2) == [(0, 2, 0.9), (2, 3, 0.3)]
    assert grow_spans(np.zeros(0), [], np.zeros(0, dtype=int)) == []
    with pytest.raises(ValueError):
        grow_spans(eq, S(2), np.full(3, 1))
    with pytest.raises(ValueError):
        grow_spans(eq, S(3), np.full(3, 1), max_spans=0)


def test_spans_for_document_offsets_and_tokens():
    text = "Alpha beta. Gamma delta. Eps zeta."
    sents = split_sentences(text)
    tc = np.array([[0, 5], [5, 10], [10, 11], [11, 17], [17, 23], [23, 24],
                   [24, 28], [28, 33], [33, 34]])
    ts = token_sentence_map(tc, sents)
    sc = np.array([0.2, 0.9, 0.1])
    grown = grow_spans(sc, sents, sentence_token_counts(ts, 3), span_tokens=6)
    spans = spans_for_document("d", text, sents, ts, grown, s3_scores=sc, metadata={"k": 1})
    assert [(s.text, s.start_token, s.end_token) for s in spans] == [
        ("Alpha beta. Gamma delta.", 0, 6), ("Eps zeta.", 6, 9)
    ]
    for s in spans:
        assert text[s.start_char:s.end_char] == s.text
    assert spans[0].s3_score == 0.9 and spans[0].metadata == {"k": 1}
    assert spans[0].bm25_score is None
    assert spans[0].metadata is not spans[1].metadata


def test_spans_for_document_scores_tokenless_spans_and_range():
    text = "One. Two. Three."
    sents = split_sentences(text)
    ts = np.array([-1, 0, 0, 2, 2, -1])  # "Two." has no tokens
    bm = np.array([0.1, 0.7, 0.3])
    spans = spans_for_document("d", text, sents, ts, [(0, 2, 0.4), (1, 2, 0.2), (2, 3, 0.1)],
                               s3_scores=np.array([0.4, 0.2, 0.1]), bm25_scores=bm)
    assert [s.text for s in spans] == ["One. Two.", "Two.", "Three."]
    # the max of each array over the span's sentences
    assert [s.bm25_score for s in spans] == [0.7, 0.7, 0.3]
    assert [s.s3_score for s in spans] == [0.4, 0.2, 0.1]
    assert [(s.start_token, s.end_token) for s in spans] == [(1, 3), (None, None), (3, 5)]
    assert [s.score for s in spans] == [0.4, 0.2, 0.1]
    with pytest.raises(ValueError, match="out of range"):
        spans_for_document("d", text, sents, ts, [(2, 4, 0.1)])
    with pytest.raises(ValueError, match="out of range"):
        spans_for_document("d", text, sents, ts, [(1, 1, 0.1)])


# --------------------------------------------------------------------------- keys and order


def test_grown_span_keys_example_and_errors():
    starts, counts = grown_span_keys([(0, 4), (5, 9)], np.array([0, 0, 1]),
                                     [(1, 2, 0.5), (0, 2, 0.1)])
    assert starts.tolist() == [5, 0] and counts.tolist() == [1, 3]
    starts, counts = grown_span_keys([(0, 4)], np.array([0]), [])
    assert starts.shape == counts.shape == (0,)
    with pytest.raises(ValueError, match="out of range"):
        grown_span_keys([(0, 4), (5, 9)], np.array([0, 1]), [(1, 3, 0.5)])
    with pytest.raises(ValueError, match="out of range"):
        grown_span_keys([(0, 4), (5, 9)], np.array([0, 1]), [(1, 1, 0.5)])


@pytest.mark.parametrize("seed", range(30))
def test_grown_span_keys_match_the_spans_built(seed):
    """The keys packing decides on are exactly those of the spans later built."""
    rng = random.Random(seed)
    for doc_id, text, sentences, ts, grown in random_docs(rng, 4):
        made = spans_for_document(doc_id, text, sentences, ts, grown)
        starts, counts = grown_span_keys(sentences, ts, grown)
        assert starts.tolist() == [s.start_char for s in made]
        assert counts.tolist() == [-1 if s.n_tokens is None else s.n_tokens for s in made]


def test_order_for_prompt():
    s = [
        Span("d", 10, 16, "Three.", 0.2, start_token=4, end_token=6),
        Span("e", 0, 3, "abc", 0.8),
        Span("d", 0, 4, "One.", 0.5, start_token=0, end_token=2),
        Span("d", 5, 9, "Two.", 0.9, start_token=2, end_token=4),
    ]
    # documents in first-appearance order, spans by start_char; scores play no part
    assert [x.id for x in order_for_prompt(s)] == ["d:0-4", "d:5-9", "d:10-16", "e:0-3"]
    assert [x.id for x in order_for_prompt(s, {"e": 0, "d": 1})] == [
        "e:0-3", "d:0-4", "d:5-9", "d:10-16"]
    assert [x.id for x in order_for_prompt(s, ["e", "d"])][0] == "e:0-3"
    # a document missing from doc_order goes after the given ones
    assert [x.doc_id for x in order_for_prompt(s, ["e"])] == ["e", "d", "d", "d"]
    assert order_for_prompt([]) == []
    # the same start: the shorter span first
    a, b = Span("d", 0, 9, "x" * 9, 1.0), Span("d", 0, 4, "x" * 4, 0.1)
    assert order_for_prompt([a, b]) == [b, a]


def test_spans_do_not_grow_across_a_paragraph_break():
    scores, tokens = np.array([0.2, 0.9, 0.5, 0.8]), np.array([3, 3, 3, 3])
    sentences = [(0, 1)] * 4
    assert grow_spans(scores, sentences, tokens, span_tokens=12) == [(0, 4, 0.9)]
    walls = np.array([False, True, False])  # a blank line between sentences 1 and 2
    assert grow_spans(scores, sentences, tokens, span_tokens=12, breaks=walls) == \
        [(0, 2, 0.9), (2, 4, 0.8)]
    with pytest.raises(ValueError, match="one entry per gap"):
        grow_spans(scores, sentences, tokens, span_tokens=12, breaks=np.array([True]))
