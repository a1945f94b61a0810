"""Tests for s3_retriever.retrieval.units: token scores -> sentence unit scores, SentenceUnits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from s3_retriever.index.documents import DocRecord
from s3_retriever.retrieval.units import (
    SentenceUnits,
    sentence_max_scores,
    sentence_scores,
    sentence_token_counts,
    smooth,
    token_sentence_map,
)
from s3_retriever.text.sentences import split_sentences


def test_smooth_values():
    x = np.array([0.0, 3.0, 0.0, 0.0, 6.0])
    assert smooth(x, 1).tolist() == x.tolist()
    assert np.allclose(smooth(x, 3), [1.5, 1.0, 1.0, 2.0, 3.0])
    # even window: extra neighbour on the right
    assert np.allclose(smooth(x, 2), [1.5, 1.5, 0.0, 3.0, 6.0])
    # a window wider than the array averages everything available
    assert np.allclose(smooth(np.array([1.0, 2.0]), 9), [1.5, 1.5])
    assert smooth(np.array([]), 3).shape == (0,)
    with pytest.raises(ValueError):
        smooth(x, 0)
    with pytest.raises(ValueError, match="1-D"):
        smooth(np.zeros((2, 2)), 3)


def test_smooth_window_one_is_a_copy_and_matches_a_plain_loop():
    x = np.array([1, 2, 3], dtype=np.int64)
    out = smooth(x, 1)
    assert out.dtype == np.float64
    out[0] = 99.0
    assert x[0] == 1  # a copy, never the caller's array
    rng = np.random.default_rng(3)
    for _ in range(20):
        v = rng.normal(size=rng.integers(1, 30))
        w = int(rng.integers(1, 8))
        left, right = (w - 1) // 2, w // 2
        want = [v[max(0, i - left):i + right + 1].mean() for i in range(len(v))]
        np.testing.assert_allclose(smooth(v, w), want, rtol=1e-12, atol=1e-12)


def test_token_sentence_map():
    text = "Ab cd. Ef gh.  "
    sents = split_sentences(text)
    assert sents == [(0, 6), (7, 13)]
    # tokens: BOS(0,0), "Ab", " cd", ".", " Ef", " gh", ".", "  " (trailing whitespace)
    tc = np.array([[0, 0], [0, 2], [2, 5], [5, 6], [6, 9], [9, 12], [12, 13], [13, 15]])
    assert token_sentence_map(tc, sents).tolist() == [-1, 0, 0, 0, 1, 1, 1, -1]
    assert token_sentence_map(tc, []).tolist() == [-1] * 8
    assert token_sentence_map(np.zeros((0, 2), dtype=int), sents).shape == (0,)
    with pytest.raises(ValueError):
        token_sentence_map(np.zeros(3), sents)


def test_sentence_scores_and_counts():
    s = np.array([1.0, 3.0, 2.0, 9.0, 4.0])
    ts = np.array([0, 0, 2, -1, 2])
    # the max per sentence; -1 tokens ignored (9.0 never counts); no tokens: -inf
    assert sentence_scores(s, ts, 3).tolist() == [3.0, -math.inf, 4.0]
    assert sentence_token_counts(ts, 3).tolist() == [2, 0, 2]
    assert sentence_token_counts(np.array([-1, -1]), 2).tolist() == [0, 0]
    with pytest.raises(ValueError):
        sentence_scores(s, ts[:3], 3)
    with pytest.raises(ValueError):
        sentence_token_counts(ts, 2)


def test_sentence_max_scores_smooths_then_takes_the_max():
    scores = np.array([0.0, 3.0, 0.0, 0.0, 6.0, 1.0])
    ts = np.array([0, 0, 1, 1, -1, 3])
    # smoothed (window 3): [1.5, 1.0, 1.0, 2.0, 7/3, 3.5]; token 4 belongs to no sentence
    got = sentence_max_scores(scores, ts, 4, window=3)
    np.testing.assert_allclose(got, [1.5, 2.0, 0.0, 3.5])
    # a sentence without tokens scores 0, never -inf
    assert np.isfinite(got).all() and got[2] == 0.0
    # window 1 is the plain per-sentence max
    np.testing.assert_array_equal(sentence_max_scores(scores, ts, 4, window=1),
                                  [3.0, 0.0, 0.0, 1.0])


# --------------------------------------------------------------------------- SentenceUnits
A = "Alpha beta. Gamma delta."
C = "Rivers flow. Deltas form. Seas rise."


def _docs():
    """Three document rows: a (2 sentences), b (deleted), c (3 sentences, the middle one
    without tokens); with each one's token char bounds."""
    a = DocRecord("a", A, token_start=0, token_end=6, sentences=split_sentences(A))
    b = DocRecord("b", "Deleted text here.", token_start=6, token_end=8,
                  sentences=[(0, 18)], deleted=True)
    c = DocRecord("c", C, token_start=8, token_end=12, sentences=split_sentences(C))
    tc_a = np.array([[0, 5], [5, 10], [10, 11], [11, 17], [17, 23], [23, 24]])
    tc_b = np.array([[0, 7], [7, 18]])
    tc_c = np.array([[0, 6], [6, 12], [25, 30], [30, 36]])  # nothing in "Deltas form."
    return [a, b, c], [tc_a, tc_b, tc_c]


def test_sentence_units_layout():
    docs, tcs = _docs()
    units = SentenceUnits()
    units.add(docs, tcs)
    assert units.doc.tolist() == [0, 0, 2, 2, 2]
    assert units.bounds.tolist() == [[0, 11], [12, 24], [0, 12], [13, 25], [26, 36]]
    assert units.tokens.tolist() == [3, 3, 2, 1, 2]  # a token-less sentence counts as 1
    assert [units.doc_range(r) for r in range(3)] == [(0, 2), (2, 2), (2, 5)]
    assert units.token_unit(0).tolist() == [0, 0, 0, 1, 1, 1]
    assert units.token_unit(1).shape == (0,)  # deleted: no units
    assert units.token_unit(2).tolist() == [0, 0, 2, 2]
    assert units.of_rows([2, 0]).tolist() == [2, 3, 4, 0, 1]
    assert units.of_rows([1]).tolist() == [] and units.of_rows([]).tolist() == []


def test_sentence_units_bm25_covers_live_units_only():
    docs, tcs = _docs()
    units = SentenceUnits()
    units.add(docs, tcs)
    bm = units.bm25_scores("gamma")
    assert bm.shape == (5,) and bm.dtype == np.float64
    assert np.flatnonzero(bm > 0).tolist() == [1]
    # the deleted document's words are not indexed at all
    assert not units.bm25_scores("deleted").any()


def test_sentence_units_added_in_batches_equal_one_batch():
    docs, tcs = _docs()
    whole = SentenceUnits()
    whole.add(docs, tcs)
    parts = SentenceUnits()
    parts.add(docs[:1], tcs[:1])
    parts.add(docs[1:], tcs[1:])
    for name in ("doc", "bounds", "tokens"):
        np.testing.assert_array_equal(getattr(parts, name), getattr(whole, name))
    assert [parts.doc_range(r) for r in range(3)] == [whole.doc_range(r) for r in range(3)]
    np.testing.assert_allclose(parts.bm25_scores("delta rivers"),
                               whole.bm25_scores("delta rivers"))


def test_sentence_units_s3_scores_follow_rows():
    docs, tcs = _docs()
    units = SentenceUnits()
    units.add(docs, tcs)
    ts_a = np.array([0.0, 1.0, 0.0, 0.0, 4.0, 0.0])
    ts_c = np.array([2.0, 0.0, 0.0, 5.0])
    flat = np.concatenate([ts_c, ts_a])  # token scores of the rows, in row order
    got = units.s3_scores([2, 0], flat, window=1)
    assert got.tolist() == [2.0, 0.0, 5.0, 1.0, 4.0]
    want = np.concatenate([sentence_max_scores(ts_c, units.token_unit(2), 3, 3),
                           sentence_max_scores(ts_a, units.token_unit(0), 2, 3)])
    # one vectorised pass equals the per-document rule: smoothing never crosses documents
    np.testing.assert_allclose(units.s3_scores([2, 0], flat, window=3), want)
    assert units.s3_scores([], np.zeros(0), window=3).shape == (0,)
    with pytest.raises(ValueError, match="rows' 10 tokens"):
        units.s3_scores([2, 0], flat[:-1], window=3)
