"""Query latency by stage at a few index sizes (no baselines, nothing saved): a quick check.

    python benchmarks/query_stages.py --sizes 100000 1000000 --questions 10

Indexes are built from the real codes of ``--source`` (as ``perf_query.py`` builds them);
per size and mode, the p50 of each stage of ``search(q, budget_tokens=1024)``: end to end,
the question's forward pass, the S3 lookup, BM25, span growth and packing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from perf_common import RUNS, real_questions  # noqa: E402
from perf_query import BUDGET, build, instrument, stored_documents, time_queries  # noqa: E402


def main() -> int:
    from s3_retriever import S3Index
    from s3_retriever.model.loading import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=RUNS / "idx-512k")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--questions", type=int, default=10)
    a = ap.parse_args()
    lm = load_model("smollm2-135m")
    src = S3Index.load(a.source, model=lm)
    stored = stored_documents(src)
    del src
    questions = real_questions(a.questions)
    for n in a.sizes:
        index = build(lm, stored, n, f"{n}")
        index.search(questions[0], k=None, budget_tokens=BUDGET)
        timers = instrument(index)
        for mode in ("hybrid", "s3", "bm25"):
            stages = time_queries(index, timers, questions, mode)
            print(json.dumps({"tokens": index.index.n_tokens, "documents": len(index),
                              "mode": mode, **{k: v["p50"] for k, v in stages.items()}}),
                  flush=True)
        del index
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
