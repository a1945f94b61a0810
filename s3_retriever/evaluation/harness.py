"""Run retrievers over a benchmark: one scan of the corpus, every question filtered to its
haystack, evidence recall / answer recall / MRR per retriever and budget.

Example:
    >>> from s3_retriever.evaluation.harness import run_engine  # doctest: +SKIP
    >>> rows = run_engine(index, bench, modes=["s3", "bm25"], budgets=[1024])  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from s3_retriever.engine import S3Index
from s3_retriever.evaluation.data import Benchmark
from s3_retriever.evaluation.metrics import (
    answer_recall,
    evidence_recall,
    mean_stderr,
    mrr,
    paired_difference,
)


def index_benchmark(index: S3Index, bench: Benchmark, *, show_progress: bool = True) -> None:
    """Add every benchmark document not yet in the index (one scan serves all questions)."""
    todo = [d for d in bench.documents.values() if d.doc_id not in index.index]
    if todo:
        index.add_texts([d.text for d in todo], [d.metadata for d in todo],
                        [d.doc_id for d in todo], show_progress=show_progress)


def run_engine(index: S3Index, bench: Benchmark, *, modes: Sequence[str] = ("s3", "hybrid",
               "bm25"), budgets: Sequence[int] = (1024,), show_progress: bool = True
               ) -> list[dict[str, Any]]:
    """Per-question rows: ``{qid, mode, budget, evidence_recall, answer_recall, mrr, ms}``."""
    index_benchmark(index, bench, show_progress=show_progress)
    rows = []
    for ex in tqdm(bench.examples, desc=f"eval {bench.name}", disable=not show_progress):
        for mode in modes:
            for budget in budgets:
                t = time.perf_counter()
                spans = index.search(ex.question, k=None, budget_tokens=budget, mode=mode,
                                     doc_ids=ex.doc_ids)
                ms = (time.perf_counter() - t) * 1000
                rows.append({"qid": ex.qid, "mode": mode, "budget": budget, "ms": ms,
                             "evidence_recall": evidence_recall(spans, ex.evidence),
                             "answer_recall": answer_recall([s.text for s in spans], ex.answers),
                             "mrr": mrr(spans, ex.evidence)})
    return rows


def table(rows: list[dict[str, Any]], metric: str = "evidence_recall") -> dict[tuple, dict]:
    """(mode, budget) -> ``{"mean", "stderr", "n"}`` of ``metric``."""
    return {key: mean_stderr(r[metric] for r in rows if (r["mode"], r["budget"]) == key)
            for key in sorted({(r["mode"], r["budget"]) for r in rows})}


def paired(rows: list[dict[str, Any]], a: str, b: str, budget: int,
           metric: str = "evidence_recall") -> dict[str, float]:
    """Paired difference ``a - b`` of ``metric`` at ``budget`` over the same questions."""
    va = {r["qid"]: r[metric] for r in rows if r["mode"] == a and r["budget"] == budget}
    vb = {r["qid"]: r[metric] for r in rows if r["mode"] == b and r["budget"] == budget}
    qs = [q for q in va if q in vb]
    return paired_difference([va[q] for q in qs], [vb[q] for q in qs])
