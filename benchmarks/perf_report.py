"""Markdown tables of a ``perf.json`` (the tables of docs/benchmarks.md, section 6).

    python benchmarks/perf_report.py [benchmarks/results/perf.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(head: list[str], rows: list[list[Any]]) -> str:
    return "\n".join([_row(head), _row(["---"] * len(head)), *(_row(r) for r in rows)])


def _ms(p: dict[str, Any]) -> str:
    return f"{p['p50']:.1f} / {p['p95']:.1f}"


def report(d: dict[str, Any]) -> str:
    parts = d["parts"]
    scan = parts["scan"]
    out = ["### Scan overhead (interleaved A/B, median of rounds)", ""]
    tps = scan["tokens_per_s"]
    out.append(_table(
        ["variant", "tokens/s", "time vs full forward"],
        [[v, f"{tps[v]:,.0f}", f"{tps['forward_full'] / tps[v]:.2f}"]
         for v in ("forward_full", "forward_layers", "forward_to_last_indexed", "scan",
                   "add_texts")]))
    out += ["", f"scan_overhead_ratio (scan / full forward) = {d['scan_overhead_ratio']}; "
            f"vs forward stopped after layer {scan['last_indexed_layer']}: "
            f"{d['scan_overhead_ratio_vs_forward_to_last_indexed']}", ""]
    out += ["### Kernels", ""]
    out.append(_table(
        ["dictionary", "rows", "method", "ms", "speed-up vs naive", "ids exact", "recall@k"],
        [[r["dictionary"], r["rows"], r["method"], f"{r['seconds'] * 1000:.2f}",
          f"{r['speedup']:.2f}", f"{r['ids_exact']:.4f}", f"{r['recall']:.4f}"]
         for r in parts["kernels"]["kernels"]]))
    out += ["", "### Index size", ""]
    q = parts["query"]
    rows = []
    for lab, r in q["sizes"].items():
        rows.append([lab, f"{r['tokens']:,}", r["disk_bytes_per_token"]["index"],
                     r["disk_bytes_per_token"]["total_folder"],
                     r["ram_bytes_per_token"]["index_arrays"],
                     r["ram_bytes_per_token"]["index_arrays_plus_postings"],
                     r["ram_bytes_per_token"]["all_including_bm25_and_text"],
                     r["baselines"]["bm25_bytes_per_token"],
                     r["baselines"]["dense_bytes_per_token"]])
    out.append(_table(["index", "tokens", "disk B/token (index)", "disk B/token (folder)",
                       "RAM B/token (codes and tables)", "RAM B/token (+ postings)",
                       "RAM B/token (+ BM25, text)", "rank-bm25 B/token",
                       "dense B/token"], rows))
    out += ["", f"KV cache: {q['kv_bytes_per_token']:,} B/token", ""]
    out += ["### Query latency (ms, p50 / p95; budget 1,024 tokens)", ""]
    rows = []
    for lab, r in q["sizes"].items():
        for mode in ("hybrid", "s3", "bm25", "hybrid_haystack_32k", "s3_coactivation"):
            m = r[mode]
            rows.append([lab, mode, _ms(m["lookup_and_spans"]), _ms(m["s3_lookup"]),
                         _ms(m["span_growth"]), _ms(m["forward"]), _ms(m["end_to_end"])])
        b = r["baselines"]
        rows.append([lab, "rank-bm25 (passages)", "", "", "", "", _ms(b["bm25_ms"])])
        rows.append([lab, "MiniLM + faiss flat", "", "", "",
                     _ms(b["dense_question_encode_ms"]), _ms(b["dense_ms"])])
    out.append(_table(["index", "retriever", "lookup + spans", "S3 scoring", "span growth",
                       "question forward", "end to end"], rows))
    out += ["", "### Memory (MB)", ""]
    rows = [[f"{r['tokens']:,}", r["rss_after_load_mb"], r["peak_rss_scan_mb"],
             r["scan_growth_mb"], r["index_total_ram_mb"], f"{r['tokens_per_s']:,.0f}"]
            for r in parts["memory_scan"]]
    out.append(_table(["scanned tokens", "RSS after model load", "peak RSS of the scan",
                       "growth", "index's own RAM", "tokens/s"], rows))
    out.append("")
    rows = [[f"{r['tokens']:,}", r["rss_after_load_mb"], r["rss_after_first_search_mb"],
             r["peak_rss_answer_mb"], r["answer_s"]] for r in parts["memory_answer"]]
    out.append(_table(["index tokens", "RSS after load", "RSS after first search",
                       "peak RSS of answer", "answer s"], rows))
    out += ["", "### Indexing throughput (tokens/s of the same text)", ""]
    out.append(_table(["indexer", "tokens/s"],
                      [[k, f"{v:,.0f}"] for k, v in d["indexing_tokens_per_s"].items()]))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else Path(__file__).resolve().parent / "results" / "perf.json"
    print(report(json.loads(path.read_text(encoding="utf-8"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
