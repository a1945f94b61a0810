"""First quality measurement: gold-sentence recall of s3 / hybrid / bm25 on HotpotQA haystacks.

Questions 0-99 (file order) are the calibration split used to choose heads; this script
reports on questions 100.. by default. Every paragraph is indexed once as its own document;
each question's search is restricted to its haystack (~8k tokens).

    python benchmarks/quality_hotpotqa.py --questions 100-299 --context 8192 \\
        --budgets 256 512 1024 --out benchmarks/results/quality_first.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from s3_retriever import S3Index
from s3_retriever.cli import _int_ranges
from s3_retriever.evaluation.data import hotpotqa_benchmark
from s3_retriever.evaluation.harness import paired, run_engine, table
from s3_retriever.fusion import LearnedFusion


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", default="100-299")
    ap.add_argument("--context", type=int, default=8192)
    ap.add_argument("--budgets", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--modes", nargs="+", default=["s3", "hybrid", "bm25"])
    ap.add_argument("--setting", action="append", default=[],
                    help="S3Settings override NAME=JSON, e.g. fusion_weight=0.3")
    ap.add_argument("--saes", default=None)
    ap.add_argument("--fusion-model", default=None,
                    help="fusion.json to use with --setting fusion='\"learned\"'")
    ap.add_argument("--out", default=None)
    ap.add_argument("--index", default=None, help="reuse (or create) a saved index of the "
                    "benchmark's documents; only search-time settings may then be overridden")
    a = ap.parse_args(argv)
    settings = {}
    for kv in a.setting:
        name, _, val = kv.partition("=")
        settings[name] = json.loads(val)
    if a.index and Path(a.index).is_dir():
        index = S3Index.load(a.index)
        for name, val in settings.items():
            setattr(index.settings, name, val)
        index.settings.validate()
    else:
        index = S3Index.from_model("smollm2-135m", saes=a.saes, **settings)
    if a.fusion_model:
        index.fusion_model = LearnedFusion.load(a.fusion_model)

    def count(text: str) -> int:
        return len(index.lm.tokenizer(text, add_special_tokens=False)["input_ids"])

    bench = hotpotqa_benchmark(_int_ranges(a.questions), a.context, count)
    t = time.perf_counter()
    rows = run_engine(index, bench, modes=a.modes, budgets=a.budgets)
    if a.index and not Path(a.index).is_dir():
        index.save(a.index)
    elapsed = time.perf_counter() - t
    tab = table(rows)
    print(f"{len(bench.examples)} questions, {len(bench.documents)} documents, "
          f"{index.index.n_tokens} tokens indexed, {elapsed:.0f} s")
    print("| mode | " + " | ".join(f"R@{b}" for b in a.budgets) + " |")
    print("|---|" + "---|" * len(a.budgets))
    for mode in a.modes:
        cells = [f"{tab[(mode, b)]['mean']:.3f} ± {tab[(mode, b)]['stderr']:.3f}"
                 for b in a.budgets]
        print(f"| {mode} | " + " | ".join(cells) + " |")
    diffs = {}
    for mode in a.modes:
        if mode != "bm25" and "bm25" in a.modes:
            for b in a.budgets:
                d = paired(rows, mode, "bm25", b)
                diffs[f"{mode}-bm25@{b}"] = d
                print(f"{mode} - bm25 @{b}: {d['mean']:+.3f} ± {d['stderr']:.3f}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({
            "command": "python " + " ".join(sys.argv), "machine": platform.processor() or
            platform.machine(), "settings": index.settings.to_dict(),
            "n_questions": len(bench.examples), "context_tokens": a.context,
            "table": {f"{m}@{b}": v for (m, b), v in tab.items()}, "paired": diffs,
        }, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
