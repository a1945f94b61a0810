"""Tests for s3_retriever.spans: sentences, scores, span growth, packing."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from s3_retriever.spans import (
    Span,
    grow_spans,
    merge_adjacent,
    order_for_prompt,
    pack_spans,
    sentence_scores,
    sentence_token_counts,
    smooth,
    spans_for_document,
    split_sentences,
    token_sentence_map,
)


def texts(text: str, **kw) -> list[str]:
    return [text[a:b] for a, b in split_sentences(text, **kw)]


def check_bounds(text: str, bounds: list[tuple[int, int]]) -> None:
    """Ordered, non-overlapping, trimmed, and covering every non-whitespace char."""
    covered = np.zeros(len(text), dtype=bool)
    prev_end = 0
    for a, b in bounds:
        assert prev_end <= a < b <= len(text)
        assert not text[a].isspace() and not text[b - 1].isspace()
        covered[a:b] = True
        prev_end = b
    for i, ch in enumerate(text):
        if not ch.isspace():
            assert covered[i], f"char {i} {ch!r} not covered"


# --------------------------------------------------------------------------- sentences


def test_split_basic_exact_bounds():
    t = "  Hello world. How are you?  Fine!\n"
    assert split_sentences(t) == [(2, 14), (15, 27), (29, 34)]


def test_split_abbreviations_not_split():
    t = (
        "Mr. and Mrs. Smith met Dr. Jones on St. Mark's Sq. at 5 p.m. on Jan. 3. "
        "They visited the U.S. Army and the U.K. Parliament, e.g. Westminster. "
        "Acme Inc. Corp. sold No. 5 to Prof. X vs. Gen. Lee."
    )
    assert texts(t) == [
        "Mr. and Mrs. Smith met Dr. Jones on St. Mark's Sq. at 5 p.m. on Jan. 3.",
        "They visited the U.S. Army and the U.K. Parliament, e.g. Westminster.",
        "Acme Inc. Corp. sold No. 5 to Prof. X vs. Gen. Lee.",
    ]


def test_split_initials_and_decimals():
    t = "J. R. R. Tolkien wrote it. George W. Bush read 3.5 pages. Pi is 3.14. Then tea."
    assert texts(t) == [
        "J. R. R. Tolkien wrote it.",
        "George W. Bush read 3.5 pages.",
        "Pi is 3.14.",
        "Then tea.",
    ]


def test_split_quotes_and_brackets():
    t = 'He said "Stop." Then he left. "Why?" she asked. (It rained.) "No!" he cried.'
    assert texts(t) == [
        'He said "Stop."',
        "Then he left.",
        '"Why?" she asked.',
        "(It rained.)",
        '"No!" he cried.',
    ]
    # curly quotes, and no split before a lower-case word
    t2 = "She said “Go.” Then silence. What? no way."
    assert texts(t2) == ["She said “Go.”", "Then silence.", "What? no way."]


def test_split_newlines_headings_lists():
    t = (
        "# Intro\nBody text here.\n\nSecond paragraph\ncontinues here. Done.\n"
        "Steps:\n1. Open the door.\n2. Walk in.\n- a bullet\n- another\n"
        "Early life\nSmith was born in 1990. He grew up."
    )
    assert texts(t) == [
        "# Intro",
        "Body text here.",
        "Second paragraph\ncontinues here.",
        "Done.",
        "Steps:",
        "1. Open the door.",
        "2. Walk in.",
        "- a bullet",
        "- another",
        "Early life",
        "Smith was born in 1990.",
        "He grew up.",
    ]


def test_split_blank_line_always_splits():
    assert texts("no final stop\n\nnext part\n \t\nthird") == ["no final stop", "next part", "third"]
    assert texts("a wrapped line of prose\nthat goes on.") == ["a wrapped line of prose\nthat goes on."]


def test_split_long_sentences():
    t = "aaaa bbbb cccc dddd eeee."
    assert split_sentences(t, max_chars=10) == [(0, 9), (10, 19), (20, 25)]
    # no whitespace: hard cut at the limit
    assert split_sentences("x" * 25, max_chars=10) == [(0, 10), (10, 20), (20, 25)]
    # every piece respects the limit
    t = " ".join(["word"] * 700) + "."
    b = split_sentences(t)
    assert len(b) == 4 and all(e - s <= 1000 for s, e in b)
    check_bounds(t, b)


def test_split_empty_and_errors():
    assert split_sentences("") == []
    assert split_sentences(" \n\t ") == []
    assert split_sentences("x") == [(0, 1)]
    with pytest.raises(TypeError):
        split_sentences(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        split_sentences("x", max_chars=0)


def test_split_property_random_text():
    rng = random.Random(7)
    pieces = ["the", "Dr.", "cat", "3.14", "U.S.", "sat.", "Hello!", "\n\n", "\n", "- x", "A.",
              '"quoted."', "e.g.", "Then", "?", "  ", "\t", "1.", "(", ")", "é", "X."]
    for _ in range(30):
        t = " ".join(rng.choice(pieces) for _ in range(rng.randint(0, 200)))
        check_bounds(t, split_sentences(t, max_chars=rng.choice([5, 40, 1000])))


def test_split_handles_1mb_and_pathological_text():
    rng = random.Random(0)
    words = ["the", "Dr.", "cat", "3.14", "U.S.", "sat.", "Hello!", "\n\n", "\n- x", "Then"]
    t = " ".join(rng.choice(words) for _ in range(220_000))
    assert len(t) > 1_000_000
    b = split_sentences(t)
    assert len(b) > 10_000
    check_bounds(t, b)
    # no whitespace to split at: hard cuts every max_chars
    assert len(split_sentences("a" * 1_000_000)) == 1000
    assert len(split_sentences("ab " * 300_000)) > 800


# --------------------------------------------------------------------------- scores


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
    assert sentence_scores(s, ts, 3).tolist() == [3.0, -math.inf, 4.0]
    assert sentence_scores(s, ts, 3, reduce="mean").tolist() == [2.0, -math.inf, 3.0]
    assert sentence_token_counts(ts, 3).tolist() == [2, 0, 2]
    with pytest.raises(ValueError):
        sentence_scores(s, ts, 3, reduce="sum")
    with pytest.raises(ValueError):
        sentence_scores(s, ts[:3], 3)
    with pytest.raises(ValueError):
        sentence_token_counts(ts, 2)


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
    assert spans[0].metadata is not spans[1].metadata


# --------------------------------------------------------------------------- Span / packing


def sp(doc: str, start: int, score: float, ntok: int) -> Span:
    return Span(doc, start, start + 5, "x" * 5, score, start_token=start, end_token=start + ntok)


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


def test_pack_by_k_and_ties():
    spans = [sp("a", 10, 0.5, 10), sp("b", 0, 0.9, 10), sp("a", 0, 0.5, 10), sp("b", 20, 0.5, 10)]
    assert [s.id for s in pack_spans(spans, k=3)] == ["b:0-5", "a:0-5", "a:10-15"]
    assert len(pack_spans(spans)) == 4
    assert pack_spans([], k=3) == []


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
    with pytest.raises(ValueError, match=r"budget_tokens=20 .*smallest.*30 tokens"):
        pack_spans(spans, budget_tokens=20)
    with pytest.raises(ValueError, match="token bounds"):
        pack_spans([Span("a", 0, 1, "h", 1.0)], budget_tokens=20)


def test_order_and_merge():
    text = "One. Two. Three. Four."
    s = [
        Span("d", 10, 16, "Three.", 0.2, start_token=4, end_token=6),
        Span("e", 0, 3, "abc", 0.8),
        Span("d", 0, 4, "One.", 0.5, start_token=0, end_token=2),
        Span("d", 5, 9, "Two.", 0.9, start_token=2, end_token=4),
    ]
    assert [x.id for x in order_for_prompt(s)] == ["d:0-4", "d:5-9", "d:10-16", "e:0-3"]
    assert [x.id for x in order_for_prompt(s, {"e": 0, "d": 1})][0] == "e:0-3"
    merged = merge_adjacent(s, {"d": text, "e": "abc"})
    assert [(x.text, x.score, x.start_token, x.end_token) for x in merged] == [
        ("One. Two. Three.", 0.9, 0, 6), ("abc", 0.8, None, None)
    ]
    # a gap with text in it is not merged
    gap = merge_adjacent([s[2], s[0]], {"d": text})
    assert [x.id for x in gap] == ["d:0-4", "d:10-16"]


def _random_docs(rng: random.Random, n_docs: int):
    """Documents as (doc_id, text, sentences, token_sentence, grown) with random scores."""
    docs = []
    for d in range(n_docs):
        n_sent = rng.randint(0, 6)
        sentences, pos, ts = [], 0, []
        for j in range(n_sent):
            length = rng.randint(3, 12)
            sentences.append((pos, pos + length))
            ts += [j] * rng.choice([0, 1, 2, 5, 9])  # some sentences get no tokens
            pos += length + 1
        ts = [-1] * rng.randint(0, 2) + ts
        text = "x" * max(pos, 1)
        scores = np.array([rng.choice([0.5, 1.0, rng.random(), float("nan")])
                           for _ in range(n_sent)])
        tokens = sentence_token_counts(np.array(ts, dtype=np.int64), n_sent)
        grown = grow_spans(scores, sentences, np.maximum(tokens, 1),
                           span_tokens=rng.choice([0, 4, 12]))
        docs.append((f"d{d}", text, sentences, np.array(ts, dtype=np.int64), grown))
    return docs


@pytest.mark.parametrize("seed", range(40))
def test_select_for_packing_matches_pack_spans(seed):
    from s3_retriever.spans import grown_span_keys, select_for_packing

    rng = random.Random(seed)
    docs = _random_docs(rng, rng.randint(1, 6))
    spans, score, rank, start, ntok = [], [], [], [], []
    r = 0
    for doc_id, text, sentences, ts, grown in docs:
        made = spans_for_document(doc_id, text, sentences, ts, grown)
        starts, counts = grown_span_keys(sentences, ts, grown)
        assert starts.tolist() == [s.start_char for s in made]
        assert counts.tolist() == [-1 if s.n_tokens is None else s.n_tokens for s in made]
        spans += made
        score += [g[2] for g in grown]
        rank += [r] * len(grown)
        start += starts.tolist()
        ntok += counts.tolist()
        r += bool(grown)
    for k, budget in [(None, None), (2, None), (None, rng.randint(1, 30)), (3, rng.randint(1, 30))]:
        if k is None and budget is None:
            continue
        chosen = select_for_packing(np.array(score), np.array(rank, dtype=np.int64),
                                    np.array(start, dtype=np.int64),
                                    np.array(ntok, dtype=np.int64), k=k, budget_tokens=budget)
        try:
            want = pack_spans(spans, k=k, budget_tokens=budget)
        except ValueError:
            assert chosen is None  # pack_spans would raise: the caller builds everything
            continue
        assert chosen is not None
        got = pack_spans([spans[i] for i in chosen], k=k, budget_tokens=budget)
        assert [s.id for s in got] == [s.id for s in want]
        assert len(chosen) == len(want)
