"""Evidence spans: sentence bounds, per-sentence scores, span growth and budget packing.

The engine turns per-token S3 scores of one document into spans like this:

1. :func:`split_sentences` gives the sentences' character bounds;
2. :func:`token_sentence_map` assigns every token to a sentence;
3. :func:`smooth` and :func:`sentence_scores` turn token scores into sentence scores
   (optionally fused with BM25 by :func:`s3_retriever.lexical.fuse`);
4. :func:`grow_spans` grows non-overlapping spans around the best sentences and
   :func:`spans_for_document` turns them into :class:`Span` objects with exact offsets;
5. across documents, :func:`pack_spans` ranks spans and fills ``k`` or a token budget, and
   :func:`order_for_prompt` / :func:`merge_adjacent` put them in reading order.

Example:
    >>> import numpy as np
    >>> text = "Paris is in France. It is large. Bananas are yellow."
    >>> sents = split_sentences(text)
    >>> [text[a:b] for a, b in sents]
    ['Paris is in France.', 'It is large.', 'Bananas are yellow.']
    >>> grow_spans(np.array([0.9, 0.5, 0.1]), sents, np.array([5, 4, 4]), span_tokens=9)
    [(0, 2, 0.9), (2, 3, 0.1)]
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from s3_retriever.errors import InvalidInputError

__all__ = [
    "Span",
    "grow_spans",
    "grown_span_keys",
    "merge_adjacent",
    "order_for_prompt",
    "pack_spans",
    "select_for_packing",
    "sentence_max_scores",
    "sentence_scores",
    "sentence_token_counts",
    "smooth",
    "spans_for_document",
    "split_sentences",
    "token_sentence_map",
]


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


# --------------------------------------------------------------------------- sentences

# Lower-case, without the final period. Multi-dot ones ("e.g", "u.s") are also caught by
# the dotted-acronym rule; listed anyway for clarity.
_ABBREVIATIONS = frozenset(
    """
    mr mrs ms mx dr st jr sr vs etc e.g i.e u.s u.k u.n no nos inc ltd co corp mt ft gen col
    lt sgt capt cpt cmdr adm maj prof rev hon gov sen rep pres fr sr sra srta messrs
    jan feb mar apr jun jul aug sep sept oct nov dec
    fig figs vol vols ch chap sec pp approx ca cf al ed eds est dept univ assn bros ave blvd
    rd hwy ph.d a.m p.m a.d b.c
    """.split()
)
_OPENERS = "\"'“‘«([{"
_CLOSERS = "\"'”’»)]}"
# Sentence-final punctuation, optional closing quotes/brackets, then whitespace.
_END_RE = re.compile(r"[.!?]+[\"'”’»)\]}]*\s+")
_BLANK_LINE_RE = re.compile(r"\n[^\S\n]*\n")
_NONSPACE_RE = re.compile(r"\S")
_INITIAL_RE = re.compile(r"[^\W\d_]")  # one letter (any script); upper case checked apart
_ACRONYM_RE = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")  # U.S, e.g, i.e, Ph.D
_LIST_ITEM_RE = re.compile(r"(?:[-*+•‣◦▪–]|\d{1,3}[.)]|\(?[a-zA-Z0-9]{1,2}\))\s")
_LINE_END_PUNCT = ".!?,;:…"
_HEADING_MAX_CHARS = 60
_LOOKBACK = 40  # chars scanned back for the word before a period (keeps the split linear)


def _is_abbreviation(text: str, dot: int) -> bool:
    """Whether the period at ``text[dot]`` ends an abbreviation, initial or list number."""
    lo = max(0, dot - _LOOKBACK)
    before = text[lo:dot]
    ws = max(before.rfind(" "), before.rfind("\n"), before.rfind("\t"), before.rfind("\r"))
    word = before[ws + 1:].lstrip(_OPENERS)
    if not word:
        return False
    if word.lower() in _ABBREVIATIONS or _ACRONYM_RE.fullmatch(word):
        return True
    if len(word) == 1 and _INITIAL_RE.match(word) and word.isupper():
        return True  # "J. R. R. Tolkien", "George W. Bush"
    if word.isdigit() and len(word) <= 3:
        # "1. First item": a list number at the start of a line is not a sentence end.
        line_start = text.rfind("\n", 0, dot - len(word)) + 1
        return not text[line_start:dot - len(word)].strip()
    return False


def _line_cuts(text: str) -> list[int]:
    """Cut positions at single newlines that end a heading or a list item."""
    cuts = []
    lines = text.split("\n")
    offset = 0
    prev = ""  # the previous line, stripped
    for i, line in enumerate(lines[:-1]):
        end = offset + len(line)  # the newline's position
        cur = line.strip()
        nxt = lines[i + 1].lstrip()
        if cur and nxt:
            cut = False
            starts_new = nxt[0].isupper() or nxt[0].isdigit() or nxt[0] in _OPENERS + "#"
            if cur.startswith("#") or _LIST_ITEM_RE.match(nxt + " "):
                cut = True  # a markdown heading ends, or a list item starts
            elif _LIST_ITEM_RE.match(cur + " ") and starts_new:
                cut = True  # a list item ends (a lower-case next line continues it)
            elif (
                len(cur) <= _HEADING_MAX_CHARS
                and cur.rstrip(_CLOSERS)[-1:] not in _LINE_END_PUNCT
                and starts_new
                and (
                    not prev
                    or prev.rstrip(_CLOSERS)[-1:] in ".!?:"
                    or prev.startswith("#")
                    or _LIST_ITEM_RE.match(prev + " ")
                )
            ):
                cut = True  # a short title-like line after a paragraph end
            if cut:
                cuts.append(end)
        prev = cur
        offset = end + 1
    return cuts


def split_sentences(text: str, *, max_chars: int = 1000) -> list[tuple[int, int]]:
    """Character bounds ``(start, end)`` of the sentences of ``text``.

    Rule-based and linear in ``len(text)``. The bounds are in order, do not overlap,
    exclude leading/trailing whitespace and together cover every non-whitespace character.

    A sentence ends:

    * after ``.``, ``!`` or ``?`` (optionally followed by closing quotes/brackets) when
      whitespace and then an upper-case letter, a digit or an opening quote/bracket
      follow -- except after a common abbreviation (Mr., Dr., e.g., U.S., Jan., Inc., ...),
      a single capital initial ("J. R. R. Tolkien") or a list number at a line start
      ("1. Item"); decimals ("3.14") never split as no whitespace follows the period;
    * at a blank line, always;
    * at a single newline that ends a markdown heading (``#``) or a list item, or
      precedes a list item (``-``, ``*``, ``1.``, ``a)``), or that ends a short
      (<= 60 chars) line without final punctuation that follows a blank line, a sentence
      end, a heading or a list item and is followed by a capitalised line (a heading such
      as "Early life"; in hard-wrapped prose a short line after a line ending in a period
      can be taken for one);
    * where a sentence is longer than ``max_chars``: at the last whitespace before the
      limit, or hard at the limit when there is none.

    Args:
        text: the document text.
        max_chars: the longest sentence kept whole (>= 1).

    Returns:
        a list of ``(start, end)`` pairs, ``end`` exclusive; empty for blank text.

    Example:
        >>> t = "Dr. Smith paid $3.50 at 5 p.m. on Jan. 3. He left! Did he?"
        >>> [t[a:b] for a, b in split_sentences(t)]
        ['Dr. Smith paid $3.50 at 5 p.m. on Jan. 3.', 'He left!', 'Did he?']
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    n = len(text)
    cuts = [0, n]
    for m in _END_RE.finditer(text):
        after = m.end()
        if after >= n:
            continue
        nxt = text[after]
        if not (nxt.isupper() or nxt.isdigit() or nxt in _OPENERS):
            continue
        punct_end = m.start()
        while punct_end < n and text[punct_end] in ".!?":
            punct_end += 1
        if punct_end - m.start() == 1 and text[m.start()] == "." and _is_abbreviation(
            text, m.start()
        ):
            continue
        cuts.append(m.start() + len(m.group().rstrip()))  # after the punctuation and closers
    cuts.extend(m.start() for m in _BLANK_LINE_RE.finditer(text))
    cuts.extend(_line_cuts(text))
    cuts = sorted(set(cuts))

    out: list[tuple[int, int]] = []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        seg = text[a:b]
        stripped = seg.lstrip()
        start = a + len(seg) - len(stripped)
        end = start + len(stripped.rstrip())
        while end - start > max_chars:
            piece_end = text.rfind(" ", start + 1, start + max_chars + 1)
            for ws in ("\n", "\t", "\r", "\u00a0"):
                piece_end = max(piece_end, text.rfind(ws, start + 1, start + max_chars + 1))
            if piece_end <= start:
                piece_end = start + max_chars  # no whitespace: hard cut
            piece = text[start:piece_end].rstrip()
            out.append((start, start + len(piece)))
            m = _NONSPACE_RE.search(text, piece_end, end)
            start = m.start() if m else end
        if end > start:
            out.append((start, end))
    return out


# --------------------------------------------------------------------------- scores


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


def sentence_scores(
    token_scores: np.ndarray,
    token_sentence: np.ndarray,
    n_sentences: int,
    reduce: str = "max",
) -> np.ndarray:
    """Reduce token scores to one score per sentence.

    Tokens with sentence index ``-1`` are ignored. A sentence without tokens gets
    ``-inf`` for both reductions, so it can never seed a span.

    Args:
        token_scores: ``[n_tokens]`` scores (e.g. smoothed S3 scores).
        token_sentence: ``[n_tokens]`` sentence index per token (:func:`token_sentence_map`).
        n_sentences: the number of sentences.
        reduce: ``"max"`` or ``"mean"``.

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
    if reduce not in ("max", "mean"):
        raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")
    counts = sentence_token_counts(ts, n_sentences)
    keep = ts >= 0
    out = np.full(n_sentences, -np.inf)
    if reduce == "max":
        np.maximum.at(out, ts[keep], s[keep])
    else:
        sums = np.bincount(ts[keep], weights=s[keep], minlength=n_sentences)
        has = counts > 0
        out[has] = sums[has] / counts[has]
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
    su = sentence_scores(smooth(token_scores, window), token_sentence, n_sentences,
                         reduce="max")
    return np.where(np.isfinite(su), su, 0.0)


# --------------------------------------------------------------------------- growth


def grow_spans(
    sentence_scores: np.ndarray,
    sentences: Sequence[tuple[int, int]],
    sentence_tokens: np.ndarray,
    *,
    span_tokens: int = 96,
    max_spans: int | None = None,
    min_score: float = -math.inf,
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
            left_open = left_open and lo > 0 and not used[lo - 1]
            right_open = right_open and hi < n and not used[hi]
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


# --------------------------------------------------------------------------- packing


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
    out: list[Span] = []
    left = budget_tokens
    for s in ranked:
        if s.n_tokens <= left:
            out.append(s)
            left -= s.n_tokens
            if (k is not None and len(out) >= k) or left == 0:
                break
    return out


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
    if budget_tokens is None:
        return np.sort(order if k is None else order[:k])
    if (nt < 0).any() or budget_tokens < nt.min():
        return None
    ranked = nt[order]
    chosen: list[int] = []
    left, j = budget_tokens, 0
    while j < len(order):
        fits = np.flatnonzero(ranked[j:] <= left)
        if fits.size == 0:
            break
        j += int(fits[0])
        chosen.append(int(order[j]))
        left -= int(ranked[j])
        j += 1
        if (k is not None and len(chosen) >= k) or left == 0:
            break
    return np.sort(np.asarray(chosen, dtype=np.int64))


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


def _max_opt(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


def merge_adjacent(
    spans: Sequence[Span],
    doc_texts: Mapping[str, str],
    doc_order: Mapping[str, int] | Sequence[str] | None = None,
) -> list[Span]:
    """Merge spans of the same document that overlap or touch, in reading order.

    Two spans touch when only whitespace lies between them in the document text. The
    merged span takes its text from ``doc_texts`` (exact offsets), the maximum of the
    scores, the first span's metadata, and the union of the token bounds (``None`` if
    either span lacks them). The result is in :func:`order_for_prompt` order.

    Example:
        >>> t = "One. Two. Three."
        >>> sp = [Span("d", 5, 9, "Two.", 0.9), Span("d", 0, 4, "One.", 0.4)]
        >>> [(s.text, s.score) for s in merge_adjacent(sp, {"d": t})]
        [('One. Two.', 0.9)]
    """
    out: list[Span] = []
    for s in order_for_prompt(spans, doc_order):
        prev = out[-1] if out else None
        if prev is not None and prev.doc_id == s.doc_id:
            if s.doc_id not in doc_texts:
                raise KeyError(f"no text for document {s.doc_id!r} in doc_texts")
            doc = doc_texts[s.doc_id]
            if s.start_char <= prev.end_char or not doc[prev.end_char:s.start_char].strip():
                end = max(prev.end_char, s.end_char)
                tokens = None not in (prev.start_token, s.start_token)
                out[-1] = Span(
                    doc_id=prev.doc_id,
                    start_char=prev.start_char,
                    end_char=end,
                    text=doc[prev.start_char:end],
                    score=max(prev.score, s.score),
                    s3_score=_max_opt(prev.s3_score, s.s3_score),
                    bm25_score=_max_opt(prev.bm25_score, s.bm25_score),
                    metadata=prev.metadata,
                    start_token=min(prev.start_token, s.start_token) if tokens else None,
                    end_token=max(prev.end_token, s.end_token) if tokens else None,
                )
                continue
        out.append(s)
    return out
