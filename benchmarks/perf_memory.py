"""Peak RSS of scanning and of ``answer`` vs index size, each measurement in a fresh process.

    python benchmarks/perf_memory.py scan --tokens 8192 65536 524288 [--save-largest DIR]
    python benchmarks/perf_memory.py answer runs/perf/idx-100k runs/perf/idx-1m

``scan``: per size, a fresh process loads the model, reads real text (HotpotQA paragraphs
in ~2k-token documents), resets the kernel's peak-RSS mark (``/proc/self/clear_refs``),
runs ``S3Index.add_texts`` and reports the peak RSS during the scan, the RSS before and
after it, and the index's own bytes (postings, token tables, query-mean columns; BM25
units and document text apart), so the two curves -- process memory and index size -- can
be compared. The largest index can be saved (``--save-largest``) for ``perf_query.py``.

``answer``: per saved index, a fresh process loads it (memory-mapped), runs one search (so
the query caches exist), resets the peak mark and calls ``answer`` on real questions:
the peak RSS of answering, next to the index's size.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from perf_common import (  # noqa: E402
    emit,
    peak_rss_mb,
    real_documents,
    real_questions,
    rss_mb,
    run_child,
)


def reset_peak() -> bool:
    """Reset this process's peak-RSS mark (VmHWM); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def vm_hwm_mb() -> float:
    """Peak RSS since the last reset (VmHWM, MB)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return peak_rss_mb()


class Sampler:
    """Samples RSS every ``every`` seconds in a thread (a cross-check of VmHWM)."""

    def __init__(self, every: float = 0.1):
        self.every, self.peak, self._stop = every, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.every)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def index_own_bytes(index: Any) -> dict[str, int]:
    """The index's arrays (as ``stats``), its BM25 units and its documents' text."""
    from perf_query import ram_bytes

    return ram_bytes(index)


def scan_child(n_tokens: int, save: str | None) -> dict[str, Any]:
    from s3_retriever import S3Index

    index = S3Index.from_model("smollm2-135m")
    docs = real_documents(index.lm.tokenizer, n_tokens)
    rss_load = rss_mb()
    peak_load = peak_rss_mb()
    reset = reset_peak()
    t = time.perf_counter()
    with Sampler() as sampler:
        index.add_texts(docs, show_progress=False)
    dt = time.perf_counter() - t
    peak = vm_hwm_mb() if reset else sampler.peak
    st = index.stats()
    own = index_own_bytes(index)
    out = {"tokens": st["tokens"], "documents": len(docs), "scan_s": round(dt, 2),
           "tokens_per_s": round(st["tokens"] / dt, 1),
           "rss_after_load_mb": round(rss_load, 1), "peak_rss_load_mb": round(peak_load, 1),
           "peak_rss_scan_mb": round(peak, 1), "sampled_peak_rss_scan_mb": round(sampler.peak, 1),
           "rss_after_scan_mb": round(rss_mb(), 1), "peak_reset": reset,
           "index_bytes": st["index_bytes"],
           "index_bytes_per_token": round(st["index_bytes_per_token"], 2),
           "index_ram_bytes": own, "kv_bytes_per_token": st["kv_bytes_per_token"]}
    out["scan_growth_mb"] = round(peak - rss_load, 1)
    out["index_total_ram_mb"] = round(sum(own.values()) / 2**20, 1)
    if save:
        t = time.perf_counter()
        index.save(save)
        out["save_s"] = round(time.perf_counter() - t, 2)
        out["saved_to"] = save
    return out


def answer_child(path: str, n_questions: int = 3) -> dict[str, Any]:
    from s3_retriever import S3Index

    t = time.perf_counter()
    index = S3Index.load(path)
    load_s = time.perf_counter() - t
    rss_load = rss_mb()
    questions = real_questions(n_questions + 1)
    index.search(questions[0], k=None, budget_tokens=1024)  # builds the query caches
    rss_warm = rss_mb()
    reset = reset_peak()
    times = []
    with Sampler() as sampler:
        for q in questions[1:]:
            t = time.perf_counter()
            index.answer(q, budget_tokens=1024)
            times.append(round(time.perf_counter() - t, 2))
    peak = vm_hwm_mb() if reset else sampler.peak
    return {"index": path, "tokens": index.index.n_tokens, "load_s": round(load_s, 2),
            "rss_after_load_mb": round(rss_load, 1), "rss_after_first_search_mb": round(rss_warm, 1),
            "peak_rss_answer_mb": round(peak, 1), "sampled_peak_rss_answer_mb": round(sampler.peak, 1),
            "answer_s": times, "peak_reset": reset}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("scan")
    s.add_argument("--tokens", type=int, nargs="+", default=[8192, 65536, 524288])
    s.add_argument("--save-largest", default=None)
    s.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    s.add_argument("--save", default=None, help=argparse.SUPPRESS)
    a_ = sub.add_parser("answer")
    a_.add_argument("paths", nargs="+")
    a_.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for p in (s, a_):
        p.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    rows = []
    if a.cmd == "scan" and a.child is not None:
        print(json.dumps(scan_child(a.child, a.save)))
        return 0
    if a.cmd == "answer" and a.child:
        print(json.dumps(answer_child(a.paths[0])))
        return 0
    if a.cmd == "scan":
        for n in a.tokens:
            extra = ["--save", a.save_largest] if a.save_largest and n == max(a.tokens) else []
            rows.append(run_child(__file__, ["scan", "--child", n, *extra]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    else:
        for p in a.paths:
            rows.append(run_child(__file__, ["answer", "--child", p]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    out = {a.cmd: rows}
    emit(out, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
