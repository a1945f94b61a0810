"""Postings: the codes of one key stream of one segment inverted, SAE feature id -> the
token positions (ascending) where it fired and its activations (CSR arrays). The
co-activation scorer and the feature statistics read them; they are built from the code
store (:class:`~s3_retriever.index.codes.Codes`) on first use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from s3_retriever.validate import is_int as _is_int

__all__ = ['Postings']


_MAX_POSITIONS = 2**32  # positions are uint32, so a segment holds at most 2**32 tokens

_INVERT_ROWS = 1 << 16  # rows inverted at once by Postings.from_codes

_F16_MAX = float(np.finfo(np.float16).max)

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
    """

    __slots__ = ("_indptr", "_positions", "_acts", "n_tokens", "_num_latents", "_nnz")

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
        return self

    def _set_inverted(self, indptr: np.ndarray, positions: np.ndarray,
                      acts: np.ndarray) -> None:
        self._positions, self._acts = positions, acts
        self._indptr = indptr  # set last: a non-None indptr means all three are present
        self._num_latents = len(indptr) - 1
        self._nnz = len(positions)

    @property
    def indptr(self) -> np.ndarray:
        """int64 ``[num_latents + 1]``: feature ``f`` owns ``indptr[f]:indptr[f + 1]``."""
        return self._indptr

    @property
    def positions(self) -> np.ndarray:
        """uint32 ``[nnz]`` segment-local positions, ascending within each feature."""
        return self._positions

    @property
    def acts(self) -> np.ndarray:
        """float16 ``[nnz]`` activations (all > 0)."""
        return self._acts

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
        """Bytes of the three CSR arrays."""
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
