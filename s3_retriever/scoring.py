"""Score indexed token positions for a question from the question's attention queries.

Two scorers, both per selected query head ``h`` of an indexed layer (its keys live under
kv head ``g = spec.kv_group(h)``):

* ``"attention"`` -- the softmax attention mass the question's tokens would put on each
  position, computed on keys *reconstructed from their sparse codes*:
  ``q . k_hat_p = scale * (q . b_dec + sum_i a_pi (W_dec q)[id_pi])``. Exact queries,
  approximate keys; no KV cache. When the head carries its mean query ``m`` and the index
  kept ``m . k_p`` exactly (the *query-mean term*, one float16 per token and head), the
  logit is ``(q - m) . k_hat_p + m . k_p``: the large shared part of every query's logit is
  exact and the codes only approximate the question-specific rest.
* ``"coactivation"`` -- the S3 feature match: the question's queries are encoded by the same
  SAE, and a position scores ``sum_f idf_f * a_q(f) * a_k(p, f)`` over the features it shares
  with them, read straight from the inverted index's postings.

Example:
    >>> import numpy as np, torch
    >>> logits = torch.tensor([[0.0], [2.0], [0.0]])
    >>> [round(float(x), 3) for x in softmax_mass(logits)]
    [0.107, 0.787, 0.107]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from s3_retriever.sae import TopKSAE

SCORERS = ("attention", "coactivation")


@dataclass(frozen=True)
class HeadWeight:
    """One query head used for scoring: ``hookpoint`` (SAE), query ``head``, its ``kv`` head,
    its ``weight``, and optionally its mean query with the index's bias ``column`` holding
    ``mean . key`` for every token."""

    hookpoint: str
    head: int
    kv: int
    weight: float = 1.0
    query_mean: tuple[float, ...] | None = None
    column: int | None = None

    def to_entry(self) -> list:
        """The head file entry: ``[hookpoint, head, weight]`` plus the mean query if any."""
        entry: list = [self.hookpoint, self.head, self.weight]
        if self.query_mean is not None:
            entry.append(list(self.query_mean))
        return entry


def softmax_mass(logits: torch.Tensor) -> np.ndarray:
    """Softmax over positions (dim 0) per query token (dim 1), summed over query tokens."""
    if logits.shape[0] == 0:
        return np.zeros(0, np.float32)
    # sum_t softmax(logits[:, t]) = exp(logits - max) @ (1 / Z): one exp pass and a
    # mat-vec instead of a strided softmax over dim 0 and a division of the whole matrix
    # (max(dim=0) is ~6x faster than amax(dim=0) on a tall matrix here)
    e = logits - logits.max(dim=0).values
    e.exp_()
    return (e @ e.sum(dim=0).reciprocal()).numpy()


def reconstructed_logits(q: torch.Tensor, ids: np.ndarray, acts: np.ndarray, sae: TopKSAE,
                         block: int = 32768) -> torch.Tensor:
    """``q . k_hat / sqrt(d)`` for every position: q [T, d] exact queries; ids/acts [n, k]
    the positions' key codes. Returns [n, T] float32."""
    d = q.shape[-1]
    scale = float(sae.cfg.key_scale)
    w_dec = sae.W_dec.detach().float()
    b_dec = sae.b_dec.detach().float()
    q = q.float()
    u = (w_dec @ q.T) * (scale / math.sqrt(d))  # [D, T]
    base = (q @ b_dec) * (scale / math.sqrt(d))  # [T]
    out = torch.empty((len(ids), q.shape[0]), dtype=torch.float32)
    for s in range(0, len(ids), block):
        i = torch.from_numpy(np.asarray(ids[s:s + block], dtype=np.int64))
        a = torch.from_numpy(np.asarray(acts[s:s + block], dtype=np.float32))
        # sum_i a_i * u[id_i] per row as one fused gather-multiply-add (embedding_bag):
        # ~18x faster than materialising u[i] [block, k, T] (benchmarks/perf_query.py)
        out[s:s + block] = torch.nn.functional.embedding_bag(
            i, u, per_sample_weights=a, mode="sum") + base
    return out


def attention_scores(queries: dict[str, torch.Tensor], codes: dict[str, tuple[np.ndarray,
                     np.ndarray]], saes: dict[str, TopKSAE], heads: list[HeadWeight],
                     bias: dict[str, np.ndarray] | None = None, *, per_head: bool = False
                     ) -> np.ndarray:
    """Attention mass per haystack position, summed over heads with their weights
    (``per_head``: [n_heads, n], one unweighted row per head).

    Args:
        queries: hookpoint -> the question's queries [T, n_heads, d].
        codes: postings name (``"layers.17.kv0"``) -> (ids, acts) [n, k] of the haystack.
        saes: hookpoint -> SAE.
        heads: which query heads, with weights.
        bias: postings name -> [n, m] exact ``mean_query . key`` columns; a head with a
            ``column`` uses the query-mean term from it.
    """
    total: np.ndarray | None = None
    rows: list[np.ndarray] = []
    for hw in heads:
        name = f"{hw.hookpoint}.kv{hw.kv}"
        ids, acts = codes[name]
        q = queries[hw.hookpoint][:, hw.head].float()
        if hw.column is not None and bias is not None and name in bias:
            mean = torch.tensor(hw.query_mean, dtype=torch.float32)
            exact = torch.from_numpy(np.asarray(bias[name][:, hw.column], np.float32))
            logits = reconstructed_logits(q - mean, ids, acts, saes[hw.hookpoint]) + \
                (exact / math.sqrt(q.shape[-1])).unsqueeze(1)
        else:
            logits = reconstructed_logits(q, ids, acts, saes[hw.hookpoint])
        if per_head:
            rows.append(softmax_mass(logits))
            continue
        mass = softmax_mass(logits) * hw.weight
        total = mass if total is None else total + mass
    if per_head and rows:
        return np.stack(rows)
    if total is None:
        raise ValueError("no heads selected for scoring")
    return total


def query_feature_weights(queries: dict[str, torch.Tensor], saes: dict[str, TopKSAE],
                          heads: list[HeadWeight], idf: dict[str, np.ndarray],
                          pruned: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Per postings name, a dense [num_latents] weight: ``sum idf_f * a_q(f)`` over the
    question's tokens and the heads reading that kv head (pruned features get 0)."""
    out: dict[str, np.ndarray] = {}
    for hw in heads:
        sae = saes[hw.hookpoint]
        name = f"{hw.hookpoint}.kv{hw.kv}"
        acts, ids = sae.encode(queries[hw.hookpoint][:, hw.head].float(), kind="query")
        w = out.setdefault(name, np.zeros(sae.cfg.num_latents, np.float64))
        np.add.at(w, ids.numpy().ravel(), acts.numpy().ravel() * hw.weight)
    for name, w in out.items():
        w *= idf[name]
        if pruned is not None and name in pruned:
            w[pruned[name]] = 0.0
    return out
