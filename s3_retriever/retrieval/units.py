"""Sentence units: token scores become one score per sentence (smoothed, max per sentence),
the unit S3, BM25 and their fusion rank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from s3_retriever.text.bm25 import BM25Index

__all__ = ['SentenceUnits', 'sentence_max_scores', 'sentence_scores', 'sentence_token_counts', 'smooth',
           'token_sentence_map']


def smooth(scores: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average of a 1-D score array, same length.

    Each value becomes the mean of itself and its neighbours within the window; at the
    edges only the existing neighbours are averaged. ``window=1`` returns a float copy.
    For an even window the extra neighbour is on the right. Scores must be finite.

    Example:
        >>> smooth(np.array([0.0, 3.0, 0.0, 0.0]), 3).tolist()
        [1.5, 1.0, 1.0, 0.0]
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {x.shape}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    n = x.shape[0]
    if window == 1 or n == 0:
        return x.copy()
    left, right = (window - 1) // 2, window // 2
    csum = np.concatenate(([0.0], np.cumsum(x)))
    idx = np.arange(n)
    lo = np.maximum(idx - left, 0)
    hi = np.minimum(idx + right + 1, n)
    return (csum[hi] - csum[lo]) / (hi - lo)


def smooth_within(scores: np.ndarray, start: np.ndarray, end: np.ndarray,
                  window: int) -> np.ndarray:
    """:func:`smooth` of many documents at once: token ``i`` averages its neighbours within
    ``[start[i], end[i])``, its document's range in the concatenated ``scores``.

    Example:
        >>> smooth_within(np.array([0.0, 3.0, 6.0, 0.0]), np.array([0, 0, 2, 2]),
        ...               np.array([2, 2, 4, 4]), 3).tolist()
        [1.5, 1.5, 3.0, 3.0]
    """
    x = np.asarray(scores, dtype=np.float64)
    if window == 1 or len(x) == 0:
        return x.copy()
    # a sum of shifted copies (window is small): no long prefix sums, so no precision lost
    # however many documents are concatenated
    idx = np.arange(len(x))
    total, count = np.zeros_like(x), np.zeros(len(x))
    for shift in range(-((window - 1) // 2), window // 2 + 1):
        j = idx + shift
        ok = (j >= start) & (j < end)
        total[ok] += x[j[ok]]
        count += ok
    return total / count


def token_sentence_map(token_char: np.ndarray, sentences: Sequence[tuple[int, int]]) -> np.ndarray:
    """The sentence index of each token (``-1`` for none).

    A token belongs to the sentence containing its start character; a token starting in
    the whitespace between two sentences (e.g. ``" The"``) belongs to the following
    sentence. Tokens starting after the end of the last sentence (trailing whitespace) and
    zero-length tokens (special tokens such as BOS, offsets ``(0, 0)``) get ``-1``.

    Args:
        token_char: ``[n_tokens, 2]`` integer array of (start, end) character offsets.
        sentences: sentence bounds from :func:`split_sentences`.

    Example:
        >>> token_sentence_map(np.array([[0, 0], [0, 2], [2, 5], [5, 8], [8, 9]]),
        ...                    [(0, 5), (6, 8)]).tolist()
        [-1, 0, 0, 1, -1]
    """
    tc = np.asarray(token_char)
    if tc.ndim != 2 or tc.shape[1] != 2:
        raise ValueError(f"token_char must have shape [n, 2], got {tc.shape}")
    n = tc.shape[0]
    if not sentences or n == 0:
        return np.full(n, -1, dtype=np.int64)
    ends = np.fromiter((e for _, e in sentences), dtype=np.int64, count=len(sentences))
    idx = np.searchsorted(ends, tc[:, 0], side="right").astype(np.int64)
    idx[idx >= len(sentences)] = -1
    idx[tc[:, 1] <= tc[:, 0]] = -1
    return idx

def sentence_token_counts(token_sentence: np.ndarray, n_sentences: int) -> np.ndarray:
    """The number of tokens mapped to each sentence (``-1`` entries ignored).

    Example:
        >>> sentence_token_counts(np.array([-1, 0, 0, 2]), 3).tolist()
        [2, 0, 1]
    """
    ts = np.asarray(token_sentence, dtype=np.int64)
    valid = ts[ts >= 0]
    if valid.size and valid.max() >= n_sentences:
        raise ValueError(f"token_sentence holds index {valid.max()} >= n_sentences {n_sentences}")
    return np.bincount(valid, minlength=n_sentences).astype(np.int64)

def sentence_scores(token_scores: np.ndarray, token_sentence: np.ndarray,
                    n_sentences: int) -> np.ndarray:
    """The max token score of each sentence (tokens with sentence ``-1`` ignored); a
    sentence without tokens gets ``-inf``, so it can never seed a span.

    Example:
        >>> sentence_scores(np.array([1.0, 3.0, 2.0, 9.0]), np.array([0, 0, 2, -1]), 3).tolist()
        [3.0, -inf, 2.0]
    """
    s = np.asarray(token_scores, dtype=np.float64)
    ts = np.asarray(token_sentence, dtype=np.int64)
    if s.shape != ts.shape or s.ndim != 1:
        raise ValueError(
            f"token_scores and token_sentence must be 1-D of equal length, got "
            f"{s.shape} and {ts.shape}"
        )
    keep = ts >= 0
    out = np.full(n_sentences, -np.inf)
    np.maximum.at(out, ts[keep], s[keep])
    return out


def sentence_max_scores(token_scores: np.ndarray, token_sentence: np.ndarray,
                        n_sentences: int, window: int) -> np.ndarray:
    """Each sentence's max :func:`smooth`-ed token score; 0 for a sentence without tokens.

    The unit score every S3 ranking uses (search, calibration, the benchmarks).

    Example:
        >>> sentence_max_scores(np.array([0.0, 3.0, 0.0, 0.0]), np.array([0, 0, 1, 1]), 3,
        ...                     window=3).tolist()
        [1.5, 1.0, 0.0]
    """
    su = sentence_scores(smooth(token_scores, window), token_sentence, n_sentences)
    return np.where(np.isfinite(su), su, 0.0)


class SentenceUnits:
    """The sentence units of an index's documents, in document-table row order: their char
    bounds and token counts, each document's unit range and token -> unit map, and the BM25
    statistics over every live unit.

    Example:
        >>> from s3_retriever.index.documents import DocRecord
        >>> units = SentenceUnits()
        >>> doc = DocRecord("a", "One. Two. Six.", token_start=0, token_end=3,
        ...                 sentences=[(0, 4), (5, 9), (10, 14)])
        >>> units.add([doc], [np.array([[0, 4], [5, 9], [10, 14]])])
        >>> units.bounds.tolist(), units.doc_range(0), int(units.bm25_scores("two").argmax())
        ([[0, 4], [5, 9], [10, 14]], (0, 3), 1)
    """

    def __init__(self) -> None:
        self.bm25 = BM25Index()
        self.doc = np.zeros(0, np.int64)         # unit -> document-table row
        self.bounds = np.zeros((0, 2), np.int64)  # unit -> char bounds in its document
        self.tokens = np.zeros(0, np.int64)       # unit -> tokens (at least 1)
        self._ranges: list[tuple[int, int]] = []  # row -> units [a, b)
        self._token_unit: list[np.ndarray] = []   # row -> its tokens' unit (-1: none)

    def add(self, docs: Sequence[Any], token_chars: Sequence[np.ndarray]) -> None:
        """Append the units of the next document rows (``token_chars``: each document's
        token char bounds; a deleted document gets an empty range)."""
        texts, unit_doc, bounds, counts = [], [], [], []
        base = len(self.doc)
        for rec, tc in zip(docs, token_chars):
            row = len(self._ranges)
            first = base + len(unit_doc)
            if rec.deleted:
                self._ranges.append((first, first))
                self._token_unit.append(np.zeros(0, np.int64))
                continue
            tsent = token_sentence_map(np.asarray(tc), rec.sentences)
            cnt = sentence_token_counts(tsent, len(rec.sentences))
            self._ranges.append((first, first + len(rec.sentences)))
            self._token_unit.append(tsent)
            for j, (a, b) in enumerate(rec.sentences):
                texts.append(rec.text[a:b])
                unit_doc.append(row)
                bounds.append((a, b))
                counts.append(max(1, int(cnt[j])))
        if texts:
            self.bm25.add(texts)
        self.doc = np.concatenate([self.doc, np.asarray(unit_doc, np.int64)])
        self.bounds = np.concatenate([self.bounds, np.asarray(bounds, np.int64).reshape(-1, 2)])
        self.tokens = np.concatenate([self.tokens, np.asarray(counts, np.int64)])

    def doc_range(self, row: int) -> tuple[int, int]:
        """The units ``[a, b)`` of document row ``row``."""
        return self._ranges[row]

    def token_unit(self, row: int) -> np.ndarray:
        """The unit (within its document) of each token of document row ``row``."""
        return self._token_unit[row]

    def of_rows(self, rows: Sequence[int]) -> np.ndarray:
        """The units of ``rows``, concatenated in order."""
        parts = [np.arange(*self._ranges[r]) for r in rows]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def bm25_scores(self, query: str, *, idf: Mapping[str, float] | None = None,
                    avgdl: float | None = None) -> np.ndarray:
        """The BM25 score of every unit (float64); ``idf`` / ``avgdl``: statistics of a
        larger corpus to score with (see :meth:`BM25Index.scores
        <s3_retriever.text.bm25.BM25Index.scores>`)."""
        return np.asarray(self.bm25.scores(query, idf=idf, avgdl=avgdl), np.float64)

    def s3_scores(self, rows: Sequence[int], token_scores: np.ndarray,
                  window: int) -> np.ndarray:
        """The :func:`sentence_max_scores` of the units of ``rows``, from the token scores of
        their documents concatenated in row order: smoothing stays inside each document.
        One vectorised pass whatever the number of documents.
        """
        x = np.asarray(token_scores, dtype=np.float64)
        if not len(rows):
            return np.zeros(0)
        lens = np.fromiter((len(self._token_unit[r]) for r in rows), np.int64, len(rows))
        if x.shape != (int(lens.sum()),):
            raise ValueError(f"token_scores must be 1-D with the rows' {int(lens.sum())} "
                             f"tokens, got shape {x.shape}")
        n_units = np.fromiter((self._ranges[r][1] - self._ranges[r][0] for r in rows),
                              np.int64, len(rows))
        out = np.zeros(int(n_units.sum()))
        if not len(x):
            return out
        doc_start = np.repeat(np.cumsum(lens) - lens, lens)
        doc_end = doc_start + np.repeat(lens, lens)
        smoothed = smooth_within(x, doc_start, doc_end, window)
        local = np.concatenate([self._token_unit[r] for r in rows])
        keep = local >= 0
        unit = (local + np.repeat(np.cumsum(n_units) - n_units, lens))[keep]
        if unit.size:  # tokens map to units in order: a max per run of equal unit ids
            starts = np.flatnonzero(np.r_[True, unit[1:] != unit[:-1]])
            out[unit[starts]] = np.maximum.reduceat(smoothed[keep], starts)
        return np.where(np.isfinite(out), out, 0.0)
