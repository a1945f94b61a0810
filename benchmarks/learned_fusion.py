"""Learned fusion, a finding kept as a benchmark: a logistic regression over per-head S3
scores, BM25 and length. It measured level with the linear fusion on the dev split
(docs/benchmarks.md, section 7), so it left the library; attention_probe.py uses it.

A sentence unit scores ``w . [s_1/max s_1, ..., s_H/max s_H, minmax(bm25), log(tokens)]
+ b``: per scoring head, its score as a fraction of the best one in the haystack, BM25
min-max normalised over the haystack, and the log token count; the weights are fitted
with :func:`fit_fusion` on the calibration split (results/learned_fusion.json).

Example:
    >>> import numpy as np
    >>> heads = np.array([[1.0, 0.2, 0.0], [0.5, 1.0, 0.0]])  # 2 heads x 3 sentences
    >>> X = unit_features(heads, np.array([0.0, 3.0, 1.0]), np.array([10, 20, 5]))
    >>> X.shape, X[:, 2].tolist()
    ((3, 4), [0.0, 1.0, 0.3333333333333333])
    >>> m = LearnedFusion(["a", "b"], [1.0, 1.0], bm25_weight=2.0, length_weight=0.0, bias=0.0)
    >>> int(np.argmax(m.score(heads, np.array([0.0, 3.0, 1.0]), np.array([10, 20, 5]))))
    1
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from s3_retriever.errors import IndexFormatError
from s3_retriever.evaluation.data import Benchmark
from s3_retriever.retrieval.fusion import normalize
from s3_retriever.storage import write_json

FUSION_FILE = "fusion.json"


def unit_features(head_scores: np.ndarray, bm25: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """``[n_units, n_heads + 2]`` features: per-head score / the head's max over the units,
    BM25 min-max normalised, log token count."""
    hs = np.asarray(head_scores, np.float64)
    if hs.ndim != 2:
        raise ValueError(f"head_scores must be [n_heads, n_units], got shape {hs.shape}")
    hs = np.where(np.isfinite(hs), hs, 0.0)
    top = np.maximum(hs.max(axis=1, keepdims=True), 1e-12) if hs.shape[1] else hs
    bm = np.asarray(bm25, np.float64)
    bm_n = normalize(np.where(np.isfinite(bm), bm, 0.0), np.ones(len(bm), bool)) if len(bm) \
        else bm
    return np.column_stack([(hs / top).T, bm_n, np.log(np.maximum(1, tokens))])


def fit_logistic(X: np.ndarray, y: np.ndarray, *, l2: float = 1e-2, iters: int = 100
                 ) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method; returns (weights, bias)."""
    X = np.column_stack([np.asarray(X, np.float64), np.ones(len(X))])
    y = np.asarray(y, np.float64)
    w = np.zeros(X.shape[1])
    reg = np.r_[np.full(X.shape[1] - 1, l2), 0.0]
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(X @ w, -50, 50)))
        grad = X.T @ (p - y) + reg * w
        hess = (X * (p * (1 - p))[:, None]).T @ X + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], float(w[-1])


@dataclass
class LearnedFusion:
    """Weights of the learned fusion (see the module docstring).

    Attributes:
        heads: the scoring heads, in feature order, as ``"layers.17/3"`` strings.
        head_weights / bm25_weight / length_weight / bias: the logistic regression.
        info: how it was trained (split, command, calibration recall), free-form.
    """

    heads: list[str]
    head_weights: list[float]
    bm25_weight: float
    length_weight: float
    bias: float
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.heads) != len(self.head_weights):
            raise ValueError(f"{len(self.head_weights)} head weights for {len(self.heads)} heads")
        vals = [*self.head_weights, self.bm25_weight, self.length_weight, self.bias]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
            raise ValueError("fusion weights must be finite numbers")

    @property
    def weights(self) -> np.ndarray:
        return np.asarray([*self.head_weights, self.bm25_weight, self.length_weight])

    def score(self, head_scores: np.ndarray, bm25: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """The fused score (a logit) of every unit."""
        X = unit_features(head_scores, bm25, tokens)
        if X.shape[1] != len(self.weights):
            raise ValueError(f"the fusion was trained on {len(self.heads)} heads, the index "
                             f"scores with {X.shape[1] - 2}")
        return X @ self.weights + self.bias

    @classmethod
    def fit(cls, heads: Sequence[str], X: np.ndarray, y: np.ndarray, *, l2: float = 1e-2,
            info: dict[str, Any] | None = None) -> LearnedFusion:
        """Fit on unit features ``X`` (:func:`unit_features`, stacked) and gold labels."""
        w, b = fit_logistic(X, y, l2=l2)
        n = len(heads)
        return cls(list(heads), [float(x) for x in w[:n]], float(w[n]), float(w[n + 1]), b,
                   dict(info or {}))

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``fusion.json`` (``path`` may be a folder or the file)."""
        path = Path(path)
        if path.is_dir():
            path = path / FUSION_FILE
        write_json(path, asdict(self))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> LearnedFusion:
        """Read ``fusion.json`` (a folder or the file); a bad file raises IndexFormatError."""
        path = Path(path)
        if path.is_dir():
            path = path / FUSION_FILE
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return cls(**d)
        except (OSError, ValueError, TypeError) as e:
            raise IndexFormatError(f"{path}: not a valid learned-fusion file ({e})") from None


def head_name(hookpoint: str, head: int) -> str:
    """The feature name of a scoring head: ``"layers.17/3"``."""
    return f"{hookpoint}/{head}"


__all__ = ["FUSION_FILE", "LearnedFusion", "fit_logistic", "head_name", "unit_features"]


def fit_fusion(index: Any, bench: Benchmark, *, l2: float = 1e-2, show_progress: bool = True,
               info: dict[str, Any] | None = None) -> LearnedFusion:
    """Fit the learned fusion (this module) on a calibration benchmark.

    ``index`` is an :class:`~s3_retriever.engine.S3Index`; the benchmark's documents
    missing from it are scanned first. Every sentence unit of every question's haystack is
    one training row, labelled 1 when it holds a gold evidence span.
    """
    todo = [d for d in bench.documents.values() if d.doc_id not in index.index]
    if todo:
        index.add_texts([d.text for d in todo], [d.metadata for d in todo],
                        [d.doc_id for d in todo], show_progress=show_progress)
    xs, ys = [], []
    for ex in tqdm(bench.examples, desc="fusion features", disable=not show_progress):
        us = index.unit_scores(ex.question, doc_ids=ex.doc_ids)
        golds: dict[str, list[tuple[int, int]]] = {}
        for e in ex.evidence:
            golds.setdefault(e.doc_id, []).append((e.start_char, e.end_char))
        y = np.array([any(s <= gs and ge <= e for gs, ge in golds.get(d, ()))
                      for d, (s, e) in zip(us["doc_id"], us["bounds"])], np.float64)
        if not y.any():
            continue
        xs.append(unit_features(us["head"], us["bm25"], us["tokens"]))
        ys.append(y)
    if not xs:
        raise ValueError("no calibration question has gold evidence in its haystack")
    X, y = np.concatenate(xs), np.concatenate(ys)
    meta = {"questions": len(xs), "units": int(len(y)), "gold_units": int(y.sum()), "l2": l2,
            **(info or {})}
    return LearnedFusion.fit(us["heads"], X, y, l2=l2, info=meta)
