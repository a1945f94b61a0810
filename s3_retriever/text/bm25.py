"""BM25 over text units: the one lexical scorer (engine and evaluation baselines alike).

:class:`BM25Index` takes its IDF from :class:`rank_bm25.BM25Okapi` (epsilon floor, clamped
at 0) and scores a query with numpy over an inverted index of the units' terms.

Example:
    >>> bm = BM25Index(["Paris is the capital of France.", "Bananas are yellow.",
    ...                 "Berlin is a city.", "Rome has old ruins."])
    >>> bm.top("capital of France", 1)[0][0]
    0
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

import numpy as np
from rank_bm25 import BM25Okapi

__all__ = ['STOPWORDS', 'BM25Index', 'okapi_idf', 'tokenize']


STOPWORDS = frozenset(
    """
    a an the of in on at to for from by with about into as and or but not no nor
    is are was were be been being am do does did has have had it its this that these those
    he she his her him they them their we our you your i me my
    what which who whom whose when where why how there than then so if s t
    """.split()
)

_WORD_RE = re.compile(r"\w+")

def tokenize(text: str, *, stem: bool = True) -> list[str]:
    """Lower-cased word tokens without stopwords, for BM25.

    Words are unicode ``\\w+`` runs; numbers are kept. With ``stem``, a light plural rule
    strips a final ``s`` from words longer than 3 characters unless they end in ``ss``,
    ``us`` or ``is`` ("cats" -> "cat", "glass", "virus", "analysis" unchanged).

    Example:
        >>> tokenize("The Cats of Rome, in 1990s!")
        ['cat', 'rome', '1990']
    """
    words = _WORD_RE.findall(text.lower())
    out = []
    for w in words:
        if w in STOPWORDS:
            continue
        if stem and len(w) > 3 and w[-1] == "s" and w[-2] not in "sui":
            w = w[:-1]
        out.append(w)
    return out

def okapi_idf(doc_freq: Mapping[str, int], n_passages: int, *, epsilon: float = 0.25
              ) -> dict[str, float]:
    """The IDF :class:`BM25Index` gives each term, from its passage frequencies alone:
    rank_bm25's ``BM25Okapi`` IDF (negative values floored to ``epsilon * mean IDF``), then
    clamped at 0.

    ``doc_freq`` must list the terms in order of first appearance in the passages (the
    mean IDF is summed in that order, as rank_bm25 does, so the values are bit-identical).
    A sharded index passes the sums of its shards' :meth:`BM25Index.term_stats`, merged
    in shard order, and gets the IDF of one index over all their passages.

    Example:
        >>> bm = BM25Index(["red apple", "green pear", "blue sky", "red car"])
        >>> terms, df, n, _ = bm.term_stats()
        >>> okapi_idf(dict(zip(terms, df.tolist())), n)["pear"] == bm.idf_of("pear")
        True
    """
    if not doc_freq:
        return {}
    idf: dict[str, float] = {}
    idf_sum = 0.0
    negative = []
    for term, freq in doc_freq.items():
        value = math.log(n_passages - freq + 0.5) - math.log(freq + 0.5)
        idf[term] = value
        idf_sum += value
        if value < 0:
            negative.append(term)
    eps = epsilon * (idf_sum / len(idf))
    for term in negative:
        idf[term] = eps
    return {term: max(value, 0.0) for term, value in idf.items()}


class BM25Index:
    """BM25 (Okapi) over a list of passages; query-time masking; top-k.

    The IDF is rank_bm25's ``BM25Okapi`` IDF (``log((N - n + 0.5) / (n + 0.5))``, with
    negative values floored to ``epsilon * mean IDF``), so scores equal
    ``BM25Okapi(tokenized).get_scores(tokenize(query))`` -- except that the floor is
    clamped at 0: when the mean IDF is not positive (tiny corpora, e.g. 1-2 passages),
    rank_bm25 would give terms found in many passages a negative weight, ranking
    passages that match *below* passages that do not. With that clamp all scores are
    ``>= 0``. Note that rank_bm25's IDF is 0 for a term in half the passages, so a
    1- or 2-passage corpus scores all zeros.

    Args:
        passages: the initial passages (may be empty).
        k1, b, epsilon: BM25Okapi parameters.
        tokenizer: text -> tokens, applied to passages and queries alike.

    Example:
        >>> bm = BM25Index(["red apple", "green pear", "blue sky", "red car"])
        >>> len(bm), bm.scores("red pear").round(3).tolist()
        (4, [0.0, 0.847, 0.0, 0.0])
    """

    def __init__(
        self,
        passages: Iterable[str] | None = None,
        *,
        k1: float = 1.5,
        b: float = 0.75,
        epsilon: float = 0.25,
        tokenizer: Callable[[str], list[str]] = tokenize,
    ) -> None:
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"need k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b, self.epsilon = float(k1), float(b), float(epsilon)
        self.tokenizer = tokenizer
        self._vocab: dict[str, int] = {}
        # Every passage's token ids, flattened, with offsets: the input of a rebuild.
        self._ids = np.zeros(0, dtype=np.int64)
        self._offsets = np.zeros(1, dtype=np.int64)
        self._set_empty_stats()
        if passages is not None:
            self.add(passages)

    def _set_empty_stats(self) -> None:
        n = len(self)
        self._idf = np.zeros(len(self._vocab))
        self._norm = np.ones(n)
        self._norm_at: tuple[float, np.ndarray] | None = None
        self._indptr = np.zeros(len(self._vocab) + 1, dtype=np.int64)
        self._post_doc = np.zeros(0, dtype=np.int64)
        self._post_tf = np.zeros(0)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def add(self, passages: Iterable[str]) -> None:
        """Append passages and rebuild the statistics.

        Cost: tokenising the new passages plus a full rebuild over *all* passages
        (BM25Okapi's IDF pass and the numpy inverted index), O(total tokens); add in
        large batches rather than one passage at a time.
        """
        if isinstance(passages, str):
            raise TypeError("passages must be a list of strings, not one string")
        new_ids: list[int] = []
        lengths = []
        vocab = self._vocab
        for p in passages:
            if not isinstance(p, str):
                raise TypeError(f"passages must be strings, got {type(p).__name__}")
            toks = self.tokenizer(p)
            for t in toks:
                new_ids.append(vocab.setdefault(t, len(vocab)))
            lengths.append(len(toks))
        self._ids = np.concatenate([self._ids, np.asarray(new_ids, dtype=np.int64)])
        self._offsets = np.concatenate(
            [self._offsets, self._offsets[-1] + np.cumsum(lengths, dtype=np.int64)]
        )
        self._rebuild()

    def _rebuild(self) -> None:
        n, v = len(self), len(self._vocab)
        if n == 0 or self._ids.size == 0:
            # rank_bm25 divides by zero on an empty corpus or one without any token.
            self._set_empty_stats()
            return
        ids = self._ids.tolist()
        off = self._offsets.tolist()
        okapi = BM25Okapi(
            [ids[off[i]:off[i + 1]] for i in range(n)], k1=self.k1, b=self.b, epsilon=self.epsilon
        )
        idf = np.zeros(v)
        for term, value in okapi.idf.items():
            idf[term] = value
        self._idf = np.maximum(idf, 0.0)
        self._norm = self._norm_for(okapi.avgdl)
        self._norm_at = None
        # Postings: unique (term, passage) pairs with their term frequency, sorted by term.
        doc_of = np.repeat(np.arange(n, dtype=np.int64), np.diff(self._offsets))
        keys, tf = np.unique(self._ids * n + doc_of, return_counts=True)
        terms = keys // n
        self._post_doc = keys % n
        self._post_tf = tf.astype(np.float64)
        self._indptr = np.concatenate(([0], np.cumsum(np.bincount(terms, minlength=v))))

    def _norm_for(self, avgdl: float) -> np.ndarray:
        """``k1 * (1 - b + b * length / avgdl)`` of every passage."""
        doc_len = np.diff(self._offsets).astype(np.float64)
        return self.k1 * (1.0 - self.b + self.b * doc_len / avgdl)

    def term_stats(self) -> tuple[list[str], np.ndarray, int, int]:
        """``(terms, passage frequencies, passages, total tokens)``: the statistics the IDF
        and the average length come from; terms in order of first appearance.

        Example:
            >>> terms, df, n, length = BM25Index(["red apple", "red car"]).term_stats()
            >>> terms, df.tolist(), n, length
            (['red', 'apple', 'car'], [2, 1, 1], 2, 4)
        """
        df = np.diff(self._indptr).astype(np.int64)
        return list(self._vocab), df, len(self), int(self._ids.size)

    def idf_of(self, term: str) -> float:
        """The IDF of ``term`` (0.0 for a term the passages do not hold)."""
        t = self._vocab.get(term)
        return 0.0 if t is None or t >= len(self._idf) else float(self._idf[t])

    def _check_mask(self, mask: np.ndarray | None) -> np.ndarray | None:
        if mask is None:
            return None
        m = np.asarray(mask)
        if m.dtype != bool or m.shape != (len(self),):
            raise ValueError(
                f"mask must be a bool array of shape ({len(self)},), got {m.dtype} {m.shape}"
            )
        return m

    def scores(self, query: str, mask: np.ndarray | None = None, *,
               idf: Mapping[str, float] | None = None,
               avgdl: float | None = None) -> np.ndarray:
        """One BM25 score per passage; ``-inf`` for passages outside ``mask``.

        The IDF always comes from the whole index; the mask only hides passages. A query
        without tokens (empty, or stopwords only) scores all zeros.

        ``idf`` (term -> IDF, e.g. :func:`okapi_idf`; missing terms count 0) and ``avgdl``
        replace this index's own statistics: a shard of a larger corpus scores its
        passages exactly as one index over the whole corpus would.

        Example:
            >>> bm = BM25Index(["red apple", "green pear", "blue sky", "red car"])
            >>> bm.scores("pear", mask=np.array([True, False, True, True])).tolist()
            [0.0, -inf, 0.0, 0.0]
        """
        m = self._check_mask(mask)
        out = np.zeros(len(self))
        norm = self._norm
        if avgdl is not None and self._ids.size:
            if self._norm_at is None or self._norm_at[0] != avgdl:
                self._norm_at = (avgdl, self._norm_for(avgdl))
            norm = self._norm_at[1]
        for term, count in Counter(self.tokenizer(query)).items():
            t = self._vocab.get(term)
            if t is None or t >= len(self._idf):
                continue
            w = self._idf[t] if idf is None else idf.get(term, 0.0)
            if w == 0.0:
                continue
            lo, hi = self._indptr[t], self._indptr[t + 1]
            docs, tf = self._post_doc[lo:hi], self._post_tf[lo:hi]
            # Passages are unique within one term's postings, so fancy += is safe.
            out[docs] += count * w * tf * (self.k1 + 1.0) / (tf + norm[docs])
        if m is not None:
            out[~m] = -np.inf
        return out

    def top(self, query: str, k: int, mask: np.ndarray | None = None) -> list[tuple[int, float]]:
        """The ``k`` best ``(passage index, score)`` pairs, best first.

        Ties go to the lower index. Passages outside ``mask`` never appear; passages
        that match no query term (score 0) fill up after the matches, so ``k`` pairs come
        back whenever ``k`` passages are visible.

        Example:
            >>> hits = BM25Index(["red apple", "green pear", "blue sky", "red car"]).top("car", 2)
            >>> [(i, round(s, 3)) for i, s in hits]
            [(3, 0.847), (0, 0.0)]
        """
        if k <= 0:
            raise ValueError(f"k must be a positive integer, got {k}")
        s = self.scores(query, mask)
        order = np.argsort(-s, kind="stable")[:k]
        return [(int(i), float(s[i])) for i in order if s[i] != -np.inf]
