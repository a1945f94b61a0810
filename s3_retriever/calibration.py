"""Find the retrieval heads: score every (layer, query head) by the evidence recall its exact
attention achieves on a calibration split of questions with gold evidence.

Each document is run on its own (as the scan does) and a head scores its tokens by the
question's exact softmax attention mass; sentences take their max smoothed score and fill
the budget best first; recall is the share of gold evidence inside them.

Example:
    >>> import numpy as np
    >>> budget_recall(np.array([0.9, 0.1, 0.5]), np.array([10, 10, 10]),
    ...               np.array([False, False, True]), budget=20)
    1.0
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from s3_retriever.corpus import generic_corpus
from s3_retriever.evaluation.data import Benchmark
from s3_retriever.model.hooks import QKHooks, hookpoint_layer
from s3_retriever.model.loading import LoadedModel
from s3_retriever.retrieval.packing import greedy_fill
from s3_retriever.retrieval.scan import tokenize_document
from s3_retriever.retrieval.units import (
    sentence_max_scores,
    sentence_token_counts,
    token_sentence_map,
)
from s3_retriever.sae.train import collect_qk
from s3_retriever.storage import write_json
from s3_retriever.text.sentences import split_sentences


def budget_recall(scores: np.ndarray, lengths: np.ndarray, gold: np.ndarray,
                  budget: int) -> float:
    """Fraction of gold units inside the best-first units that fit ``budget`` tokens."""
    if not gold.any():
        return math.nan
    order = np.argsort(-scores, kind="stable")
    kept = order[greedy_fill(np.asarray(lengths)[order], budget)]
    return int(np.asarray(gold)[kept].sum()) / int(gold.sum())


@dataclass
class DocUnits:
    """A document's exact keys per layer and its sentence units."""

    keys: dict[int, torch.Tensor]  # layer -> [n, n_kv, d]
    token_sentence: np.ndarray
    sentences: list[tuple[int, int]]
    lengths: np.ndarray


def scan_exact(lm: LoadedModel, bench: Benchmark, layers: Sequence[int], doc_ids: Sequence[str],
               show_progress: bool = True, prefix: Sequence[int] = ()) -> dict[str, DocUnits]:
    """Exact keys (no SAE) of every document, each run on its own."""
    out: dict[str, DocUnits] = {}
    with QKHooks(lm.model, layers, keys=True) as hooks:
        for did in tqdm(doc_ids, desc="exact keys", disable=not show_progress):
            text = bench.documents[did].text
            ids, offs = tokenize_document(lm.tokenizer, text)
            x = np.concatenate([np.asarray(prefix, np.int64), ids[: lm.max_length]])
            cap = hooks.run(input_ids=torch.from_numpy(x).unsqueeze(0).to(lm.device))
            sents = split_sentences(text)
            ts = token_sentence_map(offs[: lm.max_length], sents)
            lengths = np.maximum(1, sentence_token_counts(ts, len(sents)))
            out[did] = DocUnits({i: cap.keys[i][0, len(prefix):].to(torch.bfloat16).cpu()
                                 for i in layers},
                                ts, sents, lengths)
    return out


@dataclass
class Calibration:
    """Per-head results on a calibration split.

    Attributes:
        layers: the layers scored, in row order of ``recall``.
        recall: [n_layers, n_heads] mean recall at ``budget``.
        scores: per question, [n_layers, n_heads, n_units] sentence scores.
        gold / lengths: per question, which units are gold and their token counts.
    """

    layers: list[int]
    budget: int
    recall: np.ndarray
    scores: dict[str, np.ndarray]
    gold: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]

    def mix_recall(self, heads: Sequence[tuple[int, int]],
                   weights: Sequence[float] | None = None) -> float:
        """Mean recall when the given (layer, head) sentence scores are summed."""
        w = np.ones(len(heads)) if weights is None else np.asarray(weights, float)
        idx = [(self.layers.index(layer), h) for layer, h in heads]
        vals = []
        for q, sc in self.scores.items():
            mixed = sum(wi * sc[li, h] for wi, (li, h) in zip(w, idx))
            vals.append(budget_recall(mixed, self.lengths[q], self.gold[q], self.budget))
        return float(np.nanmean(vals)) if vals else math.nan

    def choose_heads(self, max_heads: int = 8) -> tuple[list[tuple[int, int]], list[float]]:
        """The best ``n <= max_heads`` heads by individual recall, ``n`` chosen by the mixed
        recall on this split; returns the heads and the mixed recall for each ``n``."""
        order = np.dstack(np.unravel_index(np.argsort(-self.recall, axis=None),
                                           self.recall.shape))[0]
        ranked = [(self.layers[li], int(h)) for li, h in order[:max_heads]]
        curve = [self.mix_recall(ranked[:n]) for n in range(1, len(ranked) + 1)]
        best = int(np.nanargmax(curve)) + 1
        return ranked[:best], curve


def head_recalls(lm: LoadedModel, bench: Benchmark, layers: Sequence[int], *,
                 budget: int = 512, smooth_window: int = 3, show_progress: bool = True,
                 prefix: Sequence[int] | None = None) -> Calibration:
    """Recall@budget of every (layer, head) of ``layers`` with exact attention."""
    layers = list(layers)
    spec = lm.spec
    needed = sorted({d for ex in bench.examples for d in ex.doc_ids})
    prefix = lm.sink_ids if prefix is None else tuple(prefix)
    docs = scan_exact(lm, bench, layers, needed, show_progress, prefix)
    rec = np.zeros((len(layers), spec.n_heads))
    out = Calibration(layers, budget, rec, {}, {}, {})
    with QKHooks(lm.model, layers, keys=False, queries=True) as hooks:
        for ex in tqdm(bench.examples, desc="head recall", disable=not show_progress):
            ids, _ = tokenize_document(lm.tokenizer, ex.question)
            x = np.concatenate([np.asarray(prefix, np.int64), ids])
            cap = hooks.run(input_ids=torch.from_numpy(x).unsqueeze(0).to(lm.device))
            units_gold, units_len = [], []
            for did in ex.doc_ids:
                du = docs[did]
                golds = [(e.start_char, e.end_char) for e in ex.evidence if e.doc_id == did]
                for s, e in du.sentences:
                    units_gold.append(any(s <= gs and ge <= e for gs, ge in golds))
                units_len.append(du.lengths)
            gold = np.asarray(units_gold, bool)
            lengths = np.concatenate(units_len)
            if not gold.any():
                continue
            scores = np.zeros((len(layers), spec.n_heads, len(gold)), np.float32)
            for li, layer in enumerate(layers):
                q = cap.queries[layer][0, len(prefix):].float()  # [T, H, d]
                k = torch.cat([docs[d].keys[layer] for d in ex.doc_ids]).float()  # [N, kv, d]
                kk = k[:, [spec.kv_group(h) for h in range(spec.n_heads)]]  # [N, H, d]
                logits = torch.einsum("thd,nhd->htn", q, kk) / math.sqrt(spec.head_dim)
                mass = torch.softmax(logits, dim=-1).sum(dim=1).numpy()  # [H, N]
                for h in range(spec.n_heads):
                    pos, parts = 0, []
                    for did in ex.doc_ids:
                        du = docs[did]
                        n = len(du.token_sentence)
                        parts.append(sentence_max_scores(mass[h, pos:pos + n],
                                                         du.token_sentence, len(du.sentences),
                                                         smooth_window))
                        pos += n
                    scores[li, h] = np.concatenate(parts)
                    rec[li, h] += budget_recall(scores[li, h], lengths, gold, budget)
            out.scores[ex.qid], out.gold[ex.qid], out.lengths[ex.qid] = scores, gold, lengths
    rec /= max(len(out.scores), 1)
    return out


def mean_queries(lm: LoadedModel, heads: Sequence[tuple[str, int]],
                 texts: Sequence[str] | None = None, *, max_tokens: int = 50_000,
                 show_progress: bool = True) -> dict[tuple[str, int], list[float]]:
    """The mean pre-RoPE query of each ``(hookpoint, head)`` over generic text (run in
    chunks after the sink prefix, as the scan runs documents): the vector of the query-mean
    term (see :mod:`s3_retriever.retrieval.scoring`). ``texts`` default to the SAE training corpus."""
    heads = [(hp, int(h)) for hp, h in heads]
    layers = sorted({hookpoint_layer(hp) for hp, _ in heads})
    qk = collect_qk(lm, list(texts) if texts is not None else generic_corpus(), layers,
                    max_tokens=max_tokens, show_progress=show_progress)
    spec = lm.spec
    return {(hp, h): [round(float(x), 6) for x in qk.queries[hookpoint_layer(hp)]
                      .reshape(-1, spec.n_heads, spec.head_dim)[:, h].mean(0)]
            for hp, h in heads}


def add_query_means(heads_file: str | os.PathLike, lm: LoadedModel,
                    texts: Sequence[str] | None = None, *, max_tokens: int = 50_000,
                    show_progress: bool = True) -> list[list]:
    """Write each head's mean query into a head file (``[hookpoint, head, weight, mean]``
    entries; other keys of the file are kept). Returns the new entries."""
    path = Path(heads_file)
    data = json.loads(path.read_text(encoding="utf-8"))
    entries = [list(e[:3]) + [1.0] * (3 - len(e[:3])) for e in data["heads"]]
    means = mean_queries(lm, [(e[0], e[1]) for e in entries], texts, max_tokens=max_tokens,
                         show_progress=show_progress)
    data["heads"] = [e + [means[(e[0], int(e[1]))]] for e in entries]
    data["query_means"] = {"tokens": max_tokens, "texts": "generic corpus" if texts is None
                           else f"{len(texts)} user texts"}
    write_json(path, data)
    return data["heads"]


# --------------------------------------------------------------------------- rerank heads


@dataclass
class RerankCalibration:
    """Per question, every candidate head's in-context attention on the pool's sentences
    (asked and content-free), and what is needed to pack and score them."""

    heads: list[tuple[int, int]]
    budgets: list[int]
    items: list[tuple[Any, list, list, Any, np.ndarray, np.ndarray]]
    # (example, pool, pieces, prompt, asked [H, U], null [H, U])

    def recall(self, heads: Sequence[tuple[int, int]], *, calibrate: bool,
               budget: int) -> np.ndarray:
        """Per question, the evidence recall of the summed heads' ranking at ``budget``."""
        from s3_retriever.evaluation.metrics import evidence_recall
        from s3_retriever.retrieval.rerank import pick_spans

        idx = [self.heads.index(tuple(h)) for h in heads]
        out = []
        for ex, pool, pieces, prompt, asked, null in self.items:
            s = (asked[idx] - null[idx] if calibrate else asked[idx]).sum(axis=0)
            spans = pick_spans(pool, pieces, prompt, s, k=None, budget_tokens=budget)
            out.append(evidence_recall(spans, ex.evidence))
        return np.asarray(out, dtype=float)

    def head_table(self, *, calibrate: bool) -> np.ndarray:
        """``[n_heads, n_budgets]`` mean recall of each head alone."""
        return np.array([[np.nanmean(self.recall([h], calibrate=calibrate, budget=b))
                          for b in self.budgets] for h in self.heads])

    def choose(self, max_heads: int = 16, tolerance: float = 0.005) -> dict[str, Any]:
        """Heads ranked by their mean recall over the budgets alone; the number of heads and
        the calibration on/off chosen by the summed heads' mean recall on this split: the
        fewest heads within ``tolerance`` of the best (the forward pass runs up to the
        last head's layer, so fewer heads are cheaper)."""
        best: dict[str, Any] = {}
        curves: dict[str, list[float]] = {}
        for cal in (False, True):
            table = self.head_table(calibrate=cal).mean(axis=1)
            ranked = [self.heads[i] for i in np.argsort(-table, kind="stable")[:max_heads]]
            curve = [float(np.mean([np.nanmean(self.recall(ranked[:n], calibrate=cal,
                                                           budget=b)) for b in self.budgets]))
                     for n in range(1, len(ranked) + 1)]
            curves["calibrated" if cal else "raw"] = [round(c, 4) for c in curve]
            top = max(curve)
            n = next(i for i, c in enumerate(curve, start=1) if c >= top - tolerance)
            if top > best.get("top", -1.0):
                best = {"top": top, "recall": curve[n - 1], "heads": ranked[:n],
                        "calibrate": cal}
        best["curves"] = curves
        return best


def rerank_head_recalls(index: Any, bench: Benchmark, layers: Sequence[int], *,
                        pool_tokens: int, budgets: Sequence[int] = (512, 1024),
                        reader: LoadedModel | None = None,
                        show_progress: bool = True) -> RerankCalibration:
    """Read each question's hybrid pool (``pool_tokens``) with the question once and keep
    every head of ``layers``'s attention on the pool's sentences (see
    :mod:`s3_retriever.retrieval.rerank`). ``reader``: the model that reads the pool
    (default: the index's own)."""
    from s3_retriever.retrieval.rerank import NULL_QUESTION, AttentionReranker, pool_prompt

    reader = reader or index.lm
    heads = [(int(layer), h) for layer in layers for h in range(reader.spec.n_heads)]
    reranker = AttentionReranker(reader, heads, calibrate=False)
    items = []
    for ex in tqdm(bench.examples, desc="rerank heads", disable=not show_progress):
        pool = index.search(ex.question, k=None, budget_tokens=pool_tokens, mode="hybrid",
                            doc_ids=ex.doc_ids)
        pool, pieces, prompt = pool_prompt(reader.tokenizer, pool,
                                           {d: index.index.row_of(d) for d in ex.doc_ids})
        if prompt.n_units == 0:
            continue
        asked, null = reranker.attention_on_units(prompt, [ex.question, NULL_QUESTION])
        items.append((ex, pool, pieces, prompt, asked, null))
    return RerankCalibration(heads, [int(b) for b in budgets], items)
