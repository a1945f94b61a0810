"""The CPU inverted index: SAE feature id -> token positions and activations.

Layout, bottom to top:

* :class:`Postings` -- one hookpoint (e.g. ``"layers.17.kv0"``) of one segment, in CSR
  form: for feature ``f``, ``positions[indptr[f]:indptr[f+1]]`` are the segment-local
  token positions (ascending) where ``f`` fired, ``acts`` its activations (float16, > 0).
* :class:`Segment` -- the postings of every hookpoint for one batch of documents, plus two
  token tables: ``token_doc`` (row of the doc table of each token) and ``token_char``
  (character bounds of each token inside its document). Immutable.
* :class:`DocRecord` -- one document: id, text, metadata, token range, sentence bounds.
* :class:`InvertedIndex` -- an append-only list of segments plus the doc table;
  documents are deleted by tombstone and dropped for good by :meth:`InvertedIndex.compact`.

On disk (``InvertedIndex.save`` / ``load``, layout ``index_layout_version``)::

    docs.jsonl                                    one DocRecord per line, table order
    segments.json                                 layout version, hookpoints, per-segment sizes
    tokens/seg000000.doc.npy                      int32 [n]     token -> doc-table row
    tokens/seg000000.char.npy                     int32 [n, 2]  token -> char start, end
    postings/seg000000/<hookpoint>.indptr.npy     int64 [num_latents + 1]
    postings/seg000000/<hookpoint>.positions.npy  uint32 [nnz]
    postings/seg000000/<hookpoint>.acts.npy       float16 [nnz]
    postings/seg000000/<hookpoint>.bias.npy       float16 [n, m]  (only if m = bias_columns > 0)

A hookpoint may carry ``m`` dense per-token *bias* columns next to its postings: the engine
stores there the exact dot product of each token's key with the mean query of each scoring
head (the query-mean term of the attention logit, which the sparse codes approximate badly).

``save`` writes no manifest: the engine calls it inside :func:`s3_retriever.storage.commit`,
which adds the manifest and publishes the folder atomically.

Example:
    >>> import numpy as np
    >>> ids = np.array([[1, 2], [2, 0]]); acts = np.array([[0.5, 0.25], [1.0, 0.0]])
    >>> seg = Segment({"layers.0.kv0": Postings.from_codes(ids, acts, num_latents=4)},
    ...               token_doc=[0, 0], token_char=[[0, 2], [3, 5]])
    >>> index = InvertedIndex(["layers.0.kv0"], num_latents=4)
    >>> index.add_segment(seg, [DocRecord("d1", "hi yo", token_start=0, token_end=2)])
    0
    >>> index.doc_freq("layers.0.kv0").tolist()
    [0, 1, 2, 0]
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from .storage import (
    IndexFormatError,
    load_npy,
    read_json,
    read_jsonl,
    save_npy,
    write_json,
    write_jsonl,
)

__all__ = [
    "DocRecord",
    "InvertedIndex",
    "Postings",
    "Segment",
    "index_layout_version",
]

index_layout_version = 1

_MAX_POSITIONS = 2**32  # positions are uint32, so a segment holds at most 2**32 tokens
_INVERT_ROWS = 1 << 16  # rows inverted at once by Postings.from_codes
_F16_MAX = float(np.finfo(np.float16).max)
_HOOKPOINT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$")
_DOC_KEYS = ("doc_id", "text", "metadata", "segment", "token_start", "token_end", "sentences",
             "deleted")


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for every (s, n), without a Python loop."""
    lens = np.asarray(lens, dtype=np.int64)
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    firsts = np.cumsum(lens) - lens
    return (np.arange(total, dtype=np.int64) - np.repeat(firsts, lens)
            + np.repeat(np.asarray(starts, dtype=np.int64), lens))


def _readonly(a: np.ndarray, dtype: Any, *, copy: bool) -> np.ndarray:
    """``a`` as ``dtype``, read-only; copied when the caller could still write to it."""
    out = np.asarray(a)
    if out.dtype != dtype:
        out = out.astype(dtype)
    elif copy and out.flags.writeable:
        out = out.copy()
    out.flags.writeable = False
    return out


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _postings_problem(
    indptr: np.ndarray, positions: np.ndarray, acts: np.ndarray, n_tokens: int, full: bool
) -> tuple[str, str] | None:
    """First problem found as (part, message), part in indptr/positions/acts; else None.

    ``full`` adds the O(nnz) content checks (positions in range and ascending, acts > 0).
    """
    if indptr.ndim != 1 or indptr.dtype != np.int64 or len(indptr) < 2:
        return "indptr", f"need int64 [num_latents + 1], got {indptr.dtype} {indptr.shape}"
    if positions.ndim != 1 or positions.dtype != np.uint32:
        return "positions", f"need uint32 [nnz], got {positions.dtype} {positions.shape}"
    if acts.ndim != 1 or acts.dtype != np.float16:
        return "acts", f"need float16 [nnz], got {acts.dtype} {acts.shape}"
    if len(acts) != len(positions):
        return "acts", f"{len(acts)} activations for {len(positions)} positions"
    if indptr[0] != 0 or indptr[-1] != len(positions):
        return "indptr", (f"must run from 0 to nnz={len(positions)}, "
                          f"runs from {indptr[0]} to {indptr[-1]}")
    if np.any(np.diff(indptr) < 0):
        return "indptr", "not non-decreasing"
    if not full or len(positions) == 0:
        return None
    if int(positions.max()) >= n_tokens:
        return "positions", f"position {int(positions.max())} >= n_tokens={n_tokens}"
    if not np.all(acts > 0) or not np.all(np.isfinite(acts)):
        return "acts", "activations must be finite and > 0"
    ascending = np.diff(positions.astype(np.int64)) > 0
    starts = indptr[1:-1]
    starts = starts[(starts > 0) & (starts < len(positions))]
    ascending[starts - 1] = True  # a new feature may restart from any position
    if not np.all(ascending):
        return "positions", "not strictly ascending within a feature"
    return None


class Postings:
    """CSR postings of one hookpoint within one segment.

    Attributes:
        indptr: int64 ``[num_latents + 1]``; feature ``f`` owns entries
            ``indptr[f]:indptr[f + 1]``.
        positions: uint32 ``[nnz]``, segment-local token positions, strictly ascending
            within each feature.
        acts: float16 ``[nnz]``, activations, all > 0 (entries with act <= 0 are not stored).
        n_tokens: tokens in the segment (some may store no entries).

    Arrays are read-only. Build with :meth:`from_codes`.

    Example:
        >>> p = Postings.from_codes(np.array([[3, 1], [1, 0]]), np.array([[2.0, 1.0], [0.5, 0]]),
        ...                         num_latents=4)
        >>> p.nnz, p.doc_freq().tolist()
        (3, [0, 2, 0, 1])
        >>> pos, acts, which = p.gather(np.array([1, 3]))
        >>> pos.tolist(), acts.tolist(), which.tolist()
        ([0, 1, 0], [1.0, 0.5, 2.0], [0, 0, 1])
        >>> ids, acts = p.to_codes(2)
        >>> ids.tolist(), acts.tolist()
        ([[3, 1], [1, 0]], [[2.0, 1.0], [0.5, 0.0]])
    """

    __slots__ = ("_indptr", "_positions", "_acts", "n_tokens", "_codes", "_num_latents", "_nnz",
                 "_dropped_k")

    def __init__(
        self,
        indptr: np.ndarray,
        positions: np.ndarray,
        acts: np.ndarray,
        n_tokens: int,
        *,
        check: bool = True,
    ) -> None:
        """Wrap CSR arrays (copied unless already read-only), validating them.

        Raises:
            ValueError: inconsistent arrays; the message names the array.
        """
        if not _is_int(n_tokens) or not 0 <= n_tokens <= _MAX_POSITIONS:
            raise ValueError(f"n_tokens must be an int in [0, 2**32], got {n_tokens!r}")
        positions = np.asarray(positions)
        if positions.dtype != np.uint32 and positions.size:
            if not np.issubdtype(positions.dtype, np.integer):
                raise ValueError(f"positions: need integers, got {positions.dtype}")
            if int(positions.min()) < 0 or int(positions.max()) >= _MAX_POSITIONS:
                raise ValueError("positions: out of the uint32 range")
        indptr = _readonly(indptr, np.int64, copy=True)
        positions = _readonly(positions, np.uint32, copy=True)
        acts = np.asarray(acts)
        if acts.dtype != np.float16:
            acts = np.minimum(acts, _F16_MAX)  # clip instead of overflowing to inf
        self._set_inverted(indptr, positions, _readonly(acts, np.float16, copy=True))
        self.n_tokens = int(n_tokens)
        self._codes: dict[tuple[int, bool], tuple[np.ndarray, np.ndarray]] = {}
        self._dropped_k: int | None = None
        problem = _postings_problem(self.indptr, self.positions, self.acts, self.n_tokens, check)
        if problem is not None:
            raise ValueError(f"{problem[0]}: {problem[1]}")

    @classmethod
    def _trusted(cls, indptr: np.ndarray, positions: np.ndarray, acts: np.ndarray,
                 n_tokens: int) -> Postings:
        """Wrap arrays this module just built (right dtypes, consistent): no copies, no checks."""
        self = cls.__new__(cls)
        for a in (indptr, positions, acts):
            a.flags.writeable = False
        self._set_inverted(indptr, positions, acts)
        self.n_tokens = int(n_tokens)
        self._codes = {}
        self._dropped_k = None
        return self

    def _set_inverted(self, indptr: np.ndarray, positions: np.ndarray,
                      acts: np.ndarray) -> None:
        self._positions, self._acts = positions, acts
        self._indptr = indptr  # set last: a non-None indptr means all three are present
        self._num_latents = len(indptr) - 1
        self._nnz = len(positions)

    def _inverted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The CSR arrays, rebuilt from the kept forward view if they were dropped."""
        if self._indptr is None:
            ids, acts = self._codes[(self._dropped_k, True)]
            p = Postings.from_codes(ids, acts, self._num_latents)
            self._set_inverted(p._indptr, p._positions, p._acts)
        return self._indptr, self._positions, self._acts

    @property
    def indptr(self) -> np.ndarray:
        """int64 ``[num_latents + 1]``: feature ``f`` owns ``indptr[f]:indptr[f + 1]``."""
        return self._inverted()[0]

    @property
    def positions(self) -> np.ndarray:
        """uint32 ``[nnz]`` segment-local positions, ascending within each feature."""
        return self._inverted()[1]

    @property
    def acts(self) -> np.ndarray:
        """float16 ``[nnz]`` activations (all > 0)."""
        return self._inverted()[2]

    @property
    def inverted_in_memory(self) -> bool:
        """False while the CSR arrays are dropped (see :meth:`drop_inverted`)."""
        return self._indptr is not None

    def drop_inverted(self, k: int) -> bool:
        """Keep only the compact forward view of ``k`` in memory.

        The attention scorer reads per-position codes only (:meth:`to_codes` with
        ``compact``), so once that view exists the CSR arrays are dead weight: they are
        dropped here and rebuilt from the view, identical, the next time anything reads
        them (co-activation scoring, document frequencies, saving, compaction). Nothing
        is dropped when the view of ``k`` would lose entries (a row with more than ``k``).
        Returns whether the CSR arrays are now dropped.

        Example:
            >>> p = Postings.from_codes(np.array([[2, 0]]), np.array([[1.0, 3.0]]), 3)
            >>> p.drop_inverted(2), p.inverted_in_memory, p.indptr.tolist()
            (True, False, [0, 1, 1, 2])
        """
        if self._indptr is None:
            return True
        ids, acts = self.to_codes(k, compact=True)
        if int(np.count_nonzero(acts)) != self._nnz:
            return False
        self._dropped_k = k
        self._indptr = None  # first: from here on, readers rebuild
        self._positions = self._acts = None
        return True

    @classmethod
    def from_codes(cls, ids: np.ndarray, acts: np.ndarray, num_latents: int) -> Postings:
        """Invert forward codes: row ``i`` of ``ids``/``acts`` holds token ``i``'s k features.

        Activations are stored as float16 (clipped to its maximum); entries whose stored
        activation is <= 0 (including float16 underflow) are dropped.

        Raises:
            ValueError: shapes differ or are not 2-D, ids are not integers or outside
                ``[0, num_latents)``, an activation is NaN, or a feature repeats within a
                row with a positive activation.

        Example:
            >>> p = Postings.from_codes(np.array([[0, 2]]), np.array([[1.5, 0.0]]), 3)
            >>> p.indptr.tolist(), p.positions.tolist(), p.acts.tolist()
            ([0, 1, 1, 1], [0], [1.5])
        """
        ids = np.asarray(ids)
        acts = np.asarray(acts)
        if ids.ndim != 2 or ids.shape != acts.shape:
            raise ValueError(f"ids and acts must be 2-D of equal shape, got {ids.shape} and "
                             f"{acts.shape}")
        if not _is_int(num_latents) or num_latents < 1:
            raise ValueError(f"num_latents must be a positive int, got {num_latents!r}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be integers, got {ids.dtype}")
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= num_latents):
            bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
            raise ValueError(f"feature id {bad} outside [0, {num_latents})")
        n, k = ids.shape
        if n > _MAX_POSITIONS:
            raise ValueError(f"{n} tokens: a segment holds at most 2**32")
        if np.isnan(acts).any():
            raise ValueError("acts contain NaN")
        # Inverted in blocks of rows and joined (Postings.concat gives the same arrays as
        # one pass): the sort's temporaries stay O(block), not O(n), for big batches.
        parts, dups = [], []
        for s in range(0, max(n, 1), _INVERT_ROWS):
            part, dup = cls._invert(ids[s:s + _INVERT_ROWS], acts[s:s + _INVERT_ROWS],
                                    num_latents)
            parts.append(part)
            if dup is not None:
                dups.append((dup[0], dup[1] + s))
        if dups:
            f, row = min(dups)
            raise ValueError(f"feature {f} appears twice in row {row}")
        return parts[0] if len(parts) == 1 else cls.concat(parts)

    @classmethod
    def _invert(cls, ids: np.ndarray, acts: np.ndarray, num_latents: int
                ) -> tuple[Postings, tuple[int, int] | None]:
        """CSR of validated codes, and the first (feature, row) repeated within a row."""
        n, k = ids.shape
        # float16 input (what the scan produces) is used as is: no float32 copy
        a = acts if acts.dtype == np.float16 else acts.astype(np.float32, copy=False)
        a16 = np.minimum(a, _F16_MAX).astype(np.float16, copy=False).ravel()
        kept = np.flatnonzero(a16 > 0)
        # Flattened row-major order has positions ascending, and a stable sort keeps that
        # order within each feature (a radix sort on the narrow uint16 ids: fast and small).
        feat = ids.ravel()[kept].astype(np.uint16 if num_latents <= 65536 else np.int64)
        order = np.argsort(feat, kind="stable")
        feat = feat[order]
        kept = kept[order]
        del order
        values = a16[kept]
        kept //= max(k, 1)
        positions = kept.astype(np.uint32)
        del kept
        same = (feat[1:] == feat[:-1]) & (positions[1:] == positions[:-1])
        dup = None
        if same.any():
            j = int(np.flatnonzero(same)[0])
            dup = (int(feat[j]), int(positions[j]))
        indptr = np.zeros(num_latents + 1, dtype=np.int64)
        np.cumsum(np.bincount(feat, minlength=num_latents), out=indptr[1:])
        return cls._trusted(indptr, positions, values, n), dup

    @property
    def num_latents(self) -> int:
        """Number of SAE features (dictionary size)."""
        return self._num_latents

    @property
    def nnz(self) -> int:
        """Number of stored (feature, position) entries."""
        return self._nnz

    @property
    def nbytes(self) -> int:
        """Bytes of the three CSR arrays (mapped from disk when loaded with ``mmap``; counted
        even while dropped from memory, see :meth:`drop_inverted`)."""
        return (self._num_latents + 1) * 8 + self._nnz * (4 + 2)

    def __repr__(self) -> str:
        return (f"Postings(num_latents={self.num_latents}, n_tokens={self.n_tokens}, "
                f"nnz={self.nnz})")

    def doc_freq(self) -> np.ndarray:
        """Entries per feature (int64 ``[num_latents]``): tokens where it fired.

        Example:
            >>> Postings.from_codes(np.array([[1], [1]]), np.ones((2, 1)), 2).doc_freq().tolist()
            [0, 2]
        """
        return np.diff(self.indptr)

    def gather(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Concatenated postings of ``features``, in the given order.

        Returns:
            ``(positions int64, acts float32, which int64)``; ``which[j]`` is the index in
            ``features`` of entry ``j``. A repeated feature is gathered again.

        Raises:
            ValueError: ``features`` is not 1-D integers within ``[0, num_latents)``.

        Example:
            >>> p = Postings.from_codes(np.array([[0], [1], [0]]), np.ones((3, 1)), 2)
            >>> [a.tolist() for a in p.gather(np.array([1, 0]))]
            [[1, 0, 2], [1.0, 1.0, 1.0], [0, 1, 1]]
        """
        f = np.asarray(features)
        if f.ndim != 1 or (f.size and not np.issubdtype(f.dtype, np.integer)):
            raise ValueError(f"features must be a 1-D integer array, got {f.dtype} {f.shape}")
        f = f.astype(np.int64)
        if f.size and (int(f.min()) < 0 or int(f.max()) >= self.num_latents):
            raise ValueError(f"feature ids outside [0, {self.num_latents})")
        starts = self.indptr[f]
        lens = self.indptr[f + 1] - starts
        idx = _ranges(starts, lens)
        which = np.repeat(np.arange(len(f), dtype=np.int64), lens)
        return (self.positions[idx].astype(np.int64), self.acts[idx].astype(np.float32), which)

    def to_codes(self, k: int, *, compact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The forward view: per position, its (at most ``k``) features by activation, desc.

        Returns ``(ids int64 [n_tokens, k], acts float32 [n_tokens, k])``; missing slots
        hold id 0 with act 0; ties are broken by feature id. Cached per ``k`` (read-only
        arrays, ``n_tokens * k * 12`` bytes). With ``compact``, the same values as uint16
        ids (int32 beyond 65,536 latents) and float16 acts, ``n_tokens * k * 4`` bytes,
        cached separately: what the query path keeps in memory.

        Example:
            >>> p = Postings.from_codes(np.array([[2, 0]]), np.array([[1.0, 3.0]]), 3)
            >>> p.to_codes(3)[0].tolist()
            [[0, 2, 0]]
            >>> [a.dtype.name for a in p.to_codes(3, compact=True)]
            ['uint16', 'float16']
        """
        if not _is_int(k) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        key = (k, bool(compact))
        if key in self._codes:
            return self._codes[key]
        n = self.n_tokens
        pos, feat, act = self._forward_order()
        counts = np.bincount(pos, minlength=n)
        rank = np.arange(len(pos), dtype=np.int64) - (np.cumsum(counts) - counts)[pos]
        keep = rank < k
        small = self.num_latents <= 65536
        out_ids = np.zeros((n, k), dtype=(np.uint16 if small else np.int32) if compact
                           else np.int64)
        out_acts = np.zeros((n, k), dtype=np.float16 if compact else np.float32)
        out_ids[pos[keep], rank[keep]] = feat[keep]
        out_acts[pos[keep], rank[keep]] = act[keep]
        out_ids.flags.writeable = False
        out_acts.flags.writeable = False
        self._codes[key] = (out_ids, out_acts)
        return self._codes[key]

    def _forward_order(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every entry as (position int64, feature int64, act float16), sorted by position,
        then activation descending, then feature id."""
        lens = np.diff(self.indptr)
        if self.num_latents <= 65536:
            # One int64-range sort key: position, then the act's float16 bit pattern
            # (monotone for positive values) inverted, then the feature id (3x faster
            # than a 3-key lexsort).
            feat = np.repeat(np.arange(self.num_latents, dtype=np.uint64), lens)
            inv = np.uint64(0xFFFF) - self.acts.view(np.uint16).astype(np.uint64)
            skey = ((self.positions.astype(np.uint64) << np.uint64(32))
                    | (inv << np.uint64(16)) | feat)
            order = np.argsort(skey)
            return (self.positions[order].astype(np.int64), feat[order].astype(np.int64),
                    self.acts[order])
        feat = np.repeat(np.arange(self.num_latents, dtype=np.int64), lens)
        pos = self.positions.astype(np.int64)
        order = np.lexsort((feat, -self.acts.astype(np.float32), pos))
        return pos[order], feat[order], self.acts[order]

    def filter_tokens(self, keep: np.ndarray) -> Postings:
        """Postings of the kept tokens only, renumbered ``0..keep.sum()-1`` in order.

        Example:
            >>> p = Postings.from_codes(np.array([[0], [0], [1]]), np.ones((3, 1)), 2)
            >>> q = p.filter_tokens(np.array([True, False, True]))
            >>> q.n_tokens, q.indptr.tolist(), q.positions.tolist()
            (2, [0, 1, 2], [0, 1])
        """
        keep = np.asarray(keep)
        if keep.dtype != bool or keep.shape != (self.n_tokens,):
            raise ValueError(f"keep must be bool [{self.n_tokens}], got {keep.dtype} {keep.shape}")
        entry_keep = keep[self.positions]
        kept_before = np.zeros(self.nnz + 1, dtype=np.int64)
        np.cumsum(entry_keep, out=kept_before[1:])
        new_pos = np.cumsum(keep, dtype=np.int64) - 1
        return Postings._trusted(
            kept_before[self.indptr],
            new_pos[self.positions[entry_keep]].astype(np.uint32),
            self.acts[entry_keep].copy(),
            int(keep.sum()),
        )

    @staticmethod
    def concat(postings_list: list[Postings]) -> Postings:
        """Postings of consecutive token ranges joined into one (positions offset in order).

        Raises:
            ValueError: empty list, different ``num_latents``, or more than 2**32 tokens.

        Example:
            >>> a = Postings.from_codes(np.array([[1]]), np.ones((1, 1)), 2)
            >>> b = Postings.from_codes(np.array([[0], [1]]), np.ones((2, 1)), 2)
            >>> c = Postings.concat([a, b])
            >>> c.n_tokens, c.indptr.tolist(), c.positions.tolist()
            (3, [0, 1, 3], [1, 0, 2])
        """
        if not postings_list:
            raise ValueError("concat needs at least one Postings")
        num_latents = postings_list[0].num_latents
        if any(p.num_latents != num_latents for p in postings_list):
            raise ValueError("concat: postings have different num_latents")
        n_total = sum(p.n_tokens for p in postings_list)
        if n_total > _MAX_POSITIONS:
            raise ValueError(f"concat: {n_total} tokens, a segment holds at most 2**32")
        counts = sum(np.diff(p.indptr) for p in postings_list)
        indptr = np.zeros(num_latents + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        positions = np.empty(int(indptr[-1]), dtype=np.uint32)
        acts = np.empty(int(indptr[-1]), dtype=np.float16)
        done = np.zeros(num_latents, dtype=np.int64)  # entries of each feature placed so far
        offset = 0
        for p in postings_list:
            lens = np.diff(p.indptr)
            feat = np.repeat(np.arange(num_latents, dtype=np.int64), lens)
            dest = np.arange(p.nnz, dtype=np.int64) + (indptr[:-1] + done - p.indptr[:-1])[feat]
            positions[dest] = p.positions.astype(np.int64) + offset
            acts[dest] = p.acts
            done += lens
            offset += p.n_tokens
        return Postings._trusted(indptr, positions, acts, n_total)


def _check_jsonable(value: Any, what: str) -> None:
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} is not JSON-serialisable ({e})") from None


@dataclass
class DocRecord:
    """One document of the doc table.

    Attributes:
        doc_id: unique among live documents.
        text: the full text; ``token_char`` bounds and ``sentences`` index into it.
        metadata: JSON-serialisable, string keys.
        segment: the segment holding its tokens (set by :meth:`InvertedIndex.add_segment`).
        token_start, token_end: its token range within the segment (end exclusive).
        sentences: character bounds ``(start, end)`` of its sentences.
        deleted: tombstone.

    Example:
        >>> d = DocRecord("a", "Hé.", {"lang": "fr"}, 0, 0, 2, [(0, 3)])
        >>> DocRecord.from_dict(d.to_dict()) == d
        True
    """

    doc_id: str
    text: str
    metadata: dict = field(default_factory=dict)
    segment: int = -1
    token_start: int = 0
    token_end: int = 0
    sentences: list[tuple[int, int]] = field(default_factory=list)
    deleted: bool = False

    def validate(self) -> None:
        """Check types, bounds and that the record can be saved as UTF-8 JSON.

        Raises:
            ValueError: naming the document id and the field (or metadata key).

        Example:
            >>> try:
            ...     DocRecord("a", "x", {"v": object()}).validate()
            ... except ValueError as e:
            ...     print(str(e)[:35])
            document 'a': metadata key 'v' is n
        """
        if not isinstance(self.doc_id, str) or not self.doc_id:
            raise ValueError(f"document id must be a non-empty str, got {self.doc_id!r}")
        who = f"document {self.doc_id!r}"
        _check_jsonable(self.doc_id, f"{who}: the id")
        if not isinstance(self.text, str):
            raise ValueError(f"{who}: text must be a str, got {type(self.text).__name__}")
        _check_jsonable(self.text, f"{who}: text")
        if not isinstance(self.metadata, dict):
            raise ValueError(f"{who}: metadata must be a dict, got {type(self.metadata).__name__}")
        for key, value in self.metadata.items():
            if not isinstance(key, str):
                raise ValueError(f"{who}: metadata key {key!r} is not a str")
            _check_jsonable(value, f"{who}: metadata key {key!r}")
        for name in ("segment", "token_start", "token_end"):
            if not _is_int(getattr(self, name)):
                raise ValueError(f"{who}: {name} must be an int, got {getattr(self, name)!r}")
        if not 0 <= self.token_start <= self.token_end:
            raise ValueError(f"{who}: bad token range [{self.token_start}, {self.token_end})")
        if not isinstance(self.deleted, bool):
            raise ValueError(f"{who}: deleted must be a bool")
        for s in self.sentences:
            if (not isinstance(s, (tuple, list)) or len(s) != 2 or not all(map(_is_int, s))
                    or not 0 <= s[0] <= s[1] <= len(self.text)):
                raise ValueError(f"{who}: bad sentence bounds {s!r} for a text of "
                                 f"{len(self.text)} characters")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (validated; see :meth:`validate`).

        Example:
            >>> DocRecord("a", "x").to_dict()["sentences"]
            []
        """
        self.validate()
        return {
            "doc_id": self.doc_id,
            "text": self.text,
            "metadata": self.metadata,
            "segment": int(self.segment),
            "token_start": int(self.token_start),
            "token_end": int(self.token_end),
            "sentences": [[int(a), int(b)] for a, b in self.sentences],
            "deleted": self.deleted,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DocRecord:
        """Inverse of :meth:`to_dict`; every key is required, unknown keys are refused.

        Raises:
            ValueError: missing/unknown keys or bad values.

        Example:
            >>> DocRecord.from_dict(DocRecord("a", "xy", sentences=[(0, 2)]).to_dict()).sentences
            [(0, 2)]
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        missing = [k for k in _DOC_KEYS if k not in d]
        unknown = [k for k in d if k not in _DOC_KEYS]
        if missing or unknown:
            raise ValueError(f"document record: missing keys {missing}, unknown keys {unknown}")
        sentences = d["sentences"]
        if not isinstance(sentences, list):
            raise ValueError(f"document {d['doc_id']!r}: sentences must be a list")
        rec = cls(
            doc_id=d["doc_id"], text=d["text"], metadata=d["metadata"], segment=d["segment"],
            token_start=d["token_start"], token_end=d["token_end"],
            sentences=[tuple(s) if isinstance(s, list) else s for s in sentences],
            deleted=d["deleted"],
        )
        rec.validate()
        return rec


def _segment_problem(
    postings: Mapping[str, Postings], token_doc: np.ndarray, token_char: np.ndarray,
    bias: Mapping[str, np.ndarray] | None = None,
) -> tuple[str, str] | None:
    """First problem as (part, message), part in token_doc / token_char / a hookpoint."""
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
    for name, p in postings.items():
        if not isinstance(p, Postings):
            return name, f"expected Postings, got {type(p).__name__}"
        if p.n_tokens != n:
            return name, f"postings for {p.n_tokens} tokens, token_doc has {n}"
    for name, b in (bias or {}).items():
        if name not in postings:
            return name, "bias columns for a hookpoint without postings"
        if b.ndim != 2 or b.shape[0] != n or b.dtype != np.float16:
            return name, f"bias must be float16 [{n}, m], got {b.dtype} {b.shape}"
        if not np.isfinite(b).all():
            return name, "bias holds non-finite values"
    return None


class Segment:
    """Postings of every hookpoint for one batch of tokens, plus the token tables.

    Immutable: arrays are read-only (copied on creation unless already read-only).

    Attributes:
        postings: read-only mapping hookpoint -> :class:`Postings`.
        token_doc: int32 ``[n]``, doc-table row of each token (rows local to the batch
            when passed to :meth:`InvertedIndex.add_segment`, global inside the index).
        token_char: int32 ``[n, 2]``, character start/end of each token in its document.
        bias: read-only mapping hookpoint -> float16 ``[n, m]`` dense per-token columns
            (empty when the index keeps none).
        n_tokens: ``n``.

    Example:
        >>> p = Postings.from_codes(np.array([[0]]), np.ones((1, 1)), 2)
        >>> Segment({"h": p}, [0], [[0, 1]]).n_tokens
        1
    """

    __slots__ = ("_postings", "_bias", "token_doc", "token_char", "n_tokens")

    def __init__(
        self,
        postings: Mapping[str, Postings],
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
        problem = _segment_problem(postings, td, tc, bias)
        if problem is not None:
            raise ValueError(f"{problem[0]}: {problem[1]}")
        self._postings = MappingProxyType(dict(postings))
        self._bias = MappingProxyType({h: _readonly(b, np.float16, copy=True)
                                       for h, b in bias.items()})
        self.token_doc = _readonly(td, np.int32, copy=True)
        self.token_char = _readonly(tc, np.int32, copy=True)
        self.n_tokens = len(self.token_doc)

    @classmethod
    def _trusted(cls, postings: Mapping[str, Postings], token_doc: np.ndarray,
                 token_char: np.ndarray, bias: Mapping[str, np.ndarray] | None = None
                 ) -> Segment:
        self = cls.__new__(cls)
        self._postings = MappingProxyType(dict(postings))
        self._bias = MappingProxyType({h: _readonly(b, np.float16, copy=False)
                                       for h, b in (bias or {}).items()})
        self.token_doc = _readonly(token_doc, np.int32, copy=False)
        self.token_char = _readonly(token_char, np.int32, copy=False)
        self.n_tokens = len(self.token_doc)
        return self

    @property
    def postings(self) -> Mapping[str, Postings]:
        """Hookpoint -> postings (read-only mapping)."""
        return self._postings

    @property
    def bias(self) -> Mapping[str, np.ndarray]:
        """Hookpoint -> float16 ``[n, m]`` bias columns (read-only mapping, may be empty)."""
        return self._bias

    @property
    def nbytes(self) -> int:
        """Bytes of the postings, bias columns and token tables."""
        return (sum(p.nbytes for p in self._postings.values())
                + sum(int(b.nbytes) for b in self._bias.values()) + int(self.token_doc.nbytes)
                + int(self.token_char.nbytes))

    def __repr__(self) -> str:
        return f"Segment(n_tokens={self.n_tokens}, hookpoints={list(self._postings)})"


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
    """Segments of postings plus the doc table; append, tombstone-delete, compact, save/load.

    Token positions are segment-local; :meth:`segment_offsets` maps them to a global
    numbering (segment ``s`` starts at ``segment_offsets()[s]``).

    Example:
        >>> codes = np.array([[0, 1], [1, 2], [2, 3]]); acts = np.ones((3, 2))
        >>> seg = Segment({"h": Postings.from_codes(codes, acts, 4)}, [0, 0, 1],
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
        names = set(segment.postings)
        if names != set(self._hookpoints):
            raise ValueError(f"segment hookpoints differ from the index: missing "
                             f"{sorted(set(self._hookpoints) - names)}, extra "
                             f"{sorted(names - set(self._hookpoints))}")
        for h, p in segment.postings.items():
            if p.num_latents != self._num_latents[h]:
                raise ValueError(f"hookpoint {h!r}: {p.num_latents} latents, index has "
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
            segment.postings, (segment.token_doc.astype(np.int64) + base).astype(np.int32),
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
            postings = {
                h: Postings.concat([seg.postings[h] if k.all() else
                                    seg.postings[h].filter_tokens(k)
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
            new_segments = [Segment._trusted(postings, token_doc.astype(np.int32), token_char,
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
        """Bytes of all postings and token tables (memory-mapped ones included; document
        texts and the doc table are not counted)."""
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
        postings_bytes = sum(p.nbytes for s in self._segments for p in s.postings.values())
        return {
            "layout_version": index_layout_version,
            "hookpoints": list(self._hookpoints),
            "num_latents": dict(self._num_latents),
            "bias_columns": dict(self._bias_columns),
            "segments": len(self._segments),
            "docs": len(self._docs),
            "live_docs": len(self),
            "deleted_docs": len(self._docs) - len(self),
            "tokens": self.n_tokens,
            "live_tokens": self.n_live_tokens,
            "nnz": {h: sum(s.postings[h].nnz for s in self._segments) for h in self._hookpoints},
            "postings_bytes": postings_bytes,
            "token_table_bytes": self.nbytes() - postings_bytes,
            "bytes": self.nbytes(),
            "bytes_per_token": self.bytes_per_token(),
            "text_chars": sum(len(d.text) for d in self._docs),
        }

    # -- persistence ---------------------------------------------------------------------

    def save(self, folder: str | os.PathLike) -> None:
        """Write the index files into the existing ``folder`` (no manifest; see module doc).

        Raises:
            FileNotFoundError: ``folder`` does not exist.
            ValueError: a document cannot be saved (e.g. metadata changed after adding).
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: folder not found (save writes into an existing "
                                    "folder; the engine calls it inside storage.commit)")
        rows = [d.to_dict() for d in self._docs]
        write_jsonl(folder / "docs.jsonl", rows)
        write_json(folder / "segments.json", {
            "layout_version": index_layout_version,
            "hookpoints": list(self._hookpoints),
            "num_latents": dict(self._num_latents),
            "bias_columns": dict(self._bias_columns),
            "segments": [{
                "n_tokens": seg.n_tokens,
                "hookpoints": list(self._hookpoints),
                "num_latents": dict(self._num_latents),
                "nnz": {h: seg.postings[h].nnz for h in self._hookpoints},
            } for seg in self._segments],
        })
        for s, seg in enumerate(self._segments):
            save_npy(folder / "tokens" / f"seg{s:06d}.doc.npy", seg.token_doc)
            save_npy(folder / "tokens" / f"seg{s:06d}.char.npy", seg.token_char)
            for h in self._hookpoints:
                p = seg.postings[h]
                for part in ("indptr", "positions", "acts"):
                    save_npy(folder / "postings" / f"seg{s:06d}" / f"{h}.{part}.npy",
                             getattr(p, part))
            for h in self._bias_columns:
                save_npy(folder / "postings" / f"seg{s:06d}" / f"{h}.bias.npy", seg.bias[h])

    @classmethod
    def load(cls, folder: str | os.PathLike, mmap: bool = True, check: bool = True
             ) -> InvertedIndex:
        """Read an index written by :meth:`save`, validating it.

        Shapes, dtypes, sizes and the doc table are always checked; ``check=True`` adds
        O(nnz) content checks (positions in range and ascending, activations > 0).
        With ``mmap`` the arrays are memory-mapped read-only.

        Raises:
            FileNotFoundError: ``folder`` does not exist.
            IndexFormatError: a file is missing, corrupt or inconsistent (named in the
                message), or the layout version differs.

        Example:
            >>> import tempfile
            >>> d = Path(tempfile.mkdtemp())
            >>> InvertedIndex(["h"], 4).save(d)
            >>> InvertedIndex.load(d).num_latents
            {'h': 4}
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: index folder not found")

        def where(rel: str) -> str:
            return (folder / rel).as_posix()

        meta = read_json(folder / "segments.json")
        seg_file = where("segments.json")
        if not isinstance(meta, dict):
            raise IndexFormatError(f"{seg_file}: expected a JSON object")
        version = meta.get("layout_version")
        if version != index_layout_version:
            raise IndexFormatError(f"{seg_file}: index layout {version}, this version reads "
                                   f"{index_layout_version}")
        if not isinstance(meta.get("hookpoints"), list) or not isinstance(
                meta.get("num_latents"), dict):
            raise IndexFormatError(f"{seg_file}: 'hookpoints' must be a list and "
                                   "'num_latents' an object")
        try:
            index = cls(meta["hookpoints"], meta["num_latents"], meta.get("bias_columns"))
        except (ValueError, TypeError, AttributeError) as e:
            raise IndexFormatError(f"{seg_file}: {e}") from None
        hookpoints, sizes = index._hookpoints, index._num_latents
        seg_meta = meta.get("segments")
        if not isinstance(seg_meta, list):
            raise IndexFormatError(f"{seg_file}: 'segments' must be a list")
        for s, sm in enumerate(seg_meta):
            if (not isinstance(sm, dict) or not _is_int(sm.get("n_tokens"))
                    or not 0 <= sm["n_tokens"] <= _MAX_POSITIONS):
                raise IndexFormatError(f"{seg_file}: segment {s}: bad n_tokens")
            if sm.get("hookpoints") != list(hookpoints) or sm.get("num_latents") != sizes:
                raise IndexFormatError(f"{seg_file}: segment {s}: hookpoints or num_latents "
                                       "differ from the index's")

        docs: list[DocRecord] = []
        for line, row in enumerate(read_jsonl(folder / "docs.jsonl"), start=1):
            try:
                rec = DocRecord.from_dict(row)
            except ValueError as e:
                raise IndexFormatError(f"{where('docs.jsonl')} line {line}: {e}") from None
            if not 0 <= rec.segment < len(seg_meta):
                raise IndexFormatError(f"{where('docs.jsonl')} line {line}: segment "
                                       f"{rec.segment} does not exist ({len(seg_meta)} segments)")
            docs.append(rec)
        live: dict[str, int] = {}
        for row, d in enumerate(docs):
            if not d.deleted:
                if d.doc_id in live:
                    raise IndexFormatError(f"{where('docs.jsonl')} line {row + 1}: live document "
                                           f"id {d.doc_id!r} repeated")
                live[d.doc_id] = row

        seg_of_row = np.array([d.segment for d in docs], dtype=np.int64)
        segments = []
        for s, sm in enumerate(seg_meta):
            n = sm["n_tokens"]
            doc_rel, char_rel = f"tokens/seg{s:06d}.doc.npy", f"tokens/seg{s:06d}.char.npy"
            token_doc = load_npy(folder / doc_rel, mmap, np.int32, shape=(n,))
            token_char = load_npy(folder / char_rel, mmap, np.int32, shape=(n, 2))
            postings = {}
            for h in hookpoints:
                rel = f"postings/seg{s:06d}/{h}"
                indptr = load_npy(folder / f"{rel}.indptr.npy", mmap, np.int64,
                                  shape=(sizes[h] + 1,))
                positions = load_npy(folder / f"{rel}.positions.npy", mmap, np.uint32, ndim=1)
                acts = load_npy(folder / f"{rel}.acts.npy", mmap, np.float16, ndim=1)
                problem = _postings_problem(indptr, positions, acts, n, check)
                if problem is not None:
                    raise IndexFormatError(f"{where(f'{rel}.{problem[0]}.npy')}: {problem[1]}")
                postings[h] = Postings._trusted(indptr, positions, acts, n)
            bias = {h: load_npy(folder / f"postings/seg{s:06d}/{h}.bias.npy", mmap, np.float16,
                                shape=(n, m)) for h, m in index._bias_columns.items()}
            problem = _segment_problem(postings, token_doc, token_char, bias if check else None)
            if problem is not None:
                part = problem[0]
                rel = (char_rel if part == "token_char" else doc_rel if part == "token_doc"
                       else f"postings/seg{s:06d}/{part}.bias.npy")
                raise IndexFormatError(f"{where(rel)}: {problem[1]}")
            if n and int(token_doc.max()) >= len(docs):
                raise IndexFormatError(f"{where(doc_rel)}: refers to doc-table row "
                                       f"{int(token_doc.max())}, docs.jsonl has {len(docs)}")
            rows = np.flatnonzero(seg_of_row == s)
            local = np.full(len(docs), -1, dtype=np.int64)
            local[rows] = np.arange(len(rows))
            seg_docs = [docs[r] for r in rows]
            problem = _doc_token_problem(
                local[token_doc] if n else np.zeros(0, dtype=np.int64), token_char,
                [d.doc_id for d in seg_docs],
                np.array([d.token_start for d in seg_docs], dtype=np.int64),
                np.array([d.token_end for d in seg_docs], dtype=np.int64),
                np.array([len(d.text) for d in seg_docs], dtype=np.int64),
            )
            if problem is not None:
                raise IndexFormatError(f"{where(doc_rel)} disagrees with docs.jsonl: {problem}")
            segments.append(Segment._trusted(postings, token_doc, token_char, bias))

        index._segments = segments
        index._docs = docs
        index._live = live
        index._row_live = np.array([not d.deleted for d in docs], dtype=bool)
        index._clear_caches()
        return index
