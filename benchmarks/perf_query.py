"""Query latency at 100k and 1M indexed tokens, index size, and BM25 / dense side by side.

    python benchmarks/perf_query.py --source runs/perf/idx-512k [--questions 100]

The indexes are built from *real* scanned codes without scanning again: ``--source`` is the
index that ``perf_memory.py`` saved after scanning 512k+ tokens of real text (HotpotQA
paragraphs in ~2k-token documents). The 100k index holds its first documents up to 100k
tokens; the 1M index holds all of its documents twice (the second copy under other ids),
each copy's codes exactly as scanned -- so the 1M index has 2x duplicated text, which
changes nothing in the cost of a query. Both are built through ``S3Index.add_texts`` with a
scanner that replays the stored codes, and saved to ``runs/perf/idx-100k`` / ``idx-1m``.

Per index: p50/p95 of ``search(question, budget_tokens=1024)`` over real HotpotQA
questions, end to end and split into the question's forward pass, the S3 lookup
(scoring the indexed positions), BM25, span growth and packing (the rest: fusion and
sentence scores), for hybrid, s3 and bm25 modes; the same restricted to a ~32k-token
haystack (``doc_ids``); the co-activation scorer (pure inverted-index lookup); the first
(cold) query; bytes per token on disk and in RAM. Side by side over the same text: rank-bm25
and all-MiniLM-L6-v2 + faiss flat over ~128-token passages (retrieve + pack to 1,024 tokens).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from perf_common import RUNS, emit, machine, percentiles, real_questions, rss_mb  # noqa: E402

BUDGET = 1024


class ReplayScanner:
    """Stands in for the engine's scanner: returns stored codes instead of scanning."""

    def __init__(self, scanner: Any, scanned: list[Any]):
        self._scanner = scanner
        self._scanned = scanned

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scanner, name)

    def scan(self, texts, *, show_progress: bool = True, on_document=None) -> list[Any]:
        if len(texts) != len(self._scanned):
            raise ValueError("replay: texts and stored codes differ in number")
        return list(self._scanned)


def stored_documents(src: Any) -> list[tuple[Any, Any]]:
    """(DocRecord, ScannedDocument) of every live document of ``src``, in table order."""
    from s3_retriever.retrieval.scan import ScannedDocument

    out = []
    for rec in src.index.docs:
        if rec.deleted:
            continue
        seg = src.index.segments[rec.segment]
        s, e = rec.token_start, rec.token_end
        ids, acts, bias = {}, {}, {}
        for name in src.scanner.names:
            ids[name] = seg.codes[name].ids[s:e]
            acts[name] = seg.codes[name].acts[s:e]
            if name in getattr(seg, "bias", {}):
                bias[name] = np.asarray(seg.bias[name][s:e])
        doc = ScannedDocument(np.asarray(seg.token_char[s:e]), ids, acts)
        if bias:
            doc.bias = bias
        out.append((rec, doc))
    return out


def build(lm: Any, stored: list[tuple[Any, Any]], n_tokens: int, label: str) -> Any:
    """An S3Index of at least ``n_tokens`` tokens from ``stored`` (cycled, new ids)."""
    from s3_retriever import S3Index

    picked, total, copy = [], 0, 0
    while total < n_tokens:
        for rec, doc in stored:
            picked.append((f"{rec.doc_id}#{copy}", rec, doc))
            total += doc.n_tokens
            if total >= n_tokens:
                break
        copy += 1
    index = S3Index.from_model(lm)
    real = index.scanner
    index.scanner = ReplayScanner(real, [d for _, _, d in picked])
    t = time.perf_counter()
    index.add_texts([r.text for _, r, _ in picked], ids=[i for i, _, _ in picked],
                    show_progress=False)
    index.scanner = real
    print(json.dumps({"built": label, "tokens": total, "docs": len(picked), "copies": copy,
                      "seconds": round(time.perf_counter() - t, 1)}), file=sys.stderr, flush=True)
    return index


class Timers:
    """Cumulative wall time of wrapped callables, by label."""

    def __init__(self) -> None:
        self.t: dict[str, float] = defaultdict(float)

    def wrap(self, obj: Any, attr: str, label: str) -> None:
        fn = getattr(obj, attr, None)
        if fn is None:
            return

        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.t[label] += time.perf_counter() - t
        setattr(obj, attr, timed)

    def take(self) -> dict[str, float]:
        out = dict(self.t)
        self.t.clear()
        return out


def instrument(index: Any) -> Timers:
    """Wrap the stages of ``index.search`` (instance attributes; the package is untouched)."""
    import s3_retriever.engine as engine
    import s3_retriever.retrieval.packing as packing

    timers = Timers()
    timers.wrap(engine, "question_queries", "forward")
    timers.wrap(index, "_s3_units", "s3")
    timers.wrap(engine, "best_spans", "grow")  # span growth and packing
    timers.wrap(index.units.bm25, "scores", "bm25")
    timers.wrap(packing, "pack_spans", "pack")
    return timers


def time_queries(index: Any, timers: Timers, questions: list[str], mode: str,
                 doc_ids: list[list[str]] | None = None) -> dict[str, Any]:
    """Latency percentiles (ms) of ``search`` per stage over ``questions``."""
    stages: dict[str, list[float]] = defaultdict(list)
    for i, q in enumerate(questions):
        timers.take()
        t = time.perf_counter()
        index.search(q, k=None, budget_tokens=BUDGET, mode=mode,
                     doc_ids=None if doc_ids is None else doc_ids[i])
        total = (time.perf_counter() - t) * 1000
        parts = {k: v * 1000 for k, v in timers.take().items()}
        fwd = parts.get("forward", 0.0)
        stages["end_to_end"].append(total)
        stages["forward"].append(fwd)
        stages["lookup_and_spans"].append(total - fwd)
        stages["s3_lookup"].append(parts.get("s3", 0.0) - fwd)
        stages["bm25"].append(parts.get("bm25", 0.0))
        stages["span_growth"].append(parts.get("grow", 0.0) - parts.get("pack", 0.0))
        stages["packing"].append(parts.get("pack", 0.0))
    return {k: percentiles(v) for k, v in stages.items()}


def ram_bytes(index: Any) -> dict[str, int]:
    """Bytes the loaded index keeps in memory, by part."""
    # the code store is what the attention scorer reads; postings exist only once built
    # (the co-activation scorer and feature statistics build them from the codes)
    codes = sum(c.nbytes for s in index.index.segments for c in s.codes.values())
    postings = sum(c._postings.nbytes for s in index.index.segments for c in s.codes.values()
                   if c._postings is not None)
    tables = sum(int(s.token_doc.nbytes + s.token_char.nbytes) for s in index.index.segments)
    bias = sum(int(b.nbytes) for s in index.index.segments
               for b in getattr(s, "bias", {}).values())
    bm = index.units.bm25
    bm25 = sum(int(getattr(bm, a).nbytes) for a in ("_ids", "_offsets", "_idf", "_norm",
                                                      "_indptr", "_post_doc", "_post_tf")
               if hasattr(bm, a))
    units = sum(int(a.nbytes) for a in (index.units.doc, index.units.bounds,
                                         index.units.tokens))
    units += sum(int(a.nbytes) for a in index.units._token_unit)
    text = sum(len(d.text.encode("utf-8")) for d in index.index.docs)
    return {"codes": codes, "postings": postings, "token_tables": tables,
            "query_mean_columns": bias, "bm25": bm25, "sentence_units": units,
            "document_text": text}


def disk_bytes(folder: Path) -> dict[str, int]:
    """Bytes on disk of a saved index folder, by part."""
    def size(p: Path) -> int:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.exists() else 0

    gen = folder / json.loads((folder / "CURRENT").read_text())["folder"]
    out = {"codes": size(gen / "codes"), "token_tables": size(gen / "tokens"),
           "docs_jsonl": size(gen / "docs.jsonl"), "saes": size(gen / "saes")}
    out["total"] = size(folder)
    return out


def baselines(lm: Any, index: Any, questions: list[str], vectors: dict[tuple, np.ndarray],
              dense: Any) -> dict[str, Any]:
    """rank-bm25 and MiniLM + faiss flat over the same documents: build, size, latency."""
    import faiss

    from s3_retriever.evaluation.baselines import BM25Retriever, make_passages, pack_hits
    from s3_retriever.evaluation.data import Document

    def count(s: str) -> int:
        return len(lm.tokenizer(s, add_special_tokens=False)["input_ids"])

    docs = [Document(d.doc_id, d.text, {}) for d in index.index.docs if not d.deleted]
    n_tokens = index.index.n_live_tokens
    passages = make_passages(docs, count, passage_tokens=128)
    out: dict[str, Any] = {"passages": len(passages)}
    tracemalloc.start()
    t = time.perf_counter()
    bm25 = BM25Retriever(passages)
    out["bm25_build_s"] = round(time.perf_counter() - t, 2)
    out["bm25_bytes_per_token"] = round(tracemalloc.get_traced_memory()[0] / n_tokens, 1)
    tracemalloc.stop()
    ms = []
    for q in questions:
        t = time.perf_counter()
        pack_hits(bm25.retrieve(q), passages, BUDGET)
        ms.append((time.perf_counter() - t) * 1000)
    out["bm25_ms"] = percentiles(ms)

    # the dense vectors of a passage depend on its text only: encode each text once
    todo = [p for p in passages if (p.text,) not in vectors]
    if todo:
        for p, v in zip(todo, dense.encode([p.text for p in todo])):
            vectors[(p.text,)] = v
    mat = np.stack([vectors[(p.text,)] for p in passages]).astype(np.float32)
    flat = faiss.IndexFlatIP(mat.shape[1])
    flat.add(mat)
    out["dense_bytes_per_token"] = round(mat.nbytes / n_tokens, 1)
    ms, enc = [], []
    for q in questions:
        t = time.perf_counter()
        qv = dense.encode([q])
        t1 = time.perf_counter()
        scores, labels = flat.search(qv, flat.ntotal)
        from s3_retriever.evaluation.baselines import Hit

        hits = [Hit(passages[j].doc_id, passages[j].start_char, passages[j].end_char,
                    float(s)) for s, j in zip(scores[0], labels[0]) if j >= 0]
        pack_hits(hits, passages, BUDGET)
        ms.append((time.perf_counter() - t) * 1000)
        enc.append((t1 - t) * 1000)
    out["dense_ms"] = percentiles(ms)
    out["dense_question_encode_ms"] = percentiles(enc)
    return out


def measure(index: Any, label: str, questions: list[str], n_filtered: int,
            n_coact: int) -> dict[str, Any]:
    """Latency and size figures of one index."""
    n_tokens = index.index.n_live_tokens
    out: dict[str, Any] = {"tokens": n_tokens, "documents": len(index),
                           "rss_mb_before_first_query": round(rss_mb(), 1)}
    t = time.perf_counter()
    index.search(questions[0], k=None, budget_tokens=BUDGET)
    out["cold_first_query_ms"] = round((time.perf_counter() - t) * 1000, 1)
    out["rss_mb_after_first_query"] = round(rss_mb(), 1)
    timers = instrument(index)
    for mode in ("hybrid", "s3", "bm25"):
        out[mode] = time_queries(index, timers, questions, mode)
        print(json.dumps({label: mode, "p50": out[mode]["lookup_and_spans"]["p50"],
                          "p95": out[mode]["lookup_and_spans"]["p95"]}), file=sys.stderr,
              flush=True)
    # a ~32k-token haystack inside the big index (the evaluation's setting)
    rng = random.Random(0)
    docs = [d.doc_id for d in index.index.docs if not d.deleted]
    per_doc = max(1, n_tokens // max(1, len(docs)))
    width = max(1, 32768 // per_doc)
    windows = []
    for _ in questions[:n_filtered]:
        a = rng.randrange(0, max(1, len(docs) - width))
        windows.append(docs[a:a + width])
    out["hybrid_haystack_32k"] = time_queries(index, timers, questions[:n_filtered], "hybrid",
                                              windows)
    out["haystack_docs"] = width
    # memory as the default (attention) scorer leaves it: codes only, no postings
    ram = ram_bytes(index)
    out["ram_bytes"] = ram
    # the co-activation scorer: candidates straight from the inverted index's postings
    # (it reads the CSR arrays, which come back into memory)
    scorer = index.settings.scorer
    index.settings.scorer = "coactivation"
    try:
        out["s3_coactivation"] = time_queries(index, timers, questions[:n_coact], "s3")
    finally:
        index.settings.scorer = scorer
    out["ram_bytes_after_coactivation"] = ram_bytes(index)
    index_ram = ram["codes"] + ram["token_tables"] + ram["query_mean_columns"]
    after = out["ram_bytes_after_coactivation"]
    out["ram_bytes_per_token"] = {
        "index_arrays": round(index_ram / n_tokens, 1),
        "index_arrays_plus_postings": round((index_ram + after["postings"]) / n_tokens, 1),
        "all_including_bm25_and_text": round(sum(ram.values()) / n_tokens, 1)}
    out["rss_mb_after_queries"] = round(rss_mb(), 1)
    return out


def run(source: Path, sizes: list[int], n_questions: int, n_questions_1m: int,
        save: bool = True) -> dict[str, Any]:
    from s3_retriever import S3Index
    from s3_retriever.evaluation.baselines import DenseRetriever, Passage
    from s3_retriever.model.loading import load_model

    lm = load_model("smollm2-135m")
    src = S3Index.load(source, model=lm)
    stored = stored_documents(src)
    del src
    questions = real_questions(max(n_questions, n_questions_1m))
    dense = DenseRetriever([Passage("warm", 0, 4, "warm", 1)], show_progress=False)
    vectors: dict[tuple, np.ndarray] = {}
    kv = lm.kv_bytes_per_token(2)
    results: dict[str, Any] = {"kv_bytes_per_token": kv, "budget_tokens": BUDGET, "sizes": {}}
    for n in sizes:
        label = "1m" if n >= 1_000_000 else f"{n // 1000}k"
        index = build(lm, stored, n, label)
        nq = n_questions if n < 1_000_000 else n_questions_1m
        res = measure(index, label, questions[:nq], n_filtered=min(nq, 50),
                      n_coact=min(nq, 20))
        if save:
            folder = RUNS / f"idx-{label}"
            index.save(folder)
            res["saved_to"] = str(folder.relative_to(RUNS.parent.parent))
            disk = disk_bytes(folder)
            res["disk_bytes"] = disk
            res["disk_bytes_per_token"] = {
                "index": round((disk["codes"] + disk["token_tables"]) / res["tokens"], 1),
                "total_folder": round(disk["total"] / res["tokens"], 1)}
        res["baselines"] = baselines(lm, index, questions[:nq], vectors, dense)
        results["sizes"][label] = res
        del index
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=RUNS / "idx-512k")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--questions", type=int, default=100)
    ap.add_argument("--questions-1m", type=int, default=50)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    out = run(a.source, a.sizes, a.questions, a.questions_1m, save=not a.no_save)
    out["machine"] = machine()
    emit(out, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
