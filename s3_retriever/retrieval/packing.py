"""Fill ``k`` spans or a token budget from ranked candidates. :func:`greedy_fill` is the one
packing rule (walk in rank order, keep each item that still fits, stop at ``k``); spans,
passages of the baselines and calibration rankings all pack through it.

Example:
    >>> greedy_fill([50, 80, 40, 10], 100).tolist()
    [0, 2, 3]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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
from s3_retriever.text.sentences import paragraph_breaks

__all__ = ["best_spans", "build_spans", "check_budget", "greedy_fill", "grow_and_pack",
           "grow_document", "pack_spans", "select_for_packing", "unit_min_tokens"]


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
    check_budget(budget_tokens, smallest.n_tokens, smallest.id)
    return [ranked[i] for i in greedy_fill([s.n_tokens for s in ranked], budget_tokens, k=k)]

def check_budget(budget_tokens: int, smallest_tokens: int, smallest: str) -> None:
    """Raise when not even the smallest candidate (``smallest_tokens`` tokens, named
    ``smallest``) fits the budget: an empty answer would hide the problem.

    Raises:
        InvalidInputError: naming the budget and the smallest candidate.
    """
    if budget_tokens < smallest_tokens:
        raise InvalidInputError(
            f"budget_tokens={budget_tokens} is smaller than the smallest candidate span "
            f"({smallest_tokens} tokens, {smallest}); raise the budget or use smaller spans")


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


#: What growing one document gives :func:`grow_and_pack`: its spans ``(first unit, end
#: unit, seed score)`` from :func:`~s3_retriever.retrieval.spans.grow_spans`, and their
#: ``start_char`` and token counts from
#: :func:`~s3_retriever.retrieval.spans.grown_span_keys`.
Grown = tuple[list[tuple[int, int, float]], np.ndarray, np.ndarray]


def best_spans(docs: Sequence[Any], units: Any, rows: Sequence[int], ranked: np.ndarray, *,
               s3_scores: np.ndarray | None, bm25_scores: np.ndarray | None, span_tokens: int,
               k: int | None = None, budget_tokens: int | None = None,
               cross_paragraphs: bool = False) -> list[Span]:
    """The spans a search returns: grown around the best units of the candidate documents
    (``ranked``: one score per unit of ``rows``, in order), packed into ``k`` / the budget.

    A span scores its seed unit, so no span of a document beats the document's best unit:
    documents are grown best first, and growth stops as soon as no document left can
    change the packing (``k`` reached, the budget spent, or what is left smaller than any
    span still possible). The result is exactly what growing every document would give;
    the cost follows the documents that can place a span, not the number of candidates.

    ``docs`` is the document table and ``units`` its
    :class:`~s3_retriever.retrieval.units.SentenceUnits`; ``s3_scores`` / ``bm25_scores``
    (aligned with ``ranked``) are reported on the spans when given. Spans stop at blank
    lines (paragraph breaks) unless ``cross_paragraphs``.
    """
    ranges = [units.doc_range(r) for r in rows]
    n_units = np.fromiter((b - a for a, b in ranges), np.int64, len(rows))
    offsets = np.cumsum(n_units) - n_units
    min_tokens = unit_min_tokens(units, rows)

    def grow(js: list[int]) -> list[Grown]:
        return [grow_document(docs[rows[j]], units, rows[j],
                              ranked[offsets[j]:offsets[j] + n_units[j]],
                              span_tokens=span_tokens, cross_paragraphs=cross_paragraphs)
                for j in js]

    def build(picks: list[tuple[int, list[tuple[int, int, float]]]]) -> list[Span]:
        out: list[Span] = []
        for j, mine in picks:
            sl = slice(offsets[j], offsets[j] + n_units[j])
            out += build_spans(docs[rows[j]], units, rows[j], mine,
                               None if s3_scores is None else s3_scores[sl],
                               None if bm25_scores is None else bm25_scores[sl])
        return out

    return grow_and_pack(ranked, n_units, min_tokens, grow, build, k=k,
                         budget_tokens=budget_tokens)


def unit_min_tokens(units: Any, rows: Sequence[int]) -> np.ndarray:
    """The token count of the smallest unit of each document row (0 for none)."""
    ranges = [units.doc_range(r) for r in rows]
    n_units = np.fromiter((b - a for a, b in ranges), np.int64, len(rows))
    out = np.zeros(len(rows), np.int64)
    has = np.flatnonzero(n_units > 0)
    if has.size:
        tokens = np.concatenate([units.tokens[a:b] for a, b in ranges])
        out[has] = np.minimum.reduceat(tokens, (np.cumsum(n_units) - n_units)[has])
    return out


def grow_document(rec: Any, units: Any, row: int, ranked: np.ndarray, *, span_tokens: int,
                  cross_paragraphs: bool = False) -> Grown:
    """Grow the spans of one document (its record ``rec``, table row ``row``) from its
    units' ``ranked`` scores, with their packing keys."""
    a, b = units.doc_range(row)
    g = grow_spans(ranked, rec.sentences, units.tokens[a:b], span_tokens=span_tokens,
                   breaks=None if cross_paragraphs else
                   paragraph_breaks(rec.text, rec.sentences))
    st, nt = grown_span_keys(rec.sentences, units.token_unit(row), g)
    return g, st, nt


def build_spans(rec: Any, units: Any, row: int, grown: list[tuple[int, int, float]],
                s3_scores: np.ndarray | None, bm25_scores: np.ndarray | None) -> list[Span]:
    """The :class:`Span` objects of some of one document's grown spans (scores: its
    units')."""
    return spans_for_document(rec.doc_id, rec.text, rec.sentences, units.token_unit(row),
                              grown, s3_scores=s3_scores, bm25_scores=bm25_scores,
                              metadata=rec.metadata)


def grow_and_pack(ranked: np.ndarray, n_units: np.ndarray, min_tokens: np.ndarray,
                  grow: Callable[[list[int]], list[Grown]],
                  build: Callable[[list[tuple[int, list[tuple[int, int, float]]]]], list[Span]],
                  *, k: int | None = None, budget_tokens: int | None = None) -> list[Span]:
    """The loop of :func:`best_spans`, wherever the documents live.

    ``ranked`` holds the unit scores of the candidate documents (``n_units`` each, in
    document position order), ``min_tokens`` each one's smallest unit. ``grow(js)`` grows
    the documents at positions ``js`` (a list, best first) and returns one :data:`Grown`
    each; ``build(picks)`` makes the spans of ``picks`` (``(position, chosen grown
    spans)``, by position) in that order. One process calls them on its own documents;
    a sharded index sends each shard the positions it holds.
    """
    n_units = np.asarray(n_units, np.int64)
    offsets = np.cumsum(n_units) - n_units
    score = np.where(np.isnan(ranked), -np.inf, np.asarray(ranked, np.float64))
    doc_max = np.full(len(n_units), -np.inf)
    doc_min_tokens = np.asarray(min_tokens, np.int64)
    has = np.flatnonzero(n_units > 0)
    if has.size:
        doc_max[has] = np.maximum.reduceat(score, offsets[has])
    order = np.argsort(-doc_max, kind="stable")
    order = order[doc_max[order] > -np.inf]
    # the smallest unit of any document from position i of ``order`` on: a lower bound
    # on the tokens of every span those documents can still grow
    suffix_min = np.minimum.accumulate(doc_min_tokens[order][::-1])[::-1] if order.size \
        else np.zeros(0, np.int64)

    grown: dict[int, list[tuple[int, int, float]]] = {}
    keys: list[tuple[float, int, int, int, int, int]] = []  # score, row pos, start, n, j, g
    done, batch = 0, 8
    while True:
        js = order[done:done + batch].tolist()
        for j, (g, st, nt) in zip(js, grow(js) if js else []):
            grown[j] = g
            keys += [(sc, j, int(a), int(n), j, i)
                     for i, ((_, _, sc), a, n) in enumerate(zip(g, st, nt))]
        done = min(done + batch, len(order))
        batch *= 2
        if done == len(order) or _settled(keys, doc_max[order[done]], suffix_min[done], k,
                                          budget_tokens):
            break
    picked = _pick(keys, k, budget_tokens)
    if picked is None or (not picked and keys):
        # budget smaller than every span, or missing token bounds: build everything and
        # let pack_spans report (or pack) exactly as it always has
        rest = order[done:].tolist()
        for j, (g, _, _) in zip(rest, grow(rest) if rest else []):
            grown[j] = g
        chosen_ids = {(j, i) for j, g in grown.items() for i in range(len(g))}
    else:
        chosen_ids = {(key[4], key[5]) for key in picked}
    picks = [(j, mine) for j in sorted(grown)
             if (mine := [g for i, g in enumerate(grown[j]) if (j, i) in chosen_ids])]
    return pack_spans(build(picks) if picks else [], k=k, budget_tokens=budget_tokens)


def _rank_keys(keys: list) -> list:
    """Candidates in packing order: score desc (NaN last), document position, start."""
    return sorted(keys, key=lambda t: (-(t[0] if t[0] == t[0] else -math.inf), t[1], t[2]))


def _pick(keys: list, k: int | None, budget_tokens: int | None) -> list | None:
    """The candidates :func:`pack_spans` keeps, or None where it would raise (a budget
    with token bounds missing, or smaller than every candidate)."""
    ranked = _rank_keys(keys)
    if budget_tokens is None:
        return ranked if k is None else ranked[:k]
    lengths = [t[3] for t in ranked]
    if not lengths:
        return []
    if min(lengths) < 0 or budget_tokens < min(lengths):
        return None
    return [ranked[i] for i in greedy_fill(lengths, budget_tokens, k=k)]


def _settled(keys: list, next_max: float, next_min_tokens: int, k: int | None,
             budget_tokens: int | None) -> bool:
    """Whether the documents not yet grown (best unit ``next_max``, smallest unit
    ``next_min_tokens`` or more) can no longer change what the packing keeps."""
    ranked = _rank_keys(keys)
    if budget_tokens is None:
        return k is not None and sum(1 for t in ranked if t[0] > next_max) >= k
    left, taken = budget_tokens, 0
    for t in ranked:
        if not t[0] > next_max:  # from here on, spans of other documents may interleave
            smallest = min([next_min_tokens] + [u[3] for u in ranked if not u[0] > next_max])
            return left < smallest
        if 0 <= t[3] <= left:
            left -= t[3]
            taken += 1
            if left == 0 or (k is not None and taken >= k):
                return True
    return left < next_min_tokens
