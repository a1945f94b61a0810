"""Scan throughput in bf16 and fp32, side by side on one CPU: what ``make demo`` shows.

    python benchmarks/scan_dtype.py [--rounds 3] [--out benchmarks/results/scan_dtype.json]

Loads the embedded model twice in one process (bf16 and fp32, whatever the CPU has), builds
the demo's ~8k-token HotpotQA document, and runs ``S3Index.add_texts`` on it in each dtype,
alternating the order every round (interleaved A/B). Prints each dtype's median tokens/s,
the bf16/fp32 ratio, and which dtype this CPU would choose by default and why.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from s3_retriever import S3Index
from s3_retriever.demo import build_haystack
from s3_retriever.model.loading import DTYPE_ENV, cpu_has_fast_bf16, dtype_choice, load_model


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_kind() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    kinds = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags]
    return ", ".join(kinds) or "none of amx_bf16/avx512_bf16/avx512f/avx2"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    a = ap.parse_args()
    text, _ = build_haystack()
    indexes = {d: S3Index.from_model(load_model("smollm2-135m", dtype=d))
               for d in ("bf16", "fp32")}
    speeds: dict[str, list[float]] = {d: [] for d in indexes}
    tokens = 0
    for r in range(a.rounds):
        order = list(indexes) if r % 2 == 0 else list(indexes)[::-1]
        for d in order:
            index = indexes[d]
            start = time.perf_counter()
            index.add_texts([text], ids=[f"r{r}"], show_progress=False)
            seconds = time.perf_counter() - start
            tokens = index.index.n_tokens // (r + 1)
            speeds[d].append(tokens / seconds)
    default, why = dtype_choice(torch.device("cpu"))
    result = {
        "cpu": cpu_name(), "cpu_flags": cpu_kind(), "fast_bf16": cpu_has_fast_bf16(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "tokens": tokens,
        "rounds": a.rounds,
        "tokens_per_s": {d: round(statistics.median(v)) for d, v in speeds.items()},
        "bf16_over_fp32": round(statistics.median(speeds["bf16"])
                                / statistics.median(speeds["fp32"]), 2),
        "default_dtype": str(default).replace("torch.", ""), "why": why,
        "note": f"${DTYPE_ENV} forces the default",
    }
    print(json.dumps(result, indent=1))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
