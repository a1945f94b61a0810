"""Fill ``k`` spans or a token budget from ranked candidates. :func:`greedy_fill` is the one
packing rule (walk in rank order, keep each item that still fits, stop at ``k``); spans,
passages of the baselines and calibration rankings all pack through it.

Example:
    >>> greedy_fill([50, 80, 40, 10], 100).tolist()
    [0, 2, 3]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from s3_retriever.errors import InvalidInputError
from s3_retriever.retrieval.spans import (
    Span,
    _doc_rank,
    grow_spans,
    grown_span_keys,
    spans_for_document,
)

__all__ = ["best_spans", "greedy_fill", "pack_spans", "select_for_packing"]


def greedy_fill(lengths: Sequence[int] | np.ndarray, budget: int | None, *,
                k: int | None = None) -> np.ndarray:
    """Positions (in rank order) of the items kept: walking ``lengths`` in the given (rank)
    order, each item whose length fits what is left of ``budget`` is kept and the walk goes
    on; it stops at ``k`` items or an exhausted budget. ``budget=None``: the first ``k``.

    Example:
        >>> greedy_fill([50, 80, 40], 100, k=1).tolist(), greedy_fill([5, 6], None, k=1).tolist()
        ([0], [0])
    """
    n = np.asarray(lengths, dtype=np.int64)
    if budget is None:
        return np.arange(len(n) if k is None else min(k, len(n)), dtype=np.int64)
    chosen: list[int] = []
    left, j = int(budget), 0
    while j < len(n) and left > 0:
        fits = np.flatnonzero(n[j:] <= left)
        if fits.size == 0:
            break
        j += int(fits[0])
        chosen.append(j)
        left -= int(n[j])
        j += 1
        if k is not None and len(chosen) >= k:
            break
    return np.asarray(chosen, dtype=np.int64)


def pack_spans(
    spans: Sequence[Span],
    *,
    k: int | None = None,
    budget_tokens: int | None = None,
) -> list[Span]:
    """Rank spans by score and keep the first ``k`` or those that fill a token budget.

    Ranking: score descending (NaN last); ties by document (first appearance in
    ``spans``), then ``start_char``. With ``k`` only: the first ``k``. With
    ``budget_tokens``: every span, in rank order, whose ``n_tokens`` fits the remaining
    budget (a span that does not fit is skipped and the scan goes on), stopping at ``k``
    spans when ``k`` is also given. Neither: all spans, ranked.

    Raises:
        ValueError: ``k <= 0``; ``budget_tokens <= 0``; a budget smaller than the smallest
            span (the message names both); a budget with spans lacking token bounds.

    Example:
        >>> sp = [Span("a", 0, 1, "x", 0.2, start_token=0, end_token=50),
        ...       Span("b", 0, 1, "y", 0.9, start_token=0, end_token=80),
        ...       Span("c", 0, 1, "z", 0.5, start_token=0, end_token=40)]
        >>> [s.doc_id for s in pack_spans(sp, budget_tokens=100)]
        ['b']
        >>> [s.doc_id for s in pack_spans(sp, k=2)]
        ['b', 'c']
    """
    if k is not None and k <= 0:
        raise ValueError(f"k must be a positive integer, got {k}")
    if budget_tokens is not None and budget_tokens <= 0:
        raise ValueError(f"budget_tokens must be a positive integer, got {budget_tokens}")
    if not spans:
        return []
    rank = _doc_rank(spans, None)

    def key(s: Span) -> tuple[float, int, int]:
        score = -math.inf if math.isnan(s.score) else s.score
        return (-score, rank[s.doc_id], s.start_char)

    ranked = sorted(spans, key=key)
    if budget_tokens is None:
        return ranked if k is None else ranked[:k]

    missing = [s.id for s in spans if s.n_tokens is None]
    if missing:
        raise ValueError(
            f"packing a token budget needs token bounds; span(s) {missing[:3]} have none"
        )
    smallest = min(spans, key=lambda s: s.n_tokens)
    if budget_tokens < smallest.n_tokens:
        raise InvalidInputError(
            f"budget_tokens={budget_tokens} is smaller than the smallest candidate span "
            f"({smallest.n_tokens} tokens, {smallest.id}); raise the budget or use smaller spans"
        )
    return [ranked[i] for i in greedy_fill([s.n_tokens for s in ranked], budget_tokens, k=k)]

def select_for_packing(
    scores: np.ndarray,
    doc_rank: np.ndarray,
    start_char: np.ndarray,
    n_tokens: np.ndarray,
    *,
    k: int | None = None,
    budget_tokens: int | None = None,
) -> np.ndarray | None:
    """Which candidates :func:`pack_spans` would return, from their keys alone.

    Candidates are described by arrays: score, the rank of their document (order of first
    appearance), ``start_char`` and token count (``-1``: unknown). Returns the indices of
    the chosen candidates (ascending), or ``None`` where :func:`pack_spans` would raise
    (a budget with spans lacking token bounds, or smaller than the smallest span): the
    caller then builds every span and lets :func:`pack_spans` report the problem. Building
    only the chosen spans and packing them gives exactly ``pack_spans`` of all of them.

    Example:
        >>> select_for_packing(np.array([0.2, 0.9, 0.5]), np.array([0, 0, 1]),
        ...                    np.array([0, 10, 0]), np.array([50, 80, 40]), budget_tokens=100)
        array([1])
    """
    s = np.asarray(scores, dtype=np.float64)
    s = np.where(np.isnan(s), -np.inf, s)
    nt = np.asarray(n_tokens, dtype=np.int64)
    if len(s) == 0:
        return np.zeros(0, np.int64)
    order = np.lexsort((np.asarray(start_char), np.asarray(doc_rank), -s))
    if budget_tokens is not None and ((nt < 0).any() or budget_tokens < nt.min()):
        return None
    return np.sort(order[greedy_fill(nt[order], budget_tokens, k=k)])


def best_spans(docs: Sequence[Any], units: Any, rows: Sequence[int], ranked: np.ndarray, *,
               s3_scores: np.ndarray | None, bm25_scores: np.ndarray | None, span_tokens: int,
               k: int | None = None, budget_tokens: int | None = None) -> list[Span]:
    """The spans a search returns: grown around the best units of every candidate document
    (``ranked``: one score per unit of ``rows``, in order), packed into ``k`` / the budget.
    Only the spans the packing keeps are built as :class:`Span` objects.

    ``docs`` is the document table and ``units`` its
    :class:`~s3_retriever.retrieval.units.SentenceUnits`; ``s3_scores`` / ``bm25_scores``
    (aligned with ``ranked``) are reported on the spans when given.
    """
    grown_all, pos = [], 0
    for r in rows:
        a, b = units.doc_range(r)
        grown = grow_spans(ranked[pos:pos + b - a], docs[r].sentences, units.tokens[a:b],
                           span_tokens=span_tokens)
        grown_all.append((r, slice(pos, pos + b - a), grown))
        pos += b - a
    chosen = None
    if k is not None or budget_tokens is not None:
        keys = [grown_span_keys(docs[r].sentences, units.token_unit(r), grown)
                for r, _, grown in grown_all]
        owners = [j for j, (_, _, grown) in enumerate(grown_all) for _ in grown]
        has = [j for j, (_, _, grown) in enumerate(grown_all) if grown]
        rank = np.zeros(len(grown_all), np.int64)
        rank[has] = np.arange(len(has))
        picked = select_for_packing(
            np.asarray([g[2] for _, _, grown in grown_all for g in grown], np.float64),
            rank[np.asarray(owners, np.int64)],
            np.concatenate([st for st, _ in keys]) if keys else np.zeros(0, np.int64),
            np.concatenate([nt for _, nt in keys]) if keys else np.zeros(0, np.int64),
            k=k, budget_tokens=budget_tokens)
        if picked is not None:
            chosen = [[] for _ in grown_all]
            flat = [(j, g) for j, (_, _, grown) in enumerate(grown_all) for g in grown]
            for i in picked.tolist():
                chosen[flat[i][0]].append(flat[i][1])
    spans: list[Span] = []
    for j, (r, sl, grown) in enumerate(grown_all):
        rec = docs[r]
        grown = grown if chosen is None else chosen[j]
        if grown:
            spans += spans_for_document(
                rec.doc_id, rec.text, rec.sentences, units.token_unit(r), grown,
                s3_scores=None if s3_scores is None else s3_scores[sl],
                bm25_scores=None if bm25_scores is None else bm25_scores[sl],
                metadata=rec.metadata)
    return pack_spans(spans, k=k, budget_tokens=budget_tokens)
