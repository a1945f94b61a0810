"""Peak RSS of a scan vs document length, each size in a fresh process (so peaks don't mix).

    python benchmarks/scan_memory.py --tokens 8192 65536

Prints, per size: tokens, scan seconds, tokens/s, peak RSS (MB), RSS after loading the
model (MB), the index's own bytes, and bytes per token next to the KV cache's.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(n_tokens: int) -> dict:
    from s3_retriever import S3Index
    from s3_retriever.corpus import load_hotpotqa, reserved_titles

    index = S3Index.from_model("smollm2-135m")
    tok = index.lm.tokenizer
    skip = reserved_titles()
    parts, count = [], 0
    for q in load_hotpotqa():
        for title, sents in q["context"]:
            if title in skip:
                continue
            p = "".join(sents).strip()
            parts.append(p)
            count += len(tok(p, add_special_tokens=False)["input_ids"]) + 1
            if count >= n_tokens:
                break
        if count >= n_tokens:
            break
    text = "\n\n".join(parts)
    del parts
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    index.add_texts([text], ids=["doc"], show_progress=False)
    dt = time.perf_counter() - t
    st = index.stats()
    return {"tokens": st["tokens"], "scan_s": round(dt, 2),
            "tokens_per_s": round(st["tokens"] / dt, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_before_scan_mb": round(base, 1), "index_bytes": st["index_bytes"],
            "index_bytes_per_token": round(st["index_bytes_per_token"], 2),
            "kv_bytes_per_token_bf16": st["kv_bytes_per_token"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[8192, 65536])
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child is not None:
        print(json.dumps(one(a.child)))
        return 0
    rows = []
    for n in a.tokens:
        out = subprocess.run([sys.executable, __file__, "--child", str(n)], check=True,
                             capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
