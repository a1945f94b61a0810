"""GPU check: the CUDA top-k encode against the CPU path, and the scan on a GPU.

    python benchmarks/gpu_check.py [--tokens 32768 262144] [--out benchmarks/results/gpu_check.json]

Runs unchanged on any machine with CUDA and the project installed (exits with code 2 and a
message where CUDA is missing). Three parts, all with the default model on the GPU:

1. Kernels: real keys of layer 17 (kv head 1), as the scan encodes them, through every
   ``topk_encode`` method on CUDA vs the naive fp32 reference on the CPU: fraction of rows
   with identical ids (same order), recall@k, largest activation difference, rows/s.
   Also random 16,384- and 65,536-latent encoders (same keys) for the large-dictionary case.
2. Scan: ``S3Index.add_texts`` of 32k and 256k tokens of real text (HotpotQA paragraphs from
   ``../shared/data``; the repository's Markdown files, repeated, where that data is absent):
   tokens/s and peak GPU memory (allocated and reserved).
3. A plain forward of the full model over the same chunks: tokens/s, for the overhead ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from perf_common import REPO, machine  # noqa: E402


def text_documents(tokenizer: Any, n_tokens: int) -> tuple[list[str], str]:
    """~2k-token documents of real text, and where the text came from."""
    from perf_common import real_documents

    try:
        return real_documents(tokenizer, n_tokens), "HotpotQA paragraphs (../shared/data)"
    except (FileNotFoundError, ValueError):
        pass
    files = sorted(p for p in REPO.rglob("*.md") if ".venv" not in p.parts)
    base = "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)
    per = max(1, len(tokenizer(base, add_special_tokens=False)["input_ids"]))
    text = "\n\n".join([base] * (n_tokens // per + 1))
    step = len(text) // max(1, n_tokens // 2048)
    return [text[i:i + step] for i in range(0, len(text), step)], "repository Markdown, repeated"


def sync() -> None:
    torch.cuda.synchronize()


def gpu_keys(index: Any, n_rows: int) -> torch.Tensor:
    """SAE inputs of layer 17 kv head 1 (keys / key_scale - b_dec), computed on the GPU."""
    from s3_retriever.model.hooks import QKHooks
    from s3_retriever.retrieval.scan import tokenize_document

    lm, sae = index.lm, index.saes["layers.17"]
    docs, _ = text_documents(lm.tokenizer, n_rows + 2048)
    ids, _ = tokenize_document(lm.tokenizer, "\n\n".join(docs))
    rows = []
    with QKHooks(lm.model, [17], keys=True) as hooks:
        for s in range(0, n_rows, 2048):
            cap = hooks.run(input_ids=lm.input_tensor(ids[s:s + 2048]))
            rows.append(cap.keys[17][0, len(lm.sink_ids):, 1].float())
    x = torch.cat(rows)[:n_rows] / float(sae.cfg.key_scale)
    return (x - sae.b_dec.detach().float().to(x.device)).contiguous()


def kernel_rows(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, k: int, label: str
                ) -> list[dict[str, Any]]:
    from kernel_variants import bf16_topk_encode, partial_topk_encode

    from s3_retriever.sae.kernels import naive_topk_encode, topk_encode

    ref_acts, ref_ids = naive_topk_encode(x.cpu(), W.cpu(), b.cpu(), k)
    Wc, bc = W.cuda(), b.cuda()
    out = []
    for method in ("topk", "partial", "rerank", "bf16"):
        def fn(m: str = method) -> tuple[torch.Tensor, torch.Tensor]:
            if m == "partial":
                return partial_topk_encode(x, Wc, bc, k)
            if m == "bf16":
                return bf16_topk_encode(x, Wc, bc, k)
            return topk_encode(x, Wc, bc, k, method=m)

        fn()
        sync()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            acts, ids = fn()
            sync()
            times.append(time.perf_counter() - t)
        times.sort()
        ids_c, acts_c = ids.cpu(), acts.cpu()
        s_ids, s_ref = ids_c.sort(dim=1).values, ref_ids.sort(dim=1).values
        recall = (s_ids.unsqueeze(2) == s_ref.unsqueeze(1)).any(dim=2).float().mean().item()
        out.append({"dictionary": label, "latents": W.shape[1], "rows": len(x), "method": method,
                    "ids_exact_vs_cpu": round((ids_c == ref_ids).all(dim=1).float().mean().item(), 6),
                    "recall_vs_cpu": round(recall, 6),
                    "max_abs_act_diff": round((acts_c - ref_acts).abs().max().item(), 6),
                    "rows_per_s": round(len(x) / times[2])})
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


def scan_rows(lm: Any, sizes: list[int]) -> list[dict[str, Any]]:
    from s3_retriever import S3Index

    out = []
    for n in sizes:
        docs, source = text_documents(lm.tokenizer, n)
        index = S3Index.from_model(lm)
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t = time.perf_counter()
        index.add_texts(docs, show_progress=False)
        sync()
        dt = time.perf_counter() - t
        tokens = index.index.n_tokens
        # a plain full forward over the same chunks (no hooks), for the overhead ratio
        from s3_retriever.retrieval.scan import tokenize_document

        sc = index.scanner
        t = time.perf_counter()
        with torch.inference_mode():
            for text in docs:
                ids, _ = tokenize_document(lm.tokenizer, text)
                for s in range(0, len(ids), sc.chunk_tokens):
                    lm.model(input_ids=lm.input_tensor(ids[max(0, s - sc.context_tokens):
                                                           s + sc.chunk_tokens]),
                             use_cache=False)
        sync()
        fwd = time.perf_counter() - t
        out.append({"tokens": tokens, "text": source, "chunk_tokens": sc.chunk_tokens,
                    "scan_s": round(dt, 2), "scan_tokens_per_s": round(tokens / dt, 1),
                    "forward_tokens_per_s": round(tokens / fwd, 1),
                    "scan_overhead_ratio": round(dt / fwd, 3),
                    "peak_gpu_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                    "peak_gpu_reserved_mb": round(torch.cuda.max_memory_reserved() / 2**20, 1),
                    "gpu_allocated_before_mb": round(base / 2**20, 1),
                    "index_bytes_per_token": round(index.stats()["index_bytes_per_token"], 1)})
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
        del index
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[32768, 262144])
    ap.add_argument("--rows", type=int, default=65536)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu_check.json")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: CUDA is not available on this machine; nothing to check",
              file=sys.stderr)
        return 2
    from s3_retriever import S3Index

    index = S3Index.from_model("smollm2-135m", device="cuda")
    lm, sae = index.lm, index.saes["layers.17"]
    x = gpu_keys(index, a.rows)
    W, b, k = sae.W_enc.detach().float(), sae.b_enc.detach().float(), int(sae.cfg.k)
    kernels = kernel_rows(x[:2048], W, b, k, "shipped layer 17 (one scan chunk)")
    kernels += kernel_rows(x, W, b, k, "shipped layer 17")
    g = torch.Generator().manual_seed(0)
    for D in (16384, 65536):
        Wr = torch.randn(x.shape[1], D, generator=g)
        Wr /= Wr.norm(dim=0, keepdim=True)
        kernels += kernel_rows(x[:16384], Wr, torch.zeros(D), k, f"random {D}")
    out = {"machine": machine(), "device": torch.cuda.get_device_name(0),
           "cuda": torch.version.cuda, "model_dtype": str(lm.dtype).replace("torch.", ""),
           "kernels": kernels, "scan": scan_rows(lm, a.tokens)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
