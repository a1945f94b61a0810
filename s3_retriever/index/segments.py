"""The in-memory index: immutable segments (codes of every kv-head stream plus token tables)
and the document table; documents are appended as segments and deleted by tombstone.
"""

from __future__ import annotations

import math
import numbers
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import numpy as np

from s3_retriever.index.codes import Codes
from s3_retriever.index.documents import DocRecord
from s3_retriever.index.postings import _MAX_POSITIONS, Postings, _ranges, _readonly
from s3_retriever.validate import is_int as _is_int

__all__ = ['InvertedIndex', 'Segment']


_HOOKPOINT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$")

def _segment_problem(
    codes: Mapping[str, Codes], token_doc: np.ndarray, token_char: np.ndarray,
    bias: Mapping[str, np.ndarray] | None = None,
) -> tuple[str, str] | None:
    """First problem as (part, message), part in token_doc / token_char / a stream name."""
    n = len(token_doc) if token_doc.ndim == 1 else -1
    if token_doc.ndim != 1 or not np.issubdtype(token_doc.dtype, np.integer):
        return "token_doc", f"need 1-D integers, got {token_doc.dtype} {token_doc.shape}"
    if token_char.shape != (n, 2) or not np.issubdtype(token_char.dtype, np.integer):
        return "token_char", f"need integers [{n}, 2], got {token_char.dtype} {token_char.shape}"
    if n and (int(token_doc.min()) < 0 or int(token_doc.max()) >= 2**31):
        return "token_doc", "rows must be in [0, 2**31)"
    if n and (int(token_char.min()) < 0 or int(token_char.max()) >= 2**31
              or np.any(token_char[:, 0] > token_char[:, 1])):
        return "token_char", "bounds must satisfy 0 <= start <= end < 2**31"
    for name, c in codes.items():
        if not isinstance(c, Codes):
            return name, f"expected Codes, got {type(c).__name__}"
        if c.n_tokens != n:
            return name, f"codes for {c.n_tokens} tokens, token_doc has {n}"
    for name, b in (bias or {}).items():
        if name not in codes:
            return name, "bias columns for a stream without codes"
        if b.ndim != 2 or b.shape[0] != n or b.dtype != np.float16:
            return name, f"bias must be float16 [{n}, m], got {b.dtype} {b.shape}"
        if not np.isfinite(b).all():
            return name, "bias holds non-finite values"
    return None


class _LazyPostings(Mapping):
    """Stream name -> :class:`Postings`, each inverted from its codes on first access."""

    def __init__(self, codes: Mapping[str, Codes]) -> None:
        self._codes = codes

    def __getitem__(self, name: str) -> Postings:
        return self._codes[name].postings

    def __iter__(self) -> Iterator[str]:
        return iter(self._codes)

    def __len__(self) -> int:
        return len(self._codes)


class Segment:
    """The codes of every key stream for one batch of tokens, plus the token tables.

    Immutable: arrays are read-only (copied on creation unless already read-only).

    Attributes:
        codes: read-only mapping stream name -> :class:`~s3_retriever.index.codes.Codes`.
        postings: the same streams inverted (built on first access).
        token_doc: int32 ``[n]``, doc-table row of each token (rows local to the batch
            when passed to :meth:`InvertedIndex.add_segment`, global inside the index).
        token_char: int32 ``[n, 2]``, character start/end of each token in its document.
        bias: read-only mapping stream -> float16 ``[n, m]`` exact query-mean columns
            (empty when the index keeps none).
        n_tokens: ``n``.

    Example:
        >>> c = Codes.from_scan(np.array([[0]]), np.ones((1, 1)), 2)
        >>> Segment({"h": c}, [0], [[0, 1]]).n_tokens
        1
    """

    __slots__ = ("_codes", "_bias", "token_doc", "token_char", "n_tokens")

    def __init__(
        self,
        codes: Mapping[str, Codes],
        token_doc: np.ndarray | list[int],
        token_char: np.ndarray | list[list[int]],
        bias: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Raises ValueError on inconsistent sizes, dtypes or bounds (naming the array)."""
        td = np.asarray(token_doc)
        tc = np.asarray(token_char)
        if td.size == 0:
            td = td.astype(np.int32).reshape(0)
            tc = tc.astype(np.int32).reshape(0, 2)
        bias = {h: np.asarray(b) for h, b in (bias or {}).items()}
        problem = _segment_problem(codes, td, tc, bias)
        if problem is not None:
            raise ValueError(f"{problem[0]}: {problem[1]}")
        self._codes = MappingProxyType(dict(codes))
        self._bias = MappingProxyType({h: _readonly(b, np.float16, copy=True)
                                       for h, b in bias.items()})
        self.token_doc = _readonly(td, np.int32, copy=True)
        self.token_char = _readonly(tc, np.int32, copy=True)
        self.n_tokens = len(self.token_doc)

    @classmethod
    def _trusted(cls, codes: Mapping[str, Codes], token_doc: np.ndarray,
                 token_char: np.ndarray, bias: Mapping[str, np.ndarray] | None = None
                 ) -> Segment:
        self = cls.__new__(cls)
        self._codes = MappingProxyType(dict(codes))
        self._bias = MappingProxyType({h: _readonly(b, np.float16, copy=False)
                                       for h, b in (bias or {}).items()})
        self.token_doc = _readonly(token_doc, np.int32, copy=False)
        self.token_char = _readonly(token_char, np.int32, copy=False)
        self.n_tokens = len(self.token_doc)
        return self

    @property
    def codes(self) -> Mapping[str, Codes]:
        """Stream name -> codes (read-only mapping)."""
        return self._codes

    @property
    def postings(self) -> Mapping[str, Postings]:
        """Stream name -> postings, inverted from the codes on first access."""
        return _LazyPostings(self._codes)

    @property
    def bias(self) -> Mapping[str, np.ndarray]:
        """Stream name -> float16 ``[n, m]`` bias columns (read-only mapping, may be empty)."""
        return self._bias

    @property
    def nbytes(self) -> int:
        """Bytes of the codes, bias columns and token tables (what is stored)."""
        return (sum(c.nbytes for c in self._codes.values())
                + sum(int(b.nbytes) for b in self._bias.values()) + int(self.token_doc.nbytes)
                + int(self.token_char.nbytes))

    def __repr__(self) -> str:
        return f"Segment(n_tokens={self.n_tokens}, streams={list(self._codes)})"


def _doc_token_problem(
    token_doc: np.ndarray,
    token_char: np.ndarray,
    ids: list[str],
    starts: np.ndarray,
    ends: np.ndarray,
    text_lens: np.ndarray,
) -> str | None:
    """Check that local rows in ``token_doc`` agree with the documents' token ranges.

    Every token must belong to exactly the document whose range holds it, ranges must not
    overlap, and each token's char bounds must lie within its document's text.
    """
    n, m = len(token_doc), len(ids)
    if n and int(token_doc.min()) < 0:
        t = int(np.argmin(token_doc))
        return f"token {t}: token_doc refers to a document outside this segment's documents"
    if n and int(token_doc.max()) >= m:
        return (f"token_doc refers to document row {int(token_doc.max())}, but there are "
                f"{m} documents")
    bad_range = np.flatnonzero((starts < 0) | (ends < starts) | (ends > n))
    if bad_range.size:
        i = int(bad_range[0])
        return (f"document {ids[i]!r}: token range [{int(starts[i])}, {int(ends[i])}) "
                f"outside the segment's {n} tokens")
    lens = ends - starts
    nonempty = np.flatnonzero(lens > 0)
    order = nonempty[np.argsort(starts[nonempty], kind="stable")]
    overlap = np.flatnonzero(starts[order][1:] < ends[order][:-1])
    if overlap.size:
        a, b = order[overlap[0]], order[overlap[0] + 1]
        return f"documents {ids[a]!r} and {ids[b]!r} have overlapping token ranges"
    expected = np.full(n, -1, dtype=np.int64)
    expected[_ranges(starts, lens)] = np.repeat(np.arange(m, dtype=np.int64), lens)
    wrong = np.flatnonzero(expected != token_doc)
    if wrong.size:
        t = int(wrong[0])
        said = ids[int(token_doc[t])]
        ranged = "no document's range" if expected[t] < 0 else f"{ids[int(expected[t])]!r}'s range"
        return f"token {t}: token_doc says document {said!r}, but it lies in {ranged}"
    if n:
        too_long = np.flatnonzero(token_char[:, 1] > text_lens[token_doc])
        if too_long.size:
            t = int(too_long[0])
            return (f"token {t}: char end {int(token_char[t, 1])} beyond the "
                    f"{int(text_lens[token_doc[t]])} characters of {ids[int(token_doc[t])]!r}")
    return None

class InvertedIndex:
    """Segments of codes plus the doc table: append, tombstone-delete, compact, statistics.

    "Hookpoints" here are key-stream names (``"layers.17.kv0"``); saving and loading are
    in :mod:`s3_retriever.index.persistence`.

    Token positions are segment-local; :meth:`segment_offsets` maps them to a global
    numbering (segment ``s`` starts at ``segment_offsets()[s]``).

    Example:
        >>> codes = np.array([[0, 1], [1, 2], [2, 3]]); acts = np.ones((3, 2))
        >>> seg = Segment({"h": Codes.from_scan(codes, acts, 4)}, [0, 0, 1],
        ...               [[0, 1], [1, 2], [0, 2]])
        >>> index = InvertedIndex(["h"], 4)
        >>> index.add_segment(seg, [DocRecord("a", "ab", token_start=0, token_end=2),
        ...                         DocRecord("b", "cd", token_start=2, token_end=3)])
        0
        >>> index.delete(["b"])
        1
        >>> len(index), index.doc_freq("h").tolist(), index.live_token_mask(0).tolist()
        (1, [1, 2, 1, 0], [True, True, False])
    """

    def __init__(self, hookpoints: list[str], num_latents: dict[str, int] | int,
                 bias_columns: Mapping[str, int] | None = None) -> None:
        """Raises ValueError on empty/duplicate/unsafe hookpoint names or bad sizes.

        ``bias_columns``: hookpoint -> number of dense float16 per-token columns each
        segment must carry for it (default none)."""
        hookpoints = list(hookpoints)
        if not hookpoints:
            raise ValueError("an index needs at least one hookpoint")
        for h in hookpoints:
            if not isinstance(h, str) or not _HOOKPOINT_RE.match(h) or h in (".", ".."):
                raise ValueError(f"bad hookpoint name {h!r} (letters, digits, '_', '.', '-')")
        dups = sorted(h for h, c in Counter(hookpoints).items() if c > 1)
        if dups:
            raise ValueError(f"duplicate hookpoints {dups}")
        if isinstance(num_latents, Mapping):
            if set(num_latents) != set(hookpoints):
                raise ValueError(f"num_latents keys {sorted(num_latents)} differ from "
                                 f"hookpoints {sorted(hookpoints)}")
            sizes = {h: num_latents[h] for h in hookpoints}
        else:
            sizes = dict.fromkeys(hookpoints, num_latents)
        for h, size in sizes.items():
            if not _is_int(size) or size < 1:
                raise ValueError(f"num_latents[{h!r}] must be a positive int, got {size!r}")
        self._hookpoints = tuple(hookpoints)
        self._num_latents = {h: int(s) for h, s in sizes.items()}
        bias_columns = dict(bias_columns or {})
        for h, m in bias_columns.items():
            if h not in self._num_latents or not _is_int(m) or m < 0:
                raise ValueError(f"bias_columns[{h!r}] must be an int >= 0 for a hookpoint of "
                                 f"the index, got {m!r}")
        self._bias_columns = {h: int(m) for h, m in bias_columns.items() if m > 0}
        self._segments: list[Segment] = []
        self._docs: list[DocRecord] = []
        self._live: dict[str, int] = {}
        self._row_live = np.zeros(0, dtype=bool)
        self._clear_caches()

    def _restore(self, segments: list[Segment], docs: list[DocRecord]) -> None:
        """Install segments and records read (and validated) by the persistence layer."""
        self._segments = list(segments)
        self._docs = list(docs)
        self._live = {d.doc_id: row for row, d in enumerate(docs) if not d.deleted}
        self._row_live = np.array([not d.deleted for d in docs], dtype=bool)
        self._clear_caches()

    def _clear_caches(self) -> None:
        self._mask_cache: dict[int, np.ndarray] = {}
        self._df_cache: dict[str, np.ndarray] = {}

    @property
    def bias_columns(self) -> dict[str, int]:
        """Hookpoint -> number of bias columns per token (only hookpoints that have some)."""
        return dict(self._bias_columns)

    # -- read-only views -----------------------------------------------------------------

    @property
    def hookpoints(self) -> tuple[str, ...]:
        """Names of the indexed hookpoints, in order."""
        return self._hookpoints

    @property
    def num_latents(self) -> dict[str, int]:
        """Dictionary size per hookpoint (a copy)."""
        return dict(self._num_latents)

    @property
    def segments(self) -> tuple[Segment, ...]:
        """The segments, by id."""
        return tuple(self._segments)

    @property
    def docs(self) -> tuple[DocRecord, ...]:
        """Every doc-table record in row order, deleted ones included (do not mutate)."""
        return tuple(self._docs)

    @property
    def n_tokens(self) -> int:
        """Tokens in all segments, deleted documents' tokens included."""
        return sum(s.n_tokens for s in self._segments)

    @property
    def n_live_tokens(self) -> int:
        """Tokens of live (non-deleted) documents."""
        return sum(d.token_end - d.token_start for d in self._docs if not d.deleted)

    def segment_offsets(self) -> np.ndarray:
        """int64 ``[n_segments + 1]``: global position of each segment's first token.

        Example:
            >>> InvertedIndex(["h"], 2).segment_offsets().tolist()
            [0]
        """
        out = np.zeros(len(self._segments) + 1, dtype=np.int64)
        np.cumsum([s.n_tokens for s in self._segments], out=out[1:])
        return out

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._live

    def __repr__(self) -> str:
        return (f"InvertedIndex(hookpoints={list(self._hookpoints)}, segments="
                f"{len(self._segments)}, live_docs={len(self)}, tokens={self.n_tokens})")

    def get(self, doc_id: str) -> DocRecord:
        """The live record of ``doc_id`` (do not mutate it).

        Raises:
            KeyError: unknown or deleted id.
        """
        try:
            return self._docs[self._live[doc_id]]
        except KeyError:
            raise KeyError(f"no live document with id {doc_id!r}") from None

    def row_of(self, doc_id: str) -> int:
        """Doc-table row of a live document (``token_doc`` values are rows)."""
        try:
            return self._live[doc_id]
        except KeyError:
            raise KeyError(f"no live document with id {doc_id!r}") from None

    def live_rows(self) -> np.ndarray:
        """int64 rows of the doc table that are not deleted, ascending."""
        return np.flatnonzero(self._row_live).astype(np.int64)

    def live_token_mask(self, segment_id: int) -> np.ndarray:
        """bool ``[n_tokens of the segment]``: True for tokens of non-deleted documents."""
        if not 0 <= segment_id < len(self._segments):
            raise IndexError(f"segment {segment_id} out of range ({len(self._segments)} segments)")
        mask = self._mask_cache.get(segment_id)
        if mask is None:
            mask = self._row_live[self._segments[segment_id].token_doc]
            mask.flags.writeable = False
            self._mask_cache[segment_id] = mask
        return mask

    def _segment_has_deleted(self, segment_id: int) -> bool:
        return not bool(self.live_token_mask(segment_id).all())

    # -- statistics ----------------------------------------------------------------------

    def _check_hookpoint(self, hookpoint: str) -> None:
        if hookpoint not in self._num_latents:
            raise KeyError(f"unknown hookpoint {hookpoint!r}; index has {list(self._hookpoints)}")

    def doc_freq(self, hookpoint: str) -> np.ndarray:
        """int64 ``[num_latents]``: live tokens where each feature fired, over all segments.

        Exact: tokens of deleted documents are not counted (an O(nnz) pass over the
        segments that have deletions, cached until the next add/delete/compact).
        """
        self._check_hookpoint(hookpoint)
        df = self._df_cache.get(hookpoint)
        if df is None:
            df = np.zeros(self._num_latents[hookpoint], dtype=np.int64)
            for s, seg in enumerate(self._segments):
                p = seg.postings[hookpoint]
                if not self._segment_has_deleted(s):
                    df += np.diff(p.indptr)
                    continue
                live = self.live_token_mask(s)[p.positions]
                cum = np.zeros(p.nnz + 1, dtype=np.int64)
                np.cumsum(live, out=cum[1:])
                df += cum[p.indptr[1:]] - cum[p.indptr[:-1]]
            df.flags.writeable = False
            self._df_cache[hookpoint] = df
        return df

    def idf(self, hookpoint: str) -> np.ndarray:
        """float32 ``log((N + 1) / (df + 1)) + 1`` with ``N`` = live tokens.

        Example:
            >>> InvertedIndex(["h"], 2).idf("h").tolist()
            [1.0, 1.0]
        """
        df = self.doc_freq(hookpoint)
        n = self.n_live_tokens
        return (np.log((n + 1.0) / (df + 1.0)) + 1.0).astype(np.float32)

    def pruned(self, hookpoint: str, max_df_fraction: float) -> np.ndarray:
        """bool ``[num_latents]``: features whose df exceeds ``max_df_fraction`` * live tokens.

        Raises:
            ValueError: ``max_df_fraction`` is negative or not finite.
        """
        if not isinstance(max_df_fraction, numbers.Real) or not (
            math.isfinite(max_df_fraction) and max_df_fraction >= 0
        ):
            raise ValueError(f"max_df_fraction must be a finite number >= 0, got "
                             f"{max_df_fraction!r}")
        return self.doc_freq(hookpoint) > max_df_fraction * self.n_live_tokens

    # -- mutation ------------------------------------------------------------------------

    def add_segment(self, segment: Segment, docs: list[DocRecord]) -> int:
        """Append a segment and its documents; return the new segment id.

        ``segment.token_doc`` holds rows into ``docs`` (``0..len(docs)-1``); the index
        stores them translated to doc-table rows. Each doc's ``token_start/token_end`` is
        its range within the segment, and every token must belong to the doc whose range
        holds it. The records are copied with ``segment`` set and ``deleted=False``.
        Everything is validated before anything changes.

        Raises:
            TypeError: not a Segment / DocRecords.
            ValueError: no docs; duplicate ids (among ``docs`` or with live documents; a
                deleted id may be re-added); hookpoints or sizes differ from the index;
                token tables disagree with the documents; unsaveable metadata.
        """
        if not isinstance(segment, Segment):
            raise TypeError(f"expected a Segment, got {type(segment).__name__}")
        docs = list(docs)
        if not docs:
            raise ValueError("add_segment: no documents")
        for d in docs:
            if not isinstance(d, DocRecord):
                raise TypeError(f"expected DocRecord, got {type(d).__name__}")
        names = set(segment.codes)
        if names != set(self._hookpoints):
            raise ValueError(f"segment hookpoints differ from the index: missing "
                             f"{sorted(set(self._hookpoints) - names)}, extra "
                             f"{sorted(names - set(self._hookpoints))}")
        for h, c in segment.codes.items():
            if c.num_latents != self._num_latents[h]:
                raise ValueError(f"stream {h!r}: {c.num_latents} latents, index has "
                                 f"{self._num_latents[h]}")
        got = {h: b.shape[1] for h, b in segment.bias.items() if b.shape[1]}
        if got != self._bias_columns:
            raise ValueError(f"segment bias columns {got} differ from the index's "
                             f"{self._bias_columns}")
        for d in docs:
            d.validate()
        ids = [d.doc_id for d in docs]
        dups = sorted(i for i, c in Counter(ids).items() if c > 1)
        if dups:
            raise ValueError(f"duplicate document ids in the batch: {dups}")
        present = sorted(i for i in ids if i in self._live)
        if present:
            raise ValueError(f"document ids already in the index: {present}")
        base = len(self._docs)
        if base + len(docs) >= 2**31:
            raise ValueError("the doc table is full (2**31 rows)")
        problem = _doc_token_problem(
            segment.token_doc, segment.token_char, ids,
            np.array([d.token_start for d in docs], dtype=np.int64),
            np.array([d.token_end for d in docs], dtype=np.int64),
            np.array([len(d.text) for d in docs], dtype=np.int64),
        )
        if problem is not None:
            raise ValueError(f"add_segment: {problem}")

        seg_id = len(self._segments)
        self._segments.append(Segment._trusted(
            segment.codes, (segment.token_doc.astype(np.int64) + base).astype(np.int32),
            segment.token_char, {h: segment.bias[h] for h in self._bias_columns}))
        for row, d in enumerate(docs, start=base):
            self._docs.append(replace(d, segment=seg_id, deleted=False,
                                      metadata=dict(d.metadata),
                                      sentences=[(int(a), int(b)) for a, b in d.sentences]))
            self._live[d.doc_id] = row
        self._row_live = np.concatenate([self._row_live, np.ones(len(docs), dtype=bool)])
        self._df_cache.clear()
        return seg_id

    def delete(self, doc_ids: Iterable[str]) -> int:
        """Tombstone live documents; all or nothing. Returns how many were deleted.

        A single ``str`` is taken as one id. Repeated ids count once.

        Raises:
            KeyError: some ids are unknown (or already deleted); nothing is deleted.
        """
        if isinstance(doc_ids, str):
            doc_ids = [doc_ids]
        ids = list(dict.fromkeys(doc_ids))
        unknown = [i for i in ids if i not in self._live]
        if unknown:
            shown = ", ".join(repr(i) for i in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise KeyError(f"unknown document ids: {shown}{more}; nothing deleted")
        for i in ids:
            row = self._live.pop(i)
            self._docs[row] = replace(self._docs[row], deleted=True)
            self._row_live[row] = False
            self._mask_cache.pop(self._docs[row].segment, None)
        if ids:
            self._df_cache.clear()
        return len(ids)

    def compact(self) -> None:
        """Merge all segments into one and drop deleted documents (rows are renumbered).

        Loads every array into memory. Nothing changes if it fails (e.g. over 2**32 live
        tokens). Afterwards ``docs`` holds only live documents, all in segment 0.
        """
        if len(self._segments) <= 1 and bool(self._row_live.all()):
            return
        live_rows = self.live_rows()
        row_map = np.full(len(self._docs), -1, dtype=np.int64)
        row_map[live_rows] = np.arange(len(live_rows))
        keeps = [self.live_token_mask(s) for s in range(len(self._segments))]
        total = sum(int(k.sum()) for k in keeps)
        if total > _MAX_POSITIONS:
            raise ValueError(f"compact: {total} live tokens, a segment holds at most 2**32")
        new_docs: list[DocRecord] = []
        if total or len(live_rows):
            seg_start = np.cumsum([0] + [int(k.sum()) for k in keeps])
            kept_before = [np.concatenate([[0], np.cumsum(k, dtype=np.int64)]) for k in keeps]
            for row in live_rows:
                d = self._docs[row]
                kb, off = kept_before[d.segment], int(seg_start[d.segment])
                new_docs.append(replace(d, segment=0,
                                        token_start=off + int(kb[d.token_start]),
                                        token_end=off + int(kb[d.token_end])))
            codes = {
                h: Codes.concat([seg.codes[h] if k.all() else seg.codes[h].take(k)
                                 for seg, k in zip(self._segments, keeps, strict=True)])
                for h in self._hookpoints
            }
            token_doc = np.concatenate([row_map[seg.token_doc[k]]
                                        for seg, k in zip(self._segments, keeps, strict=True)])
            token_char = np.concatenate([seg.token_char[k]
                                         for seg, k in zip(self._segments, keeps, strict=True)])
            bias = {h: np.concatenate([seg.bias[h][k] for seg, k in
                                       zip(self._segments, keeps, strict=True)])
                    for h in self._bias_columns}
            new_segments = [Segment._trusted(codes, token_doc.astype(np.int32), token_char,
                                             bias)]
        else:
            new_segments = []
        self._segments = new_segments
        self._docs = new_docs
        self._live = {d.doc_id: row for row, d in enumerate(new_docs)}
        self._row_live = np.ones(len(new_docs), dtype=bool)
        self._clear_caches()

    # -- size ----------------------------------------------------------------------------

    def nbytes(self) -> int:
        """Bytes of all codes, bias columns and token tables (memory-mapped ones included;
        document texts and the doc table are not counted)."""
        return sum(s.nbytes for s in self._segments)

    def bytes_per_token(self) -> float:
        """:meth:`nbytes` per indexed token (0.0 when empty)."""
        n = self.n_tokens
        return self.nbytes() / n if n else 0.0

    def stats(self) -> dict[str, Any]:
        """Counts and sizes, JSON-serialisable.

        Example:
            >>> InvertedIndex(["h"], 8).stats()["num_latents"]
            {'h': 8}
        """
        codes_bytes = sum(c.nbytes for s in self._segments for c in s.codes.values())
        return {
            "hookpoints": list(self._hookpoints),
            "num_latents": dict(self._num_latents),
            "bias_columns": dict(self._bias_columns),
            "segments": len(self._segments),
            "docs": len(self._docs),
            "live_docs": len(self),
            "deleted_docs": len(self._docs) - len(self),
            "tokens": self.n_tokens,
            "live_tokens": self.n_live_tokens,
            "codes_bytes": codes_bytes,
            "other_bytes": self.nbytes() - codes_bytes,
            "bytes": self.nbytes(),
            "bytes_per_token": self.bytes_per_token(),
            "text_chars": sum(len(d.text) for d in self._docs),
        }
