"""Shared helpers of the performance benchmarks (``benchmarks/perf.py`` and its parts).

* :func:`real_documents` -- real text for scanning: distinct HotpotQA paragraphs (English
  Wikipedia, read from ``../shared/data``; the SAE-training paragraphs are excluded), joined
  into documents of about ``doc_tokens`` tokens, in file order, so every run scans the
  same text.
* :func:`peak_rss_mb` / :func:`rss_mb` -- this process's peak and current resident memory.
* :func:`machine` -- CPU model, cores, memory, torch version and flags, for ``perf.json``.
* :func:`percentiles` / :func:`summary` -- latency statistics.
* :func:`run_child` -- run a benchmark part in a fresh Python process and read its JSON.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RUNS = REPO / "runs" / "perf"


def real_paragraphs() -> list[str]:
    """Distinct HotpotQA paragraphs (by title, first occurrence) in file order, minus the
    paragraphs reserved for SAE training."""
    from s3_retriever.corpus import load_hotpotqa, reserved_titles

    skip = reserved_titles()
    seen: set[str] = set()
    out = []
    for q in load_hotpotqa():
        for title, sents in q["context"]:
            if title in skip or title in seen:
                continue
            seen.add(title)
            text = "".join(sents).strip()
            if text:
                out.append(text)
    return out


def real_documents(tokenizer: Any, n_tokens: int, doc_tokens: int = 2048,
                   skip_tokens: int = 0) -> list[str]:
    """Documents of about ``doc_tokens`` tokens (whole paragraphs joined by blank lines)
    totalling at least ``n_tokens`` tokens of ``tokenizer``; the first ``skip_tokens``
    tokens' worth of paragraphs are skipped (to get text disjoint from another call's).

    Raises:
        ValueError: the data holds fewer tokens than asked for.
    """
    docs: list[str] = []
    cur: list[str] = []
    cur_n = total = skipped = 0
    for p in real_paragraphs():
        n = len(tokenizer(p, add_special_tokens=False)["input_ids"]) + 2
        if skipped < skip_tokens:
            skipped += n
            continue
        cur.append(p)
        cur_n += n
        total += n
        if cur_n >= doc_tokens or total >= n_tokens:
            docs.append("\n\n".join(cur))
            cur, cur_n = [], 0
        if total >= n_tokens:
            return docs
    raise ValueError(f"the data holds only {total} tokens after skipping {skip_tokens}; "
                     f"asked for {n_tokens}")


def real_questions(n: int, start: int = 200) -> list[str]:
    """``n`` HotpotQA questions from index ``start`` (file order)."""
    from s3_retriever.corpus import load_hotpotqa

    return [q["question"] for q in load_hotpotqa()[start:start + n]]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Current resident memory of this process (MB)."""
    with open("/proc/self/statm", encoding="utf-8") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def percentiles(ms: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / mean / max of latencies in milliseconds (rounded to 0.01 ms)."""
    a = np.asarray(ms, dtype=np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 2),
            "p95": round(float(np.percentile(a, 95)), 2),
            "mean": round(float(a.mean()), 2), "max": round(float(a.max()), 2), "n": len(a)}


def timed_ms(fn, *args, **kwargs) -> tuple[Any, float]:
    """``fn(*args, **kwargs)`` and its wall time in milliseconds."""
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, (time.perf_counter() - t) * 1000.0


def machine() -> dict[str, Any]:
    """A description of this machine and software, for the results file."""
    import torch

    cpu, flags = "unknown", ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and cpu == "unknown":
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1]
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    from s3_retriever.model.loading import choose_dtype

    out = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "cpu_flags": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
                      if f" {f}" in f" {flags}"],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "model_dtype": str(choose_dtype(torch.device("cpu"))).replace("torch.", ""),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:
        pass
    return out


def run_child(script: str | Path, args: Sequence[str], timeout: float | None = None
              ) -> dict[str, Any]:
    """Run ``python script args...`` in a fresh process; its last stdout line is JSON.

    stderr passes through (progress and warnings); a failure raises with the child's code.
    """
    proc = subprocess.run([sys.executable, str(script), *map(str, args)], check=False,
                          stdout=subprocess.PIPE, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(map(str, args))} exited {proc.returncode}")
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    return json.loads(lines[-1])


def emit(result: dict[str, Any], out: Path | None) -> None:
    """A sub-benchmark's result: written to ``out`` (if given) and printed as one JSON line
    on stdout, where :func:`run_child` and ``perf.py`` read it."""
    if out:
        out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result))
