"""Can a question's attention mass be found without scoring every token? Two candidate
generators measured against the exhaustive attention scorer (a finding: neither made it
into the library; docs/benchmarks.md, section 6.7).

    python benchmarks/candidate_bounds.py --source runs/perf/idx-512k --tokens 200000 \\
        --questions 5 --candidate-tokens 8192

* block bounds (Quest's page bounds on the codes): per block of ``--block`` tokens, the
  elementwise min/max of the keys rebuilt from the codes and the max of each exact
  query-mean column bound every logit in the block; blocks are ranked by the softmax mass
  their bounds allow;
* IVF (RetrievalAttention-style): k-means over the rebuilt keys augmented with the
  query-mean columns, clusters ranked by their centroids' softmax mass.

For each question it reports the share of the exact attention mass and of the exact top
1,000 tokens inside the ``--candidate-tokens`` tokens each generator picks.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from perf_common import RUNS, real_questions  # noqa: E402
from perf_query import build, stored_documents  # noqa: E402


def rebuilt_keys(codes, sae) -> np.ndarray:
    """``b_dec + sum_i a_i W_dec[id_i]`` per token (SAE units), float32 ``[n, d]``."""
    ids = torch.from_numpy(np.asarray(codes.ids, np.int64))
    acts = torch.from_numpy(np.asarray(codes.acts, np.float32))
    w = sae.W_dec.detach().float()
    return (torch.nn.functional.embedding_bag(ids, w, per_sample_weights=acts, mode="sum")
            + sae.b_dec.detach().float()).numpy()


def block_bound(q: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``[T, n_blocks]`` upper bounds of ``q_t . k`` over each block's keys.

    >>> block_bound(np.array([[1.0, -2.0]]), np.array([[0.0, -1.0]]), np.array([[3.0, 1.0]]))
    array([[5.]])
    """
    return np.maximum(q, 0) @ hi.T + np.minimum(q, 0) @ lo.T


def softmax_potential(logits: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Per unit (block / cluster): the softmax mass its logits ``[T, units]`` give it when
    each stands for ``sizes`` tokens, summed over query tokens."""
    x = logits + np.log(np.maximum(sizes, 1))[None, :]
    x = x - x.max(axis=1, keepdims=True)
    w = np.exp(x)
    return (w / w.sum(axis=1, keepdims=True)).sum(axis=0)


def take(order: np.ndarray, sizes: np.ndarray, budget: int) -> np.ndarray:
    """The first units of ``order`` that hold ``budget`` tokens."""
    return order[:int(np.searchsorted(np.cumsum(sizes[order]), budget)) + 1]


def main() -> int:
    import faiss

    from s3_retriever import S3Index
    from s3_retriever.model.loading import load_model
    from s3_retriever.retrieval.scan import question_queries
    from s3_retriever.retrieval.scoring import QueryPlan, token_scores

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=RUNS / "idx-512k")
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--questions", type=int, default=5)
    ap.add_argument("--candidate-tokens", type=int, default=8192)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--clusters", type=int, default=1024)
    a = ap.parse_args()
    lm = load_model("smollm2-135m")
    src = S3Index.load(a.source, model=lm)
    index = build(lm, stored_documents(src), a.tokens, "probe")
    del src
    store, seg = index.index, index.index.segments[0]
    rows = [r for r, d in enumerate(store.docs) if not d.deleted]
    n = seg.n_tokens
    starts = np.arange(0, n, a.block)
    block_sizes = np.diff(np.r_[starts, n])
    keys, bounds, ivf = {}, {}, {}
    for name in sorted({h.stream for h in index.heads}):
        sae = index.saes[next(h.hookpoint for h in index.heads if h.stream == name)]
        r = rebuilt_keys(seg.codes[name], sae)
        bias = np.asarray(seg.bias[name], np.float32)
        bounds[name] = (np.minimum.reduceat(r, starts), np.maximum.reduceat(r, starts),
                        np.maximum.reduceat(bias, starts))
        x = np.concatenate([r, bias], axis=1)
        km = faiss.Kmeans(x.shape[1], a.clusters, niter=10, seed=0, max_points_per_centroid=64)
        km.train(x[np.random.default_rng(0).choice(n, min(n, a.clusters * 64), replace=False)])
        ivf[name] = (km.centroids, km.index.search(x, 1)[1][:, 0])
        keys[name] = sae
    rows_out = []
    for q in real_questions(a.questions):
        queries = question_queries(lm, q, sorted({h.hookpoint for h in index.heads}))
        exact = token_scores(store, rows, queries, index.saes, index.heads)
        plan = QueryPlan(queries, index.saes, index.heads, set(seg.bias))
        pot_b = np.zeros(len(starts))
        pot_c: dict[str, np.ndarray] = {}
        for name, members in plan.streams.items():
            factor = float(keys[name].cfg.key_scale) / math.sqrt(plan.d)
            lo, hi, bias_hi = bounds[name]
            cents, assign = ivf[name]
            sizes = np.bincount(assign, minlength=a.clusters)
            qs = plan.q[name].numpy() * factor
            pot_c[name] = np.zeros(a.clusters)
            for i in members:
                col = index.heads[i].column
                ub = block_bound(qs[plan.cols[i]], lo, hi)
                qa = np.zeros((len(qs[plan.cols[i]]), cents.shape[1]), np.float32)
                qa[:, :plan.d] = qs[plan.cols[i]]
                if plan.uses_bias[i]:
                    ub = ub + bias_hi[:, col][None, :] / math.sqrt(plan.d)
                    qa[:, plan.d + col] = 1 / math.sqrt(plan.d)
                pot_b += index.heads[i].weight * softmax_potential(ub, block_sizes)
                pot_c[name] += index.heads[i].weight * softmax_potential(qa @ cents.T, sizes)
        chosen_b = np.zeros(n, bool)
        for b in take(np.argsort(-pot_b), block_sizes, a.candidate_tokens):
            chosen_b[starts[b]:starts[b] + a.block] = True
        chosen_c = np.zeros(n, bool)
        for name, p in pot_c.items():
            cents, assign = ivf[name]
            sizes = np.bincount(assign, minlength=a.clusters)
            picked = take(np.argsort(-p), sizes, a.candidate_tokens // len(pot_c))
            chosen_c |= np.isin(assign, picked)
        top = np.argsort(-exact)[:1000]
        block_mass = np.add.reduceat(exact, starts)
        best = take(np.argsort(-block_mass), block_sizes, a.candidate_tokens)
        rows_out.append({
            "bounds_mass": round(float(exact[chosen_b].sum() / exact.sum()), 3),
            "bounds_top1000": round(float(chosen_b[top].mean()), 3),
            "ivf_mass": round(float(exact[chosen_c].sum() / exact.sum()), 3),
            "ivf_top1000": round(float(chosen_c[top].mean()), 3),
            "random_share": round(a.candidate_tokens / n, 3),
            "best_blocks_mass": round(float(block_mass[best].sum() / exact.sum()), 3)})
        print(json.dumps(rows_out[-1]), flush=True)
    print(json.dumps({k: round(float(np.mean([r[k] for r in rows_out])), 3)
                      for k in rows_out[0]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
