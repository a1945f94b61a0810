"""Choose the in-context rerank's settings on the dev split (HotpotQA 100-199).

For each question and pool size, the hybrid's pool is read once with the question, the
content-free question and the two-hop follow-up; every variant below is scored from those
readings, so the variants are compared on the same questions (paired):

- ``hybrid``: the engine's hybrid spans at the budget (the first stage);
- ``rerank raw`` / ``rerank icr``: the shipped rerank heads without / with the content-free
  calibration;
- ``rerank icr +hop b``: two hops, the second hop's scores weighted ``b``;
- ``rerank icr +hybrid``: the rerank's min-max scores plus the hybrid's pool score
  (a fusion with the first stage).

Writes a JSON of per-question recalls and prints mean +- s.e. and paired differences.

    python benchmarks/rerank_dev.py --contexts 32000 --pools 1024 2048 3072 \
        --out runs/rerank/dev.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from s3_retriever import S3Index
from s3_retriever.evaluation.metrics import evidence_recall, mean_stderr, paired_difference
from s3_retriever.evaluation.run import (
    EvalConfig,
    build_benchmarks,
    corpus_documents,
    index_corpus,
)
from s3_retriever.retrieval.fusion import normalize
from s3_retriever.retrieval.rerank import (
    NULL_QUESTION,
    AttentionReranker,
    pick_spans,
    pool_prompt,
    shipped_rerank_heads,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", type=int, nargs="+", default=[32000])
    ap.add_argument("--pools", type=int, nargs="+", default=[2048])
    ap.add_argument("--budgets", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--n-questions", type=int, default=100)
    ap.add_argument("--hop-weights", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument("--index-cache", default="runs/eval-index-dev")
    ap.add_argument("--index-contexts", type=int, nargs="+", default=[8000, 32000],
                    help="the contexts the cached index was built for")
    ap.add_argument("--heads", default=None, help="e.g. 17:3,18:6 (default: shipped)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    index = S3Index.from_model()
    cfg = EvalConfig(datasets=("hotpotqa",), contexts=tuple(a.index_contexts), split="dev",
                     n_questions=a.n_questions, show_progress=False).validate()

    def count(text: str) -> int:
        return len(index.lm.tokenizer(text, add_special_tokens=False)["input_ids"])

    benches = build_benchmarks(cfg, count)
    index, _ = index_corpus(index, corpus_documents(benches), cache=a.index_cache,
                            show_progress=False)
    heads = ([tuple(int(x) for x in h.split(":")) for h in a.heads.split(",")] if a.heads
             else shipped_rerank_heads(index.lm.model_id))
    rr = AttentionReranker(index.lm, heads, calibrate=False)
    rows: dict[str, list[float | None]] = {}
    ms: dict[str, list[float]] = {}

    def add(name: str, value: float | None) -> None:
        rows.setdefault(name, []).append(value)

    for _, ctx, bench in benches:
        if ctx not in a.contexts:
            continue
        for qi, ex in enumerate(bench.examples):
            order = {d: index.index.row_of(d) for d in ex.doc_ids}
            for b in a.budgets:
                spans = index.search(ex.question, k=None, budget_tokens=b, mode="hybrid",
                                     doc_ids=ex.doc_ids)
                add(f"{ctx} hybrid @{b}", evidence_recall(spans, ex.evidence))
            for pool_tokens in a.pools:
                pool = index.search(ex.question, k=None, budget_tokens=pool_tokens,
                                    mode="hybrid", doc_ids=ex.doc_ids)
                pool, pieces, prompt = pool_prompt(index.lm.tokenizer, pool, order)
                # the first stage's score of each unit: its pool span's fused score
                first = np.repeat([s.score for s in pool], [len(p) for p in pieces])
                t = time.perf_counter()

                def follow_up(res: list[np.ndarray], q: str = ex.question,
                              texts: list[str] = prompt.texts) -> list[str]:
                    return [f"{q} {texts[int(np.argmax((res[0] - res[1]).sum(0)))]}"]

                asked, null, hop2 = rr.attention_on_units(
                    prompt, [ex.question, NULL_QUESTION], then=follow_up)
                ms.setdefault(f"{ctx} pool {pool_tokens} read", []).append(
                    (time.perf_counter() - t) * 1000)
                raw, icr = asked.sum(0), (asked - null).sum(0)
                hop2 = (hop2 - null).sum(0)
                variants = {"rerank raw": raw, "rerank icr": icr,
                            "rerank icr +hybrid": normalize(icr) + normalize(first)}
                for w in a.hop_weights:
                    variants[f"rerank icr +hop {w}"] = normalize(icr) + w * normalize(hop2)
                for name, s in variants.items():
                    for b in a.budgets:
                        spans = pick_spans(pool, pieces, prompt, s, k=None, budget_tokens=b)
                        add(f"{ctx} pool {pool_tokens} {name} @{b}",
                            evidence_recall(spans, ex.evidence))
            print(f"{ctx} q{qi}", flush=True)

    summary = {}
    for name, vals in rows.items():
        ctx, budget = name.split()[0], name.split("@")[1]
        base = rows[f"{ctx} hybrid @{budget}"]
        summary[name] = {**mean_stderr(vals), "vs_hybrid": paired_difference(vals, base)}
        d = summary[name]["vs_hybrid"]
        print(f"{name:45s} {summary[name]['mean']:.3f} +- {summary[name]['stderr']:.3f}   "
              f"diff {d.get('mean', float('nan')):+.3f} +- {d.get('stderr', float('nan')):.3f}")
    for name, v in ms.items():
        print(f"{name}: {np.median(v):.0f} ms median")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"args": vars(a), "heads": [list(h) for h in heads],
                                       "summary": summary, "per_question": rows,
                                       "read_ms": ms}, indent=1))


if __name__ == "__main__":
    main()
