"""Top-k encode kernels against the naive ``relu(x @ W + b).topk(k)``, on real keys.

    python benchmarks/perf_kernels.py [--out FILE]

The keys are real: pre-RoPE keys of layer 17 (kv head 1) of the default model over real
text, divided by the shipped SAE's key scale, minus its ``b_dec`` (exactly what the
scan encodes). Dictionaries: the shipped SAE (2,048 latents, k 16) and random unit-norm
encoders of 16,384 and 65,536 latents (the same keys) for the large-dictionary paths.

Per (dictionary, rows, method): median seconds of a call over a few repeats, rows/s,
speed-up over the naive reference, the fraction of rows whose ids equal the reference's
exactly (same order), and recall@k (set overlap).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from perf_common import emit, machine, real_documents  # noqa: E402


def real_keys(n_rows: int) -> tuple[torch.Tensor, object]:
    """``n_rows`` SAE inputs (keys / key_scale - b_dec) of layer 17 kv head 1, and the SAE."""
    from s3_retriever import S3Index
    from s3_retriever.model.hooks import QKHooks
    from s3_retriever.retrieval.scan import tokenize_document

    index = S3Index.from_model("smollm2-135m")
    lm, sae = index.lm, index.saes["layers.17"]
    text = "\n\n".join(real_documents(lm.tokenizer, n_rows + 64, doc_tokens=n_rows + 64))
    ids, _ = tokenize_document(lm.tokenizer, text)
    rows = []
    with QKHooks(lm.model, [17], keys=True) as hooks:
        for s in range(0, n_rows, 512):
            cap = hooks.run(input_ids=lm.input_tensor(ids[s:s + 512]))
            rows.append(cap.keys[17][0, len(lm.sink_ids):, 1].float())
    x = torch.cat(rows)[:n_rows] / float(sae.cfg.key_scale) - sae.b_dec.detach().float()
    return x.contiguous(), sae


def _time(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2], out


def _agreement(ids: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    exact = float((ids == ref).all(dim=1).float().mean())
    s_ids, _ = ids.sort(dim=1)
    s_ref, _ = ref.sort(dim=1)
    # recall: |ids ∩ ref| / k per row, via a sorted merge-free broadcast compare
    hit = (s_ids.unsqueeze(2) == s_ref.unsqueeze(1)).any(dim=2).float().mean()
    return round(exact, 5), round(float(hit), 5)


def bench_dictionary(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, k: int, label: str,
                     repeats: int, faiss_ivf: bool) -> list[dict]:
    from kernel_variants import FaissTopK, bf16_topk_encode, partial_topk_encode

    from s3_retriever.sae.kernels import naive_topk_encode, topk_encode

    D = W.shape[1]
    ref_t, (ref_acts, ref_ids) = _time(lambda: naive_topk_encode(x, W, b, k), repeats)
    rows = [{"dictionary": label, "latents": D, "k": k, "rows": len(x), "method": "naive",
             "seconds": round(ref_t, 5), "rows_per_s": round(len(x) / ref_t),
             "speedup": 1.0, "ids_exact": 1.0, "recall": 1.0}]
    methods = {m: (lambda m=m: topk_encode(x, W, b, k, method=m)) for m in ("topk", "rerank")}
    methods["partial"] = lambda: partial_topk_encode(x, W, b, k)
    methods["bf16"] = lambda: bf16_topk_encode(x, W, b, k)
    flat = FaissTopK(W, b)
    methods["faiss_flat"] = lambda: flat(x, k)
    if faiss_ivf:
        nlist = max(16, int(4 * D ** 0.5))
        ivf = FaissTopK(W, b, nlist=nlist, nprobe=max(1, nlist // 16))
        methods[f"faiss_ivf{nlist}_probe{nlist // 16}"] = lambda: ivf(x, k)
    for name, fn in methods.items():
        t, (acts, ids) = _time(fn, repeats)
        exact, recall = _agreement(ids, ref_ids)
        rows.append({"dictionary": label, "latents": D, "k": k, "rows": len(x), "method": name,
                     "seconds": round(t, 5), "rows_per_s": round(len(x) / t),
                     "speedup": round(ref_t / t, 2), "ids_exact": exact, "recall": recall,
                     "max_abs_act_diff": round(float((acts - ref_acts).abs().max()), 6)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def run(n_rows: int = 8192, repeats: int = 5) -> dict:
    x, sae = real_keys(n_rows)
    W = sae.W_enc.detach().float()
    b = sae.b_enc.detach().float()
    k = int(sae.cfg.k)
    results = []
    results += bench_dictionary(x[:512], W, b, k, "shipped layer 17 (one scan chunk)",
                                repeats * 4, faiss_ivf=False)
    results += bench_dictionary(x, W, b, k, "shipped layer 17", repeats, faiss_ivf=False)
    g = torch.Generator().manual_seed(0)
    for D, n in ((16384, 4096), (65536, 2048)):
        Wr = torch.randn(x.shape[1], D, generator=g)
        Wr /= Wr.norm(dim=0, keepdim=True)
        results += bench_dictionary(x[:n], Wr, torch.zeros(D), k, f"random {D}", repeats,
                                    faiss_ivf=True)
    def fastest(label: str) -> str:
        return min((r for r in results if r["dictionary"] == label and r["method"] != "naive"
                    and r["ids_exact"] == 1.0), key=lambda r: r["seconds"])["method"]

    return {"kernels": results,
            "fastest_exact_scan_chunk": fastest("shipped layer 17 (one scan chunk)"),
            "fastest_exact_shipped": fastest("shipped layer 17"),
            "torch_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    out = run(a.rows, a.repeats)
    out["machine"] = machine()
    emit(out, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
