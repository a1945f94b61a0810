"""Evidence spans: grow non-overlapping spans around the best sentence units of a document,
with exact character offsets, and put chosen spans in reading order.

Example:
    >>> import numpy as np
    >>> grow_spans(np.array([0.9, 0.5, 0.1]), [(0, 19), (20, 32), (33, 52)],
    ...            np.array([5, 4, 4]), span_tokens=9)
    [(0, 2, 0.9), (2, 3, 0.1)]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ['Span', 'grow_spans', 'grown_span_keys', 'order_for_prompt', 'spans_for_document']


@dataclass(frozen=True)
class Span:
    """One evidence span: a contiguous character range of one document.

    Attributes:
        doc_id: the document's id.
        start_char: first character (inclusive) in the document's text.
        end_char: end character (exclusive); ``text == doc_text[start_char:end_char]``.
        text: the span's text.
        score: the ranking score (fused where fusion is on).
        s3_score: the S3 part of the score, if known.
        bm25_score: the BM25 part of the score, if known.
        metadata: free-form data; each span holds its own copy (never shared).
        start_token: first document-local token index, if known.
        end_token: end token index (exclusive), if known.

    Example:
        >>> s = Span("d1", 4, 9, "quick", 0.7, start_token=1, end_token=2)
        >>> s.id, s.n_tokens
        ('d1:4-9', 1)
    """

    doc_id: str
    start_char: int
    end_char: int
    text: str
    score: float
    s3_score: float | None = None
    bm25_score: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)
    start_token: int | None = None
    end_token: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.start_char <= self.end_char:
            raise ValueError(
                f"span char bounds must satisfy 0 <= start <= end, got "
                f"{self.start_char}..{self.end_char}"
            )
        if (self.start_token is None) != (self.end_token is None):
            raise ValueError("give both start_token and end_token, or neither")
        if self.start_token is not None and not 0 <= self.start_token <= self.end_token:
            raise ValueError(
                f"span token bounds must satisfy 0 <= start <= end, got "
                f"{self.start_token}..{self.end_token}"
            )
        # A private copy, so a caller's dict (or another span's) is never shared.
        object.__setattr__(self, "metadata", dict(self.metadata))

    @property
    def id(self) -> str:
        """``"{doc_id}:{start_char}-{end_char}"``, unique within an index."""
        return f"{self.doc_id}:{self.start_char}-{self.end_char}"

    @property
    def n_tokens(self) -> int | None:
        """The number of tokens, or ``None`` when the token bounds are unknown."""
        if self.start_token is None or self.end_token is None:
            return None
        return self.end_token - self.start_token

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of all fields plus ``id`` and ``n_tokens``.

        Example:
            >>> Span("d", 0, 2, "hi", 1.0).to_dict()["id"]
            'd:0-2'
        """
        return {
            "id": self.id,
            "doc_id": self.doc_id,
            "start_char": self.start_char,
            "end_char": self.end_char,
            "text": self.text,
            "score": self.score,
            "s3_score": self.s3_score,
            "bm25_score": self.bm25_score,
            "metadata": dict(self.metadata),
            "start_token": self.start_token,
            "end_token": self.end_token,
            "n_tokens": self.n_tokens,
        }

def grow_spans(
    sentence_scores: np.ndarray,
    sentences: Sequence[tuple[int, int]],
    sentence_tokens: np.ndarray,
    *,
    span_tokens: int = 96,
    max_spans: int | None = None,
    min_score: float = -math.inf,
    breaks: np.ndarray | None = None,
) -> list[tuple[int, int, float]]:
    """Grow non-overlapping spans of whole sentences around the best sentences of ONE doc.

    Greedy: the seed is the highest-scoring unused sentence (ties: lower index), skipping
    ``-inf``/NaN scores and scores below ``min_score``. The span grows by adding the
    better-scoring of its two unused neighbour sentences (ties: the left one) while the
    span's token count plus that sentence's tokens stays ``<= span_tokens``; when the
    better neighbour does not fit (or is used by another span), that side is closed and
    growth continues on the other side. A seed alone may exceed ``span_tokens``: a
    sentence is never cut. ``span_tokens <= 0`` gives one-sentence spans.

    Args:
        sentence_scores: ``[n_sentences]`` scores.
        sentences: the sentence bounds (only their number is used here).
        sentence_tokens: ``[n_sentences]`` token count per sentence.
        span_tokens: the token size a span grows to.
        max_spans: stop after this many spans (``None``: until no seed is left).
        min_score: seeds must score at least this.
        breaks: bool ``[n_sentences - 1]``; ``breaks[j]`` forbids a span holding both
            sentence ``j`` and ``j + 1`` (a paragraph break between them).

    Returns:
        ``(first_sentence, last_sentence_exclusive, seed_score)`` in seed order (score desc).

    Example:
        >>> grow_spans(np.array([0.1, 0.9, 0.5, 0.2]), [(0, 1)] * 4, np.array([3, 3, 3, 3]),
        ...            span_tokens=6)
        [(1, 3, 0.9), (3, 4, 0.2), (0, 1, 0.1)]
    """
    sc = np.asarray(sentence_scores, dtype=np.float64)
    tok = np.asarray(sentence_tokens, dtype=np.int64)
    n = len(sentences)
    if sc.shape != (n,) or tok.shape != (n,):
        raise ValueError(
            f"sentence_scores {sc.shape} and sentence_tokens {tok.shape} must both have "
            f"one entry per sentence ({n})"
        )
    if max_spans is not None and max_spans <= 0:
        raise ValueError(f"max_spans must be positive or None, got {max_spans}")
    ranked = np.where(np.isnan(sc), -np.inf, sc)
    order = np.argsort(-ranked, kind="stable")
    used = np.zeros(n, dtype=bool)
    if breaks is not None:
        # a break is a used wall: growth stops there exactly as at a neighbour's span
        wall = np.asarray(breaks, dtype=bool)
        if wall.shape != (max(n - 1, 0),):
            raise ValueError(f"breaks must have one entry per gap ({max(n - 1, 0)}), got "
                             f"{wall.shape}")
    else:
        wall = np.zeros(max(n - 1, 0), dtype=bool)
    out: list[tuple[int, int, float]] = []
    for seed in order.tolist():
        if max_spans is not None and len(out) >= max_spans:
            break
        s = ranked[seed]
        if s == -np.inf or s < min_score:
            break  # sorted: nothing after can seed
        if used[seed]:
            continue
        lo, hi, size = seed, seed + 1, int(tok[seed])
        left_open = right_open = span_tokens > 0
        while left_open or right_open:
            left_open = left_open and lo > 0 and not used[lo - 1] and not wall[lo - 1]
            right_open = right_open and hi < n and not used[hi] and not wall[hi - 1]
            if not (left_open or right_open):
                break
            go_left = left_open and (not right_open or ranked[lo - 1] >= ranked[hi])
            j = lo - 1 if go_left else hi
            if size + tok[j] <= span_tokens:
                size += int(tok[j])
                if go_left:
                    lo -= 1
                else:
                    hi += 1
            elif go_left:
                left_open = False
            else:
                right_open = False
        used[lo:hi] = True
        out.append((lo, hi, float(sc[seed])))
    return out

def spans_for_document(
    doc_id: str,
    text: str,
    sentences: Sequence[tuple[int, int]],
    token_sentence: np.ndarray,
    grown: Sequence[tuple[int, int, float]],
    *,
    s3_scores: np.ndarray | None = None,
    bm25_scores: np.ndarray | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> list[Span]:
    """Turn :func:`grow_spans` output into :class:`Span` objects with exact offsets.

    ``start_char``/``end_char`` are the first sentence's start and the last sentence's
    end; token bounds span the tokens mapped to those sentences (``None`` when none are).
    ``s3_score``/``bm25_score`` are the maxima of the given per-sentence arrays over the
    span's sentences.

    Example:
        >>> from s3_retriever.text.sentences import split_sentences
        >>> t = "One two. Three four."
        >>> sents = split_sentences(t)
        >>> ts = np.array([0, 0, 0, 1, 1, 1])
        >>> [s.text for s in spans_for_document("d", t, sents, ts, [(1, 2, 0.5)])]
        ['Three four.']
    """
    ts = np.asarray(token_sentence, dtype=np.int64)
    n = len(sentences)
    first_tok = np.full(n, np.iinfo(np.int64).max)
    last_tok = np.full(n, -1)
    keep = ts >= 0
    pos = np.flatnonzero(keep)
    np.minimum.at(first_tok, ts[keep], pos)
    np.maximum.at(last_tok, ts[keep], pos)
    out = []
    for lo, hi, score in grown:
        if not 0 <= lo < hi <= n:
            raise ValueError(f"span sentences {lo}..{hi} out of range for {n} sentences")
        a, b = sentences[lo][0], sentences[hi - 1][1]
        ft, lt = int(first_tok[lo:hi].min()), int(last_tok[lo:hi].max())
        has_tokens = lt >= 0
        out.append(
            Span(
                doc_id=doc_id,
                start_char=a,
                end_char=b,
                text=text[a:b],
                score=float(score),
                s3_score=None if s3_scores is None else float(np.max(s3_scores[lo:hi])),
                bm25_score=None if bm25_scores is None else float(np.max(bm25_scores[lo:hi])),
                metadata=dict(metadata or {}),
                start_token=ft if has_tokens else None,
                end_token=lt + 1 if has_tokens else None,
            )
        )
    return out

def _doc_rank(spans: Sequence[Span], doc_order: Mapping[str, int] | Sequence[str] | None):
    first: dict[str, int] = {}
    for s in spans:
        first.setdefault(s.doc_id, len(first))
    if doc_order is None:
        return first
    given = (
        dict(doc_order) if isinstance(doc_order, Mapping)
        else {d: i for i, d in enumerate(doc_order)}
    )
    # Documents missing from doc_order go after the given ones, in first-appearance order.
    base = max(given.values(), default=-1) + 1
    return {d: (given[d] if d in given else base + i) for d, i in first.items()}

def grown_span_keys(
    sentences: Sequence[tuple[int, int]],
    token_sentence: np.ndarray,
    grown: Sequence[tuple[int, int, float]],
) -> tuple[np.ndarray, np.ndarray]:
    """``start_char`` and token count of each grown span, as :func:`spans_for_document`
    would set them (token count ``-1`` where the span has no tokens), without building
    :class:`Span` objects.

    Example:
        >>> grown_span_keys([(0, 4), (5, 9)], np.array([0, 0, 1]), [(1, 2, 0.5), (0, 2, 0.1)])
        (array([5, 0]), array([1, 3]))
    """
    n = len(sentences)
    m = len(grown)
    if m == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ts = np.asarray(token_sentence, dtype=np.int64)
    first_tok = np.full(n + 1, np.iinfo(np.int64).max)
    last_tok = np.full(n + 1, -1)
    keep = ts >= 0
    pos = np.flatnonzero(keep)
    np.minimum.at(first_tok, ts[keep], pos)
    np.maximum.at(last_tok, ts[keep], pos)
    lo = np.fromiter((g[0] for g in grown), dtype=np.int64, count=m)
    hi = np.fromiter((g[1] for g in grown), dtype=np.int64, count=m)
    if lo.min() < 0 or (hi <= lo).any() or hi.max() > n:
        raise ValueError(f"span sentences out of range for {n} sentences")
    # reduce over [lo, hi) for every span at once: reduceat on (lo, hi) pairs, taken in
    # start order (reduceat needs each pair's end after its start; the last entry is a pad)
    order = np.argsort(lo)
    idx = np.empty(2 * m, np.int64)
    idx[0::2], idx[1::2] = lo[order], hi[order]
    ft = np.empty(m, np.int64)
    lt = np.empty(m, np.int64)
    ft[order] = np.minimum.reduceat(first_tok, idx)[0::2]
    lt[order] = np.maximum.reduceat(last_tok, idx)[0::2]
    starts = np.fromiter((sentences[int(a)][0] for a in lo), dtype=np.int64, count=m)
    return starts, np.where(lt >= 0, lt + 1 - ft, -1)

def order_for_prompt(
    spans: Sequence[Span],
    doc_order: Mapping[str, int] | Sequence[str] | None = None,
) -> list[Span]:
    """Spans in reading order: by document, then ``start_char``.

    Document order is ``doc_order`` (a mapping doc_id -> rank, or a sequence of doc ids)
    when given, else the order of first appearance in ``spans``; documents missing from
    ``doc_order`` come after, in first-appearance order.

    Example:
        >>> sp = [Span("b", 5, 6, "y", 0.9), Span("a", 9, 9, "", 0.1), Span("b", 0, 1, "x", 0.3)]
        >>> [s.id for s in order_for_prompt(sp)]
        ['b:0-1', 'b:5-6', 'a:9-9']
        >>> [s.id for s in order_for_prompt(sp, ["a", "b"])]
        ['a:9-9', 'b:0-1', 'b:5-6']
    """
    rank = _doc_rank(spans, doc_order)
    return sorted(spans, key=lambda s: (rank[s.doc_id], s.start_char, s.end_char))
