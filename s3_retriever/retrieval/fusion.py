"""Fuse S3 and BM25 unit scores: a min-max normalised linear mix, or weighted reciprocal rank
fusion (RRF); ``weight`` is the S3 share.

Example:
    >>> import numpy as np
    >>> fuse(np.array([0.2, 0.8, 0.0]), np.array([3.0, 0.0, 1.0]), weight=1.0).tolist()
    [0.25, 1.0, 0.0]
"""

from __future__ import annotations

import numpy as np

__all__ = ['FUSION_METHODS', 'fuse', 'normalize']


def _valid(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if x.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {x.shape}")
    if mask is None:
        return np.isfinite(x)
    m = np.asarray(mask)
    if m.dtype != bool or m.shape != x.shape:
        raise ValueError(f"mask must be a bool array of shape {x.shape}, got {m.dtype} {m.shape}")
    return m & np.isfinite(x)

def normalize(scores: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Min-max normalise scores to [0, 1] over the masked, finite entries.

    Constant scores give zeros. Entries outside the mask or not finite (e.g. ``-inf``)
    become 0 -- the bottom of the range; use the mask to tell them apart.

    Example:
        >>> normalize(np.array([2.0, 4.0, -np.inf, 3.0])).tolist()
        [0.0, 1.0, 0.0, 0.5]
    """
    x = np.asarray(scores, dtype=np.float64)
    valid = _valid(x, mask)
    out = np.zeros_like(x)
    if not valid.any():
        return out
    v = x[valid]
    lo, span = v.min(), v.max() - v.min()
    if span > 0:
        out[valid] = (v - lo) / span
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based competition ranks, highest first; equal values share the best rank."""
    neg = -x
    srt = np.sort(neg)
    return np.searchsorted(srt, neg, side="left") + 1

FUSION_METHODS = ("linear", "rrf")

def fuse(
    s3_scores: np.ndarray,
    bm25_scores: np.ndarray,
    *,
    method: str = "linear",
    weight: float = 0.5,
    rrf_k: float = 60.0,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Fuse S3 and BM25 scores; ``weight`` is the S3 share.

    * ``"linear"``: ``weight * minmax(s3) + (1 - weight) * minmax(bm25)``, both min-max
      normalised over the masked entries (non-finite inputs count as the minimum).
    * ``"rrf"``: ``weight / (rrf_k + rank_s3) + (1 - weight) / (rrf_k + rank_bm25)``, with
      1-based ranks over the masked entries; equal scores share the best rank (so tied
      inputs stay tied), ``-inf`` ranks last.

    ``weight=1`` reproduces the S3 order and ``weight=0`` the BM25 order (for "linear",
    a ``-inf`` input ties with that input's minimum).
    Entries outside ``mask`` get ``-inf``.

    Raises:
        ValueError: unknown method, weight outside [0, 1], rrf_k < 0, shape mismatch, NaN.

    Example:
        >>> s3, bm = np.array([1.0, 0.8, 0.0]), np.array([0.0, 0.8, 1.0])
        >>> int(np.argmax(fuse(s3, bm, weight=0.5))), int(np.argmax(fuse(s3, bm, weight=1.0)))
        (1, 0)
    """
    if method not in FUSION_METHODS:
        raise ValueError(f"unknown fusion method {method!r}; allowed: {', '.join(FUSION_METHODS)}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight (the S3 share) must be in [0, 1], got {weight}")
    if rrf_k < 0:
        raise ValueError(f"rrf_k must be >= 0, got {rrf_k}")
    s3 = np.asarray(s3_scores, dtype=np.float64)
    bm = np.asarray(bm25_scores, dtype=np.float64)
    if s3.shape != bm.shape or s3.ndim != 1:
        raise ValueError(f"s3_scores {s3.shape} and bm25_scores {bm.shape} must be 1-D, equal")
    if mask is None:
        m = np.ones(s3.shape, dtype=bool)
    else:
        m = np.asarray(mask)
        if m.dtype != bool or m.shape != s3.shape:
            raise ValueError(f"mask must be a bool array of shape {s3.shape}")
    if np.isnan(s3[m]).any() or np.isnan(bm[m]).any():
        raise ValueError("scores contain NaN")
    out = np.full(s3.shape, -np.inf)
    if not m.any():
        return out
    if method == "linear":
        fused = weight * normalize(s3, m) + (1.0 - weight) * normalize(bm, m)
        out[m] = fused[m]
    else:
        out[m] = weight / (rrf_k + _ranks(s3[m])) + (1.0 - weight) / (rrf_k + _ranks(bm[m]))
    return out
