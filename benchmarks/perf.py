"""The performance run (``make bench``): every part in a fresh process, one results file.

    python benchmarks/perf.py [--out benchmarks/results/perf.json] [--quick]

Parts, in order (each a script of this folder, run as a child process so memory figures
do not mix):

1. ``perf_kernels.py`` -- top-k encode paths vs the naive reference, on real keys.
2. ``perf_scan.py`` -- interleaved A/B: the S3 scan vs plain forward passes over the same
   chunks; dense (MiniLM) and BM25 indexing throughput over the same text.
3. ``perf_memory.py scan`` -- peak RSS of scanning 8k, 64k and 512k tokens (fresh process
   each) and the index's own size; the 512k index is saved for part 4.
4. ``perf_query.py`` -- query latency at 100k and 1M indexed tokens (built from the real
   codes of part 3), bytes per token on disk and in RAM, BM25 and dense side by side.
5. ``perf_memory.py answer`` -- peak RSS of ``answer`` on the 100k and 1M indexes.

``benchmarks/gpu_check.py`` needs CUDA and is not part of this run; when its results file
exists (``benchmarks/results/gpu_check.json``) it is copied into ``perf.json``.
``--quick`` runs every part at toy sizes (a smoke test of the pipeline, not for recording).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from perf_common import REPO, RUNS, machine, run_child  # noqa: E402

HERE = Path(__file__).resolve().parent

FULL = {"kernel_rows": 8192, "scan_tokens": 8192, "scan_rounds": 4,
        "memory_tokens": [8192, 65536, 524288], "query_sizes": [100_000, 1_000_000],
        "questions": 100, "questions_1m": 50}
QUICK = {"kernel_rows": 1024, "scan_tokens": 2048, "scan_rounds": 2,
         "memory_tokens": [2048, 8192], "query_sizes": [4000, 12000],
         "questions": 8, "questions_1m": 6}


def _stage(name: str, fn, log: dict[str, float]) -> Any:
    print(f"== {name}", file=sys.stderr, flush=True)
    t = time.perf_counter()
    out = fn()
    log[name] = round(time.perf_counter() - t, 1)
    print(f"== {name}: {log[name]} s", file=sys.stderr, flush=True)
    return out


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run every part; returns the raw results by part."""
    RUNS.mkdir(parents=True, exist_ok=True)
    largest = RUNS / f"idx-scan-{max(cfg['memory_tokens'])}"
    log: dict[str, float] = {}
    parts: dict[str, Any] = {"seconds": log}
    parts["kernels"] = _stage("kernels", lambda: run_child(
        HERE / "perf_kernels.py", ["--rows", cfg["kernel_rows"]]), log)
    parts["scan"] = _stage("scan overhead and indexing throughput", lambda: run_child(
        HERE / "perf_scan.py", ["--tokens", cfg["scan_tokens"], "--rounds", cfg["scan_rounds"]]),
        log)
    parts["memory_scan"] = _stage("scan memory", lambda: run_child(
        HERE / "perf_memory.py", ["scan", "--tokens", *cfg["memory_tokens"],
                                  "--save-largest", largest]), log)["scan"]
    parts["query"] = _stage("query latency and index size", lambda: run_child(
        HERE / "perf_query.py", ["--source", largest, "--sizes", *cfg["query_sizes"],
                                 "--questions", cfg["questions"],
                                 "--questions-1m", cfg["questions_1m"]]), log)
    saved = [REPO / r["saved_to"] for r in parts["query"]["sizes"].values() if "saved_to" in r]
    parts["memory_answer"] = _stage("answer memory", lambda: run_child(
        HERE / "perf_memory.py", ["answer", *saved]), log)["answer"]
    return parts


def _label(n: int) -> str:
    return "1m" if n >= 1_000_000 else f"{n // 1000}k"


def summarise(parts: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``perf.json`` top-level keys (the issue's names) from the parts' raw results."""
    scan, query = parts["scan"], parts["query"]
    sizes = query["sizes"]
    kv = query["kv_bytes_per_token"]
    big = sizes[_label(max(cfg["query_sizes"]))]
    out: dict[str, Any] = {
        "scan_overhead_ratio": scan["scan_overhead_ratio"],
        "scan_overhead_ratio_vs_forward_to_last_indexed":
            scan["scan_overhead_ratio_vs_forward_to_last_indexed"],
        "scan_tokens_per_s": scan["tokens_per_s"]["scan"],
        "forward_tokens_per_s": scan["tokens_per_s"]["forward_full"],
        "forward_to_last_indexed_tokens_per_s": scan["tokens_per_s"]["forward_to_last_indexed"],
        "add_texts_tokens_per_s": scan["tokens_per_s"]["add_texts"],
        "kv_bytes_per_token": kv,
        "index_bytes_per_token": big["disk_bytes_per_token"]["index"],
        "index_bytes_per_token_disk": big["disk_bytes_per_token"]["index"],
        "index_bytes_per_token_ram": big["ram_bytes_per_token"]["index_arrays"],
        "index_bytes_per_token_ram_all": big["ram_bytes_per_token"]["all_including_bm25_and_text"],
    }
    out["kv_over_index_disk"] = round(kv / out["index_bytes_per_token_disk"], 1)
    out["kv_over_index_ram"] = round(kv / out["index_bytes_per_token_ram"], 1)
    out["bm25_bytes_per_token"] = big["baselines"]["bm25_bytes_per_token"]
    out["dense_bytes_per_token"] = big["baselines"]["dense_bytes_per_token"]
    for n in cfg["query_sizes"]:
        lab = _label(n)
        hybrid = sizes[lab]["hybrid"]
        out[f"query_ms_p50_{lab}"] = hybrid["lookup_and_spans"]["p50"]
        out[f"query_ms_p95_{lab}"] = hybrid["lookup_and_spans"]["p95"]
        out[f"search_ms_p50_{lab}"] = hybrid["end_to_end"]["p50"]
        out[f"search_ms_p95_{lab}"] = hybrid["end_to_end"]["p95"]
        hay = sizes[lab]["hybrid_haystack_32k"]["lookup_and_spans"]
        out[f"haystack32k_query_ms_p50_{lab}"] = hay["p50"]
        out[f"haystack32k_query_ms_p95_{lab}"] = hay["p95"]
        out[f"coactivation_query_ms_p50_{lab}"] = \
            sizes[lab]["s3_coactivation"]["lookup_and_spans"]["p50"]
        out[f"bm25_ms_p50_{lab}"] = sizes[lab]["baselines"]["bm25_ms"]["p50"]
        out[f"dense_ms_p50_{lab}"] = sizes[lab]["baselines"]["dense_ms"]["p50"]
    out["peak_rss_mb"] = {str(r["tokens"]): r["peak_rss_scan_mb"] for r in parts["memory_scan"]}
    out["rss_after_model_load_mb"] = {str(r["tokens"]): r["rss_after_load_mb"]
                                      for r in parts["memory_scan"]}
    out["index_ram_mb"] = {str(r["tokens"]): r["index_total_ram_mb"] for r in parts["memory_scan"]}
    out["peak_rss_answer_mb"] = {str(r["tokens"]): r["peak_rss_answer_mb"]
                                 for r in parts["memory_answer"]}
    peers = scan["peers"]
    out["indexing_tokens_per_s"] = {"s3_scan": out["scan_tokens_per_s"],
                                    "s3_add_texts": out["add_texts_tokens_per_s"],
                                    "dense_minilm": peers["dense_minilm_tokens_per_s"],
                                    "bm25_passages": peers["bm25_passages_tokens_per_s"],
                                    "bm25_engine": peers["bm25_engine_tokens_per_s"]}
    out["kernel_default_cpu"] = "topk"
    out["kernel_fastest_exact_scan_chunk"] = parts["kernels"]["fastest_exact_scan_chunk"]
    out["kernel_fastest_exact_8192_rows"] = parts["kernels"]["fastest_exact_shipped"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "perf.json")
    ap.add_argument("--quick", action="store_true", help="toy sizes: a smoke test only")
    a = ap.parse_args(argv)
    cfg = QUICK if a.quick else FULL
    started = dt.datetime.now(dt.timezone.utc)
    t = time.perf_counter()
    parts = run(cfg)
    result = summarise(parts, cfg)
    result["machine"] = machine()
    result["command"] = "make bench  # = " + " ".join(
        ["python", "benchmarks/perf.py", *map(shlex.quote, argv if argv is not None
                                              else sys.argv[1:])])
    result["started_utc"] = started.isoformat(timespec="seconds")
    result["total_s"] = round(time.perf_counter() - t, 1)
    result["config"] = cfg
    gpu = HERE / "results" / "gpu_check.json"
    result["gpu_check"] = (json.loads(gpu.read_text(encoding="utf-8")) if gpu.is_file() else
                           {"ran": False, "reason": "no CUDA device was available to this run; "
                            "run benchmarks/gpu_check.py on a CUDA machine"})
    result["parts"] = parts
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "parts"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
