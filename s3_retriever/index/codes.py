"""The code store: per token, the ``k`` SAE features of its key and their activations, for one
key stream of one segment. The default (attention) scorer reads these rows; the inverted
:class:`~s3_retriever.index.postings.Postings` are built from them when needed.

Example:
    >>> c = Codes.from_scan(np.array([[2, 0], [1, 3]]), np.array([[1.0, 3.0], [0.5, 0.0]]), 4)
    >>> c.ids.tolist(), c.acts.tolist(), c.postings.doc_freq().tolist()
    ([[0, 2], [1, 0]], [[3.0, 1.0], [0.5, 0.0]], [1, 1, 1, 0])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from s3_retriever.index.postings import _F16_MAX, _MAX_POSITIONS, Postings
from s3_retriever.validate import is_int

__all__ = ["Codes"]


def id_dtype(num_latents: int) -> np.dtype:
    """uint16 ids up to 65,536 latents, int32 beyond."""
    return np.dtype(np.uint16 if num_latents <= 65536 else np.int32)


def _codes_problem(ids: np.ndarray, acts: np.ndarray, num_latents: int, full: bool
                   ) -> tuple[str, str] | None:
    """First problem as (part, message), part in ids / acts; ``full`` adds O(n k) checks."""
    if ids.ndim != 2 or ids.dtype != id_dtype(num_latents):
        return "ids", f"need {id_dtype(num_latents)} [n, k], got {ids.dtype} {ids.shape}"
    if acts.shape != ids.shape or acts.dtype != np.float16:
        return "acts", f"need float16 {ids.shape}, got {acts.dtype} {acts.shape}"
    if len(ids) > _MAX_POSITIONS:
        return "ids", f"{len(ids)} tokens: a segment holds at most 2**32"
    if not full or ids.size == 0:
        return None
    if int(ids.max()) >= num_latents or int(ids.min()) < 0:
        return "ids", f"feature ids outside [0, {num_latents})"
    if not np.isfinite(acts).all() or (acts < 0).any():
        return "acts", "activations must be finite and >= 0"
    if (np.diff(acts.astype(np.float32), axis=1) > 0).any():
        return "acts", "not sorted by activation (descending) within a token"
    if ((acts == 0) & (ids != 0)).any():
        return "ids", "an empty slot (activation 0) must hold feature 0"
    live = acts > 0
    same = (ids[:, 1:] == ids[:, :-1]) & live[:, 1:] & live[:, :-1]
    if same.any():
        return "ids", "a feature repeats within a token"
    return None


class Codes:
    """The codes of one key stream in one segment (immutable, read-only arrays).

    Attributes:
        ids: ``[n_tokens, k]`` feature ids (uint16, int32 beyond 65,536 latents).
        acts: float16 ``[n_tokens, k]`` activations, per token by activation descending
            then feature id; an empty slot holds feature 0 with activation 0.
        num_latents: the SAE's dictionary size.
    """

    __slots__ = ("ids", "acts", "num_latents", "_postings", "__weakref__")

    def __init__(self, ids: np.ndarray, acts: np.ndarray, num_latents: int, *,
                 check: bool = True) -> None:
        """Wrap canonical arrays (from :meth:`from_scan` or a saved index), validating them.

        Raises:
            ValueError: wrong dtypes or shapes; with ``check``, ids out of range, negative
                or unsorted activations, a repeated feature (the message names the array).
        """
        if not is_int(num_latents) or num_latents < 1:
            raise ValueError(f"num_latents must be a positive int, got {num_latents!r}")
        ids, acts = np.asarray(ids), np.asarray(acts)
        problem = _codes_problem(ids, acts, int(num_latents), check)
        if problem is not None:
            raise ValueError(f"{problem[0]}: {problem[1]}")
        for a in (ids, acts):
            if a.flags.writeable:
                a.flags.writeable = False
        self.ids, self.acts, self.num_latents = ids, acts, int(num_latents)
        self._postings: Postings | None = None

    @classmethod
    def from_scan(cls, ids: np.ndarray, acts: np.ndarray, num_latents: int) -> Codes:
        """Canonical codes of the scan's top-k output: activations as float16 (clipped to
        its maximum), slots whose stored activation is <= 0 emptied, each token's features
        ordered by activation descending then id.

        Raises:
            ValueError: shapes differ or are not 2-D, ids outside ``[0, num_latents)``, an
                activation is NaN, or a feature repeats within a token.
        """
        ids, acts = np.asarray(ids), np.asarray(acts)
        if ids.ndim != 2 or ids.shape != acts.shape:
            raise ValueError(f"ids and acts must be 2-D of equal shape, got {ids.shape} and "
                             f"{acts.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be integers, got {ids.dtype}")
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= num_latents):
            raise ValueError(f"feature ids outside [0, {num_latents})")
        if np.isnan(acts).any():
            raise ValueError("acts contain NaN")
        a16 = np.minimum(acts.astype(np.float32, copy=False), _F16_MAX).astype(np.float16)
        a16[~(a16 > 0)] = 0
        out_ids = np.where(a16 > 0, ids, 0).astype(id_dtype(num_latents))
        # per row: activation descending, then feature id (empty slots last: act 0, id 0)
        order = np.lexsort((out_ids, -a16.astype(np.float32)), axis=1)
        out_ids = np.take_along_axis(out_ids, order, axis=1)
        a16 = np.take_along_axis(a16, order, axis=1)
        live = a16 > 0
        if ((out_ids[:, 1:] == out_ids[:, :-1]) & live[:, 1:] & live[:, :-1]).any():
            row = int(np.flatnonzero(((out_ids[:, 1:] == out_ids[:, :-1])
                                      & live[:, 1:] & live[:, :-1]).any(axis=1))[0])
            raise ValueError(f"a feature appears twice in row {row}")
        return cls(out_ids, a16, num_latents, check=False)

    @property
    def n_tokens(self) -> int:
        return len(self.ids)

    @property
    def k(self) -> int:
        return self.ids.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes of the two arrays (mapped from disk when loaded with ``mmap``)."""
        return int(self.ids.nbytes + self.acts.nbytes)

    @property
    def postings(self) -> Postings:
        """The inverted view (feature -> positions), built on first use and kept."""
        if self._postings is None:
            self._postings = Postings.from_codes(self.ids, self.acts, self.num_latents)
        return self._postings

    def take(self, rows: np.ndarray) -> Codes:
        """The codes of the kept tokens (a bool mask or row indices), in order."""
        return Codes(self.ids[rows], self.acts[rows], self.num_latents, check=False)

    @staticmethod
    def concat(parts: Sequence[Codes]) -> Codes:
        """The codes of consecutive token ranges joined into one.

        Raises:
            ValueError: no parts, or parts of different dictionary sizes or ``k``.
        """
        if not parts:
            raise ValueError("concat needs at least one Codes")
        if len({(p.num_latents, p.k) for p in parts}) != 1:
            raise ValueError("concat: codes of different num_latents or k")
        if len(parts) == 1:
            return parts[0]
        return Codes(np.concatenate([p.ids for p in parts]),
                     np.concatenate([p.acts for p in parts]), parts[0].num_latents,
                     check=False)

    def __repr__(self) -> str:
        return f"Codes(n_tokens={self.n_tokens}, k={self.k}, num_latents={self.num_latents})"
