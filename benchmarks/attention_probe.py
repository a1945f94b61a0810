"""Where does S3 lose the attention signal? Sentence-level evidence recall of the shipped
retrieval heads with exact keys, keys reconstructed from SAE codes (with and without the
exact query-mean term), product-quantised and int8 keys, BM25, and fusions of them.

Every haystack document is run through the model on its own (as the scan does) and its
exact pre-RoPE keys kept; each variant then compresses those keys and scores the haystack
with the softmax attention mass of the question's queries, summed over the heads, smoothed,
max per sentence; sentences are taken best first within the budget (as in calibration).
Fusions are fitted on the calibration split and reported on the evaluation split.

    python benchmarks/attention_probe.py --calib 0-99 --eval 100-199 --context 8000 \\
        --out benchmarks/results/attention_probe.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch
from tqdm.auto import tqdm

from s3_retriever.calibration import budget_recall, scan_exact
from s3_retriever.cli import _int_ranges
from s3_retriever.corpus import generic_corpus
from s3_retriever.evaluation.data import hotpotqa_benchmark
from s3_retriever.model.hooks import QKHooks
from s3_retriever.retrieval.fusion import normalize
from s3_retriever.sae.io import shipped_sae_dir
from s3_retriever.sae.kernels import topk_encode
from s3_retriever.sae.train import collect_qk
from s3_retriever.text.bm25 import BM25Index

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learned_fusion import fit_logistic, unit_features  # noqa: E402

from s3_retriever.model.hooks import hookpoint_layer
from s3_retriever.model.loading import load_model
from s3_retriever.retrieval.scan import tokenize_document
from s3_retriever.retrieval.units import sentence_max_scores
from s3_retriever.sae.io import load_saes


def int8_keys(k: torch.Tensor) -> torch.Tensor:
    """Per-vector absmax int8 round trip (64 bytes + a scale per vector)."""
    s = k.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / 127.0
    return torch.round(k / s).clamp(-127, 127) * s


class Variant:
    """Compress keys of kv head ``g`` of ``layer``; score with queries of heads."""

    def __init__(self, name, encode_keys, qmean_exact=False):
        self.name, self.encode_keys, self.qmean_exact = name, encode_keys, qmean_exact


def build_variants(saes, generic, heads, spec, pq_m, extra=None, ks=(16, 32)):
    variants = [Variant("exact", lambda layer, g, k: k)]
    for name, other in (extra or {}).items():
        def other_fn(layer, g, k, other=other):
            sae = other[f"layers.{layer}"]
            with torch.no_grad():
                acts, ids = sae.encode(k, kind="key")
                return sae.decode(acts, ids, kind="key").float()
        variants.append(Variant(name, other_fn))
        variants.append(Variant(f"{name}+qmean", other_fn, qmean_exact=True))
    for kk in ks:
        def sae_fn(layer, g, k, kk=kk):
            sae = saes[f"layers.{layer}"]
            acts, ids = sae.encode(k, kind="key") if kk == sae.cfg.k else _enc_k(sae, k, kk)
            with torch.no_grad():
                return sae.decode(acts, ids, kind="key").float()
        variants.append(Variant(f"sae_k{kk}", sae_fn))
        variants.append(Variant(f"sae_k{kk}+qmean", sae_fn, qmean_exact=True))
    pqs = {}
    for layer, g in {(hookpoint_layer(hp), spec.kv_group(h)) for hp, h in heads}:
        x = generic.keys[layer].reshape(-1, spec.n_kv_heads, spec.head_dim)[:, g]
        x = np.ascontiguousarray(x.numpy().astype(np.float32))
        for m in pq_m:
            pq = faiss.ProductQuantizer(spec.head_dim, m, 8)
            pq.train(x)
            pqs[(layer, g, m)] = pq
    for m in pq_m:
        def pq_fn(layer, g, k, m=m):
            pq = pqs[(layer, g, m)]
            x = np.ascontiguousarray(k.numpy().astype(np.float32))
            return torch.from_numpy(pq.decode(pq.compute_codes(x)))
        variants.append(Variant(f"pq{m}", pq_fn))
        variants.append(Variant(f"pq{m}+qmean", pq_fn, qmean_exact=True))
    variants.append(Variant("int8", lambda layer, g, k: int8_keys(k)))
    return variants


def _enc_k(sae, k, kk):
    """``sae.encode(k, kind="key")`` keeping ``kk`` latents instead of the trained k."""
    with torch.no_grad():
        return topk_encode(k.float() / sae.cfg.key_scale - sae.b_dec, sae.W_enc, sae.b_enc, kk)


def probe(lm, bench, saes, heads, variants, qmean, smooth_window=3):
    """Per question: per variant [H, U] per-head sentence scores and the summed-mass [U]."""
    spec = lm.spec
    layers = sorted({hookpoint_layer(hp) for hp, _ in heads})
    needed = sorted({d for ex in bench.examples for d in ex.doc_ids})
    docs = scan_exact(lm, bench, layers, needed, True, lm.sink_ids)
    groups = sorted({(hookpoint_layer(hp), spec.kv_group(h)) for hp, h in heads})
    comp: dict[str, dict[str, dict]] = {}
    for did in tqdm(needed, desc="compress keys"):
        comp[did] = {}
        for v in variants:
            comp[did][v.name] = {(layer, g): v.encode_keys(layer, g, docs[did].keys[layer][:, g]
                                                           .float())
                                 for layer, g in groups}
    out = []
    with QKHooks(lm.model, layers, keys=False, queries=True) as hooks:
        for ex in tqdm(bench.examples, desc="questions"):
            ids, _ = tokenize_document(lm.tokenizer, ex.question)
            cap = hooks.run(input_ids=lm.input_tensor(ids))
            n_sink = len(lm.sink_ids)
            gold, lengths, texts = [], [], []
            for did in ex.doc_ids:
                du = docs[did]
                golds = [(e.start_char, e.end_char) for e in ex.evidence if e.doc_id == did]
                text = bench.documents[did].text
                for s, e in du.sentences:
                    gold.append(any(s <= gs and ge <= e for gs, ge in golds))
                    texts.append(text[s:e])
                lengths.append(du.lengths)
            gold = np.asarray(gold, bool)
            if not gold.any():
                continue
            rec = {"qid": ex.qid, "gold": gold, "lengths": np.concatenate(lengths)}
            bm = BM25Index()
            bm.add(texts)
            rec["bm25"] = np.asarray(bm.scores(ex.question), np.float64)
            for v in variants:
                per_head = []
                for hp, h in heads:
                    layer, g = hookpoint_layer(hp), spec.kv_group(h)
                    q = cap.queries[layer][0, n_sink:, h].float()
                    k_hat = torch.cat([comp[d][v.name][(layer, g)] for d in ex.doc_ids])
                    if v.qmean_exact:
                        k_ex = torch.cat([docs[d].keys[layer][:, g].float() for d in ex.doc_ids])
                        m = qmean[(layer, h)]
                        logits = (q - m) @ k_hat.T + (k_ex @ m)[None, :]
                    else:
                        logits = q @ k_hat.T
                    mass = torch.softmax(logits / math.sqrt(spec.head_dim), dim=-1).sum(0)
                    per_head.append(mass.numpy().astype(np.float64))
                rec[v.name] = per_head
            out.append((rec, [docs[d] for d in ex.doc_ids]))
    # token masses -> sentence scores (per head and summed)
    results = []
    for rec, dus in out:
        r = {k: rec[k] for k in ("qid", "gold", "lengths", "bm25")}
        for v in variants:
            summed = sum(rec[v.name])
            r[v.name] = _sent(summed, dus, smooth_window)
            r[v.name + "/heads"] = np.stack([_sent(m, dus, smooth_window) for m in rec[v.name]])
        results.append(r)
    return results


def _sent(mass, dus, w):
    parts, pos = [], 0
    for du in dus:
        n = len(du.token_sentence)
        parts.append(sentence_max_scores(mass[pos:pos + n], du.token_sentence,
                                         len(du.sentences), w))
        pos += n
    return np.concatenate(parts)


def recall(results, key_fn, budgets):
    vals = {b: [] for b in budgets}
    for r in results:
        s = key_fn(r)
        for b in budgets:
            vals[b].append(budget_recall(s, r["lengths"], r["gold"], b))
    return {b: np.asarray(v) for b, v in vals.items()}


def features(r, variant):
    """The learned fusion's per-sentence features (``benchmarks/learned_fusion.py``)."""
    return unit_features(r[variant + "/heads"], r["bm25"], r["lengths"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", default="0-99")
    ap.add_argument("--eval", default="100-199")
    ap.add_argument("--context", type=int, default=8000)
    ap.add_argument("--budgets", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--generic-tokens", type=int, default=60000)
    ap.add_argument("--pq-m", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--ks", type=int, nargs="+", default=[16, 32],
                    help="latents kept per key when encoding with the main SAEs")
    ap.add_argument("--extra-saes", action="append", default=[], metavar="NAME=DIR",
                    help="also score with another SAE folder (e.g. another dictionary size)")
    ap.add_argument("--model", default="smollm2-135m", help="model name or .gguf path")
    ap.add_argument("--saes", default=None, help="SAE folder with heads.json (default: shipped)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    t0 = time.time()
    lm = load_model(a.model)
    folder = Path(a.saes) if a.saes else shipped_sae_dir(a.model)
    saes = load_saes(folder)
    heads = [(hp, int(h)) for hp, h, *_ in
             json.loads((folder / "heads.json").read_text())["heads"]]
    spec = lm.spec
    layers = sorted({hookpoint_layer(hp) for hp, _ in heads})
    generic = collect_qk(lm, generic_corpus(), layers, max_tokens=a.generic_tokens)
    qmean = {}
    for hp, h in heads:
        layer = hookpoint_layer(hp)
        qmean[(layer, h)] = generic.queries[layer].reshape(-1, spec.n_heads, spec.head_dim)[:, h] \
            .mean(0)
    extra = {n: load_saes(d) for n, d in (e.split("=", 1) for e in a.extra_saes)}
    variants = build_variants(saes, generic, heads, spec, a.pq_m, extra, a.ks)

    def count(text):
        return len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])

    res = {}
    for split, qs in (("calib", a.calib), ("eval", a.eval)):
        bench = hotpotqa_benchmark(_int_ranges(qs), a.context, count)
        res[split] = probe(lm, bench, saes, heads, variants, qmean)
    B = a.budgets
    rows = {}
    ev = res["eval"]
    bm = recall(ev, lambda r: r["bm25"], B)
    rows["bm25"] = bm
    for v in variants:
        rows[v.name] = recall(ev, lambda r, n=v.name: r[n], B)
    # linear mixes with BM25 (min-max), weight chosen on calibration at 512
    ones = lambda r: np.ones(len(r["bm25"]), bool)  # noqa: E731
    fits = {}
    names = [v.name for v in variants]
    for v in [n for n in ("exact", "sae_k16", "sae_k16+qmean", "sae_k32+qmean",
                          f"pq{max(a.pq_m)}+qmean") if n in names]:
        def mix(r, w, v=v):
            return w * normalize(r[v], ones(r)) + (1 - w) * normalize(r["bm25"], ones(r))
        best = max(np.arange(0.1, 1.0, 0.1),
                   key=lambda w: np.nanmean(np.r_[[np.nanmean(x) for x in
                                                  recall(res["calib"], lambda r, w=w: mix(r, w), B)
                                                  .values()]]))
        rows[f"linear({v})+bm25 w={best:.1f}"] = recall(ev, lambda r, b=best: mix(r, b), B)
        X = np.concatenate([features(r, v) for r in res["calib"]])
        y = np.concatenate([r["gold"] for r in res["calib"]]).astype(float)
        w, bias = fit_logistic(X, y)
        fits[v] = [*w.tolist(), bias]

        def lr(r, w=w, v=v):
            return features(r, v) @ w
        rows[f"logreg({v})+bm25"] = recall(ev, lr, B)
    print(f"{len(ev)} eval questions, {time.time() - t0:.0f} s")
    print("| variant | " + " | ".join(f"R@{b}" for b in B) + " | vs bm25 @512 |")
    print("|---|" + "---|" * (len(B) + 1))
    table = {}
    for name, rr in rows.items():
        d = rr[512] - bm[512] if 512 in B else None
        ok = ~np.isnan(d)
        diff = f"{d[ok].mean():+.3f} ± {d[ok].std(ddof=1) / math.sqrt(ok.sum()):.3f}"
        print(f"| {name} | " + " | ".join(f"{np.nanmean(rr[b]):.3f}" for b in B) + f" | {diff} |")
        table[name] = {str(b): float(np.nanmean(rr[b])) for b in B}
        table[name]["paired_vs_bm25_512"] = diff
    if a.out:
        Path(a.out).write_text(json.dumps({"command": "python " + " ".join(sys.argv),
                                           "table": table, "logreg_weights": fits}, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
