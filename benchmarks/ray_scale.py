"""Scale-out on Ray: scan throughput with 1 and 2 workers (side by side, one run), memory
per worker, and sharded search latency against the single (merged) index.

    python benchmarks/ray_scale.py --paragraphs 150 --questions 20 --shards 4 --cpus 2

A local Ray instance with ``--cpus`` CPUs (default: all); each worker reserves one CPU
(Ray then runs its torch on one thread). The corpus is HotpotQA dev paragraphs (outside
the SAE-training slice), one document each, cut into ``--shards`` batches. Prints the
startup cost of a worker (a 1-document scan), then per worker count: wall seconds of
``index_corpus`` (startup included), tokens/s and the ratio to the first count, both as
measured and less the startup, and the peak RSS of each worker process; then the median / p90 latency of a search of
the merged index in process, the sharded index in process (ShardedIndex.load) and the
sharded index served by Ray actors (serve_sharded), and the RSS of a shard actor.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def corpus(n_paragraphs: int, n_questions: int) -> tuple[list[dict], list[str]]:
    """``n_paragraphs`` distinct HotpotQA paragraphs (documents) and questions about them."""
    from s3_retriever.corpus import RESERVED_SAE_QUESTIONS, load_hotpotqa, reserved_titles

    skip = reserved_titles()
    docs, questions, seen = [], [], set()
    for i, q in enumerate(load_hotpotqa()):
        if i in RESERVED_SAE_QUESTIONS:
            continue
        if len(questions) < n_questions:  # the first questions' paragraphs come first
            questions.append(q["question"])
        for title, sentences in q["context"]:
            text = "".join(sentences).strip()
            if title in skip or title in seen or not text:
                continue
            seen.add(title)
            docs.append({"id": title, "text": text})
        if len(docs) >= n_paragraphs and len(questions) >= n_questions:
            break
    return docs[:n_paragraphs], questions


class RssWatch:
    """Peak RSS (MB) of every process whose command line holds ``needle``, polled."""

    def __init__(self, needle: str, every: float = 0.25) -> None:
        self.needle, self.every, self.peak = needle, every, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            for p in psutil.process_iter(["pid", "cmdline"]):
                try:
                    if self.needle in " ".join(p.info["cmdline"] or []):
                        mb = p.memory_info().rss / 2**20
                        self.peak[p.pid] = max(self.peak.get(p.pid, 0.0), mb)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self._stop.wait(self.every)

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def latency(search, questions: list[str], k: int) -> dict:
    """Median and p90 seconds of ``search(q, k=k)`` over ``questions`` (after one warm-up)."""
    search(questions[0], k=k)
    times = []
    for q in questions:
        t = time.perf_counter()
        search(q, k=k)
        times.append(time.perf_counter() - t)
    times.sort()
    return {"median_ms": round(1000 * statistics.median(times), 1),
            "p90_ms": round(1000 * times[int(0.9 * (len(times) - 1))], 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paragraphs", type=int, default=60)
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--shards", type=int, default=4,
                    help="batches (= shards) the corpus is cut into: the batch size follows")
    ap.add_argument("--cpus", type=int, default=None, help="Ray's CPUs (default: all)")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    a = ap.parse_args(argv)

    import ray

    from s3_retriever import S3Index
    from s3_retriever.distributed import index_corpus, merge_shards, read_manifest
    from s3_retriever.distributed.serve import serve_sharded
    from s3_retriever.distributed.shards import ShardedIndex
    from s3_retriever.model.loading import load_model

    docs, questions = corpus(a.paragraphs, a.questions)
    batch_size = -(-len(docs) // a.shards)
    ray.init(num_cpus=a.cpus, include_dashboard=False, log_to_driver=False)
    report: dict = {"documents": len(docs), "cpus": ray.cluster_resources().get("CPU"),
                    "batch_size": batch_size, "scan": [], "search": {}}
    work = Path(tempfile.mkdtemp(prefix="ray_scale_"))
    try:
        # what a worker costs before it scans (actor start, model and SAE load): one
        # short document on one worker
        t = time.perf_counter()
        index_corpus(docs[:1], work / "startup", workers=1, show_progress=False)
        report["startup_s"] = startup = round(time.perf_counter() - t, 1)
        print(f"startup (1 worker, 1 document): {startup} s")
        for n in a.workers:
            out = work / f"workers{n}"
            with RssWatch("MapWorker") as watch:
                t = time.perf_counter()
                index_corpus(docs, out, workers=n, batch_size=batch_size,
                             show_progress=False)
                seconds = time.perf_counter() - t
            tokens = read_manifest(out)["tokens"]
            report["scan"].append({
                "workers": n, "tokens": tokens, "seconds": round(seconds, 1),
                "tokens_per_s": round(tokens / seconds, 1),
                "tokens_per_s_after_startup": round(tokens / max(seconds - startup, 1e-3), 1),
                "worker_peak_rss_mb": sorted(round(v) for v in watch.peak.values())})
        base = report["scan"][0]
        for row in report["scan"]:
            row["ratio"] = round(row["tokens_per_s"] / base["tokens_per_s"], 2)
            row["ratio_after_startup"] = round(row["tokens_per_s_after_startup"]
                                               / base["tokens_per_s_after_startup"], 2)
            print(f"scan: {row['workers']} worker(s): {row['tokens']} tokens in "
                  f"{row['seconds']} s = {row['tokens_per_s']} tokens/s (x{row['ratio']}); "
                  f"less the startup: {row['tokens_per_s_after_startup']} tokens/s "
                  f"(x{row['ratio_after_startup']}); worker peak RSS "
                  f"{row['worker_peak_rss_mb']} MB")

        sharded = work / f"workers{a.workers[-1]}"
        shards = len(read_manifest(sharded)["shards"])
        lm = load_model("smollm2-135m")
        merged = S3Index.load(merge_shards(sharded, work / "merged", show_progress=False),
                              model=lm)
        local = ShardedIndex.load(sharded, model=lm)
        with RssWatch("ShardActor") as watch:
            served = serve_sharded(sharded, model=lm, num_cpus_per_actor=0)
            report["search"] = {
                "shards": shards,
                "single_index": latency(merged.search, questions, a.k),
                "sharded_in_process": latency(local.search, questions, a.k),
                "sharded_ray_actors": latency(served.search, questions, a.k)}
        report["search"]["shard_actor_peak_rss_mb"] = sorted(round(v)
                                                             for v in watch.peak.values())
        for name in ("single_index", "sharded_in_process", "sharded_ray_actors"):
            r = report["search"][name]
            print(f"search ({shards} shards, k={a.k}, {len(questions)} questions): {name}: "
                  f"median {r['median_ms']} ms, p90 {r['p90_ms']} ms")
        print(f"shard actor peak RSS: {report['search']['shard_actor_peak_rss_mb']} MB")
    finally:
        ray.shutdown()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report))
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
