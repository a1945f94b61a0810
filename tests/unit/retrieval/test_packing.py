"""Tests for s3_retriever.retrieval.packing: greedy_fill, pack_spans, select_for_packing and
best_spans."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from s3_retriever.errors import InvalidInputError
from s3_retriever.index.documents import DocRecord
from s3_retriever.retrieval import packing
from s3_retriever.retrieval.packing import best_spans, greedy_fill, pack_spans, select_for_packing
from s3_retriever.retrieval.spans import (
    Span,
    grow_spans,
    grown_span_keys,
    spans_for_document,
)
from s3_retriever.retrieval.units import SentenceUnits
from s3_retriever.text.sentences import split_sentences
from tests.helpers import random_docs

# --------------------------------------------------------------------------- greedy_fill


def _reference_fill(lengths, budget, k=None):
    """The packing rule as a plain loop: walk in order, keep what fits, stop at k items or
    when nothing of the budget is left."""
    if budget is None:
        return list(range(len(lengths)))[:k]
    chosen, left = [], budget
    for i, n in enumerate(lengths):
        if left <= 0 or (k is not None and len(chosen) >= k):
            break
        if n <= left:
            chosen.append(i)
            left -= n
    return chosen


def test_greedy_fill_examples():
    assert greedy_fill([50, 80, 40, 10], 100).tolist() == [0, 2, 3]  # 80 skipped, walk goes on
    assert greedy_fill([50, 80, 40], 100, k=1).tolist() == [0]
    assert greedy_fill([5, 6], None, k=1).tolist() == [0]
    assert greedy_fill([5, 6, 7], None).tolist() == [0, 1, 2]
    assert greedy_fill([5, 6], None, k=9).tolist() == [0, 1]
    assert greedy_fill([200, 300], 100).tolist() == []  # nothing fits
    assert greedy_fill([], 100).tolist() == [] and greedy_fill([], None).tolist() == []
    # an exhausted budget ends the walk, even before an empty item
    assert greedy_fill([60, 40, 0], 100).tolist() == [0, 1]
    assert greedy_fill([60, 0, 40], 100).tolist() == [0, 1, 2]
    out = greedy_fill(np.array([3, 4], np.int32), 10)
    assert out.dtype == np.int64


@pytest.mark.parametrize("seed", range(25))
def test_greedy_fill_matches_a_plain_loop(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        lengths = rng.integers(0, 60, size=int(rng.integers(0, 30))).tolist()
        budget = None if rng.random() < 0.15 else int(rng.integers(1, 250))
        k = None if rng.random() < 0.5 else int(rng.integers(1, 8))
        got = greedy_fill(lengths, budget, k=k)
        assert got.tolist() == _reference_fill(lengths, budget, k), (lengths, budget, k)
        if budget is not None:
            assert sum(lengths[i] for i in got) <= budget


# --------------------------------------------------------------------------- pack_spans


def sp(doc: str, start: int, score: float, ntok: int) -> Span:
    return Span(doc, start, start + 5, "x" * 5, score, start_token=start, end_token=start + ntok)


def test_pack_by_k_and_ties():
    spans = [sp("a", 10, 0.5, 10), sp("b", 0, 0.9, 10), sp("a", 0, 0.5, 10), sp("b", 20, 0.5, 10)]
    # score desc; ties by document (first appearance: a before b), then start_char
    assert [s.id for s in pack_spans(spans, k=3)] == ["b:0-5", "a:0-5", "a:10-15"]
    assert [s.id for s in pack_spans(spans)] == ["b:0-5", "a:0-5", "a:10-15", "b:20-25"]
    assert pack_spans([], k=3) == []


def test_pack_nan_scores_rank_last():
    spans = [sp("a", 0, float("nan"), 5), sp("b", 0, -3.0, 5), sp("c", 0, 1.0, 5)]
    assert [s.doc_id for s in pack_spans(spans)] == ["c", "b", "a"]


def test_pack_budget_skips_spans_that_do_not_fit():
    spans = [sp("a", 0, 0.9, 60), sp("a", 10, 0.8, 50), sp("b", 0, 0.7, 30), sp("c", 0, 0.1, 10)]
    got = pack_spans(spans, budget_tokens=100)
    assert [s.id for s in got] == ["a:0-5", "b:0-5", "c:0-5"]
    assert sum(s.n_tokens for s in got) <= 100
    assert [s.id for s in pack_spans(spans, budget_tokens=100, k=2)] == ["a:0-5", "b:0-5"]
    assert [s.id for s in pack_spans(spans, budget_tokens=10)] == ["c:0-5"]


def test_pack_errors():
    spans = [sp("a", 0, 0.9, 60), sp("b", 0, 0.7, 30)]
    with pytest.raises(ValueError, match="k must be"):
        pack_spans(spans, k=0)
    with pytest.raises(ValueError, match="budget_tokens must be"):
        pack_spans(spans, budget_tokens=0)
    with pytest.raises(InvalidInputError, match=r"budget_tokens=20 .*smallest.*30 tokens"):
        pack_spans(spans, budget_tokens=20)
    with pytest.raises(ValueError, match="token bounds"):
        pack_spans([Span("a", 0, 1, "h", 1.0)], budget_tokens=20)


# --------------------------------------------------------------------------- select_for_packing


def test_select_for_packing_example_and_edge_cases():
    got = select_for_packing(np.array([0.2, 0.9, 0.5]), np.array([0, 0, 1]),
                             np.array([0, 10, 0]), np.array([50, 80, 40]), budget_tokens=100)
    assert got.tolist() == [1]
    empty = np.zeros(0)
    assert select_for_packing(empty, empty, empty, empty, k=2).tolist() == []
    # unknown token counts, or a budget below the smallest span: pack_spans would raise
    assert select_for_packing(np.array([1.0]), np.array([0]), np.array([0]), np.array([-1]),
                              budget_tokens=5) is None
    assert select_for_packing(np.array([1.0, 0.5]), np.array([0, 1]), np.array([0, 0]),
                              np.array([9, 7]), budget_tokens=5) is None
    # indices come back ascending, not in rank order
    assert select_for_packing(np.array([0.1, 0.9, 0.5]), np.array([0, 1, 2]),
                              np.array([0, 0, 0]), np.array([1, 1, 1]), k=2).tolist() == [1, 2]


@pytest.mark.parametrize("seed", range(40))
def test_select_for_packing_matches_pack_spans(seed):
    rng = random.Random(seed)
    docs = random_docs(rng, rng.randint(1, 6))
    spans, score, rank, start, ntok = [], [], [], [], []
    r = 0
    for doc_id, text, sentences, ts, grown in docs:
        made = spans_for_document(doc_id, text, sentences, ts, grown)
        starts, counts = grown_span_keys(sentences, ts, grown)
        spans += made
        score += [g[2] for g in grown]
        rank += [r] * len(grown)
        start += starts.tolist()
        ntok += counts.tolist()
        r += bool(grown)
    for k, budget in [(2, None), (None, rng.randint(1, 30)), (3, rng.randint(1, 30))]:
        chosen = select_for_packing(np.array(score), np.array(rank, dtype=np.int64),
                                    np.array(start, dtype=np.int64),
                                    np.array(ntok, dtype=np.int64), k=k, budget_tokens=budget)
        try:
            want = pack_spans(spans, k=k, budget_tokens=budget)
        except ValueError:
            assert chosen is None  # pack_spans would raise: the caller builds everything
            continue
        assert chosen is not None
        assert chosen.tolist() == sorted(chosen.tolist())
        got = pack_spans([spans[i] for i in chosen], k=k, budget_tokens=budget)
        assert [s.id for s in got] == [s.id for s in want]
        assert len(chosen) == len(want)


# --------------------------------------------------------------------------- best_spans

TEXTS = ["Alpha one. Alpha two. Alpha three. Alpha four.",
         "Beta one. Beta two.",
         "Gone one. Gone two.",
         "Gamma one. Gamma two. Gamma three."]


def _table():
    """A document table (row 2 deleted) with word tokens, and its SentenceUnits."""
    docs, token_chars = [], []
    for i, text in enumerate(TEXTS):
        bounds = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        docs.append(DocRecord(f"d{i}", text, {"row": i}, token_start=0, token_end=len(bounds),
                              sentences=split_sentences(text), deleted=i == 2))
        token_chars.append(np.array(bounds))
    units = SentenceUnits()
    units.add(docs, token_chars)
    return docs, units


def _all_spans(docs, units, rows, ranked, s3, bm, span_tokens):
    """Every grown span of every row, built (what best_spans avoids doing)."""
    out, pos = [], 0
    for r in rows:
        a, b = units.doc_range(r)
        sl = slice(pos, pos + b - a)
        grown = grow_spans(ranked[sl], docs[r].sentences, units.tokens[a:b],
                           span_tokens=span_tokens)
        out += spans_for_document(docs[r].doc_id, docs[r].text, docs[r].sentences,
                                  units.token_unit(r), grown, s3_scores=s3[sl],
                                  bm25_scores=bm[sl], metadata=docs[r].metadata)
        pos += b - a
    return out


@pytest.mark.parametrize("seed", range(12))
def test_best_spans_equal_packing_every_span(seed):
    docs, units = _table()
    rng = np.random.default_rng(seed)
    rows = [r for r in (3, 0, 1) if rng.random() < 0.9] or [1]
    n = len(units.of_rows(rows))
    s3, bm = rng.random(n), rng.random(n)
    ranked = np.round(0.5 * s3 + 0.5 * bm, 1)  # rounded: ties between documents happen
    span_tokens = int(rng.choice([0, 4, 6, 100]))
    every = _all_spans(docs, units, rows, ranked, s3, bm, span_tokens)
    for k, budget in [(2, None), (None, 9), (3, 12), (None, 100)]:
        got = best_spans(docs, units, rows, ranked, s3_scores=s3, bm25_scores=bm,
                         span_tokens=span_tokens, k=k, budget_tokens=budget)
        want = pack_spans(every, k=k, budget_tokens=budget)
        assert [s.to_dict() for s in got] == [s.to_dict() for s in want]
        for s in got:
            assert s.text == TEXTS[int(s.doc_id[1:])][s.start_char:s.end_char]
            assert s.doc_id != "d2" and s.metadata == {"row": int(s.doc_id[1:])}


def test_best_spans_without_component_scores_and_with_an_impossible_budget():
    docs, units = _table()
    rows = [0, 1]
    ranked = np.arange(len(units.of_rows(rows)), dtype=float)
    got = best_spans(docs, units, rows, ranked, s3_scores=None, bm25_scores=None,
                     span_tokens=0, k=2)
    assert [s.text for s in got] == ["Beta two.", "Beta one."]
    assert all(s.s3_score is None and s.bm25_score is None for s in got)
    # every sentence is 2 tokens: a budget of 1 fits none, and packing says so
    with pytest.raises(InvalidInputError, match="smaller than the smallest"):
        best_spans(docs, units, rows, ranked, s3_scores=None, bm25_scores=None,
                   span_tokens=0, budget_tokens=1)
    assert best_spans(docs, units, [], np.zeros(0), s3_scores=None, bm25_scores=None,
                      span_tokens=0, k=3) == []


def _many_docs(rng: np.random.Generator, n_docs: int):
    """A bigger table: documents of 1-8 sentences of 1-14 words, one word one token."""
    docs, token_chars = [], []
    for i in range(n_docs):
        sentences = [" ".join(f"w{i}x{j}" for j in range(int(rng.integers(1, 15)))) + "."
                     for _ in range(int(rng.integers(1, 9)))]
        text = " ".join(sentences)
        bounds = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        docs.append(DocRecord(f"d{i}", text, {}, token_start=0, token_end=len(bounds),
                              sentences=split_sentences(text)))
        token_chars.append(np.array(bounds))
    units = SentenceUnits()
    units.add(docs, token_chars)
    return docs, units


@pytest.mark.parametrize("seed", range(20))
def test_best_spans_grows_few_documents_and_still_packs_exactly(seed, monkeypatch):
    """With many candidate documents, only those that can place a span are grown, and the
    result equals growing and packing every document (ties, skips and all)."""
    rng = np.random.default_rng(100 + seed)
    docs, units = _many_docs(rng, 300)
    rows = [int(r) for r in rng.permutation(300)[:250]]
    n = len(units.of_rows(rows))
    s3, bm = rng.random(n), rng.random(n)
    ranked = np.round(rng.random(n) ** 3, int(rng.choice([2, 6])))  # skewed, some ties
    grown_docs = []
    real_grow = packing.grow_spans
    monkeypatch.setattr(packing, "grow_spans",
                        lambda *a, **kw: grown_docs.append(1) or real_grow(*a, **kw))
    span_tokens = int(rng.choice([0, 10, 30]))
    every = _all_spans(docs, units, rows, ranked, s3, bm, span_tokens)
    for k, budget in [(4, None), (None, 200), (5, 300), (None, 1000)]:
        grown_docs.clear()
        got = best_spans(docs, units, rows, ranked, s3_scores=s3, bm25_scores=bm,
                         span_tokens=span_tokens, k=k, budget_tokens=budget)
        want = pack_spans(every, k=k, budget_tokens=budget)
        assert [s.to_dict() for s in got] == [s.to_dict() for s in want]
        if budget is None:
            assert len(grown_docs) < 50  # k spans need a few documents, not 250
