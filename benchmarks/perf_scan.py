"""Scan overhead and indexing throughput: the S3 scan vs plain forward passes and peers.

    python benchmarks/perf_scan.py [--tokens 8192] [--rounds 3]

One process, one model, the same real text (HotpotQA paragraphs joined into ~2k-token
documents), cut into the scan's own chunks (512 tokens + 64 carried context + the sink
token). Every round runs each variant once, in a rotated order (interleaved A/B), and the
reported figure of each variant is its median over the rounds:

* ``forward_full``: a plain forward of the whole model (30 layers and the LM head, as
  ``model(input_ids)`` runs it), no hooks -- the issue's reference;
* ``forward_layers``: the 30 decoder layers without the LM head;
* ``forward_to_last_indexed``: a plain forward stopped after the last indexed layer (the
  decoder truncated to layers 0..18), no hooks -- the same layers the scan runs;
* ``scan``: the S3 scan proper: tokenisation with offsets, hooks, SAE top-k encode of the
  indexed kv heads, and the canonical code store (``Codes.from_scan``);
* ``add_texts``: ``S3Index.add_texts`` end to end (the scan plus sentence splitting, the
  BM25 units of hybrid search and the doc table).

Peers on the same text (goal 6): dense (all-MiniLM-L6-v2 embeddings of ~128-token
passages, as the dense baseline builds them, plus the faiss flat add) and BM25 indexing
(rank-bm25 over the same passages, and the engine's own BM25 over its sentence units).
Throughputs are in the LM's tokens of the same text, so they compare directly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from perf_common import emit, machine, real_documents  # noqa: E402


@contextlib.contextmanager
def truncated(model, n_layers: int):
    """Run ``model`` with only its first ``n_layers`` decoder layers (restored on exit)."""
    from s3_retriever.model.hooks import decoder_layers

    inner = model.model
    layers = decoder_layers(model)
    inner.layers = torch.nn.ModuleList(list(layers)[:n_layers])
    try:
        yield inner
    finally:
        inner.layers = layers


def chunks_of(index, docs: list[str]) -> list[np.ndarray]:
    """The scan's chunks (with carried context) of ``docs``, as token id arrays."""
    from s3_retriever.retrieval.scan import tokenize_document

    sc = index.scanner
    out = []
    for text in docs:
        ids, _ = tokenize_document(index.lm.tokenizer, text)
        for start in range(0, len(ids), sc.chunk_tokens):
            left = max(0, start - sc.context_tokens)
            out.append(ids[left:start + sc.chunk_tokens])
    return out


def run(n_tokens: int = 8192, rounds: int = 3) -> dict:
    from s3_retriever import S3Index
    from s3_retriever.index import Codes
    from s3_retriever.model.hooks import hookpoint_layer

    index = S3Index.from_model("smollm2-135m")
    lm = index.lm
    docs = real_documents(lm.tokenizer, n_tokens)
    n = sum(len(lm.tokenizer(d, add_special_tokens=False)["input_ids"]) for d in docs)
    chunks = chunks_of(index, docs)
    last = max(hookpoint_layer(hp) for hp in index.scanner.saes)
    inputs = [lm.input_tensor(c) for c in chunks]

    def forward_full() -> None:
        with torch.inference_mode():
            for x in inputs:
                lm.model(input_ids=x, use_cache=False)

    def forward_layers() -> None:
        with torch.inference_mode():
            for x in inputs:
                lm.model.model(input_ids=x, use_cache=False)

    def forward_to_last_indexed() -> None:
        with torch.inference_mode(), truncated(lm.model, last + 1) as inner:
            for x in inputs:
                inner(input_ids=x, use_cache=False)

    def scan() -> None:
        scanned = index.scanner.scan(docs, show_progress=False)
        for name, (hp, _) in index.scanner.streams.items():
            Codes.from_scan(np.concatenate([d.ids[name] for d in scanned]),
                            np.concatenate([d.acts[name] for d in scanned]),
                            index.saes[hp].cfg.num_latents)

    fresh = [S3Index.from_model(lm) for _ in range(rounds + 1)]  # built before the timing

    def add_texts() -> None:
        fresh.pop().add_texts(docs, show_progress=False)

    variants = {"forward_full": forward_full, "forward_layers": forward_layers,
                "forward_to_last_indexed": forward_to_last_indexed, "scan": scan,
                "add_texts": add_texts}
    forward_layers()  # warm-up (first calls allocate)
    scan()
    times: dict[str, list[float]] = {v: [] for v in variants}
    names = list(variants)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for v in order:
            t = time.perf_counter()
            variants[v]()
            times[v].append(time.perf_counter() - t)
        print(json.dumps({"round": r, **{v: round(times[v][-1], 3) for v in names}}),
              file=sys.stderr, flush=True)
    med = {v: statistics.median(ts) for v, ts in times.items()}
    ratios_full = [s / f for s, f in zip(times["scan"], times["forward_full"])]
    ratios_trunc = [s / f for s, f in zip(times["scan"], times["forward_to_last_indexed"])]
    out = {
        "tokens": n, "documents": len(docs), "chunks": len(chunks), "rounds": rounds,
        "last_indexed_layer": last, "n_layers": lm.spec.n_layers,
        "chunk_tokens": index.scanner.chunk_tokens, "context_tokens": index.scanner.context_tokens,
        "seconds": {v: [round(t, 3) for t in ts] for v, ts in times.items()},
        "tokens_per_s": {v: round(n / t, 1) for v, t in med.items()},
        "scan_overhead_ratio": round(statistics.median(ratios_full), 3),
        "scan_overhead_ratio_vs_forward_to_last_indexed": round(statistics.median(ratios_trunc), 3),
        "add_texts_ratio_vs_forward_full": round(med["add_texts"] / med["forward_full"], 3),
    }
    out["peers"] = peers(lm, docs, n)
    return out


def peers(lm, docs: list[str], n_tokens: int) -> dict:
    """Indexing throughput of the dense and BM25 baselines over the same text."""
    from s3_retriever.evaluation.baselines import BM25Retriever, DenseRetriever, make_passages
    from s3_retriever.evaluation.data import Document
    from s3_retriever.text.bm25 import BM25Index
    from s3_retriever.text.sentences import split_sentences

    def count(s: str) -> int:
        return len(lm.tokenizer(s, add_special_tokens=False)["input_ids"])

    documents = [Document(f"d{i}", t, {}) for i, t in enumerate(docs)]
    passages = make_passages(documents, count, passage_tokens=128)
    out: dict = {"passages": len(passages)}
    t = time.perf_counter()
    BM25Retriever(passages)
    out["bm25_passages_tokens_per_s"] = round(n_tokens / (time.perf_counter() - t), 1)
    t = time.perf_counter()
    units = [d[a:b] for d in docs for a, b in split_sentences(d)]
    BM25Index(units)
    out["bm25_engine_tokens_per_s"] = round(n_tokens / (time.perf_counter() - t), 1)
    t = time.perf_counter()
    dense = DenseRetriever(passages[:8], show_progress=False)  # loads the model
    out["dense_model_load_s"] = round(time.perf_counter() - t, 2)
    best = None
    for _ in range(2):
        t = time.perf_counter()
        vecs = dense.encode([p.text for p in passages])
        dense.index.reset()
        dense.index.add(vecs)
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    out["dense_minilm_tokens_per_s"] = round(n_tokens / best, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    out = run(a.tokens, a.rounds)
    out["machine"] = machine()
    emit(out, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
