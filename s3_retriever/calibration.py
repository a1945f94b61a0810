"""Find the retrieval heads: score every (layer, query head) by the evidence recall its exact
attention achieves on a calibration split of questions with gold evidence.

For each question, each document of its haystack is run through the model on its own
(as the scan does) and its exact pre-RoPE keys are kept; the question is run on its own
for its queries. A head scores each haystack token by the softmax attention mass the
question's tokens put on it; a sentence takes the max of its smoothed token scores;
sentences are taken best first until the token budget is spent; recall is the fraction of
gold evidence spans inside the taken sentences.

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

from s3_retriever.activations import collect_qk
from s3_retriever.corpus import generic_corpus
from s3_retriever.evaluation.data import Benchmark
from s3_retriever.fusion import LearnedFusion, unit_features
from s3_retriever.hooks import QKHooks
from s3_retriever.models import LoadedModel
from s3_retriever.scan import hookpoint_layer, tokenize_document
from s3_retriever.spans import (
    sentence_max_scores,
    sentence_token_counts,
    split_sentences,
    token_sentence_map,
)
from s3_retriever.storage import write_json


def budget_recall(scores: np.ndarray, lengths: np.ndarray, gold: np.ndarray,
                  budget: int) -> float:
    """Fraction of gold units inside the best-first units that fit ``budget`` tokens."""
    if not gold.any():
        return math.nan
    order = np.argsort(-scores, kind="stable")
    used, got = 0, 0
    for i in order:
        if used + lengths[i] > budget:
            continue
        used += lengths[i]
        got += bool(gold[i])
    return got / int(gold.sum())


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
    term (see :mod:`s3_retriever.scoring`). ``texts`` default to the SAE training corpus."""
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


def fit_fusion(index: Any, bench: Benchmark, *, l2: float = 1e-2, show_progress: bool = True,
               info: dict[str, Any] | None = None) -> LearnedFusion:
    """Fit the learned fusion (:mod:`s3_retriever.fusion`) on a calibration benchmark.

    ``index`` is an :class:`~s3_retriever.engine.S3Index`; the benchmark's documents
    missing from it are scanned first. Every sentence unit of every question's haystack is
    one training row, labelled 1 when it holds a gold evidence span.
    """
    todo = [d for d in bench.documents.values() if d.doc_id not in index.index]
    if todo:
        index.add_texts([d.text for d in todo], [d.metadata for d in todo],
                        [d.doc_id for d in todo], show_progress=show_progress)
    xs, ys = [], []
    for ex in tqdm(bench.examples, desc="fusion features", disable=not show_progress):
        us = index.unit_scores(ex.question, doc_ids=ex.doc_ids)
        golds: dict[str, list[tuple[int, int]]] = {}
        for e in ex.evidence:
            golds.setdefault(e.doc_id, []).append((e.start_char, e.end_char))
        y = np.array([any(s <= gs and ge <= e for gs, ge in golds.get(d, ()))
                      for d, (s, e) in zip(us["doc_id"], us["bounds"])], np.float64)
        if not y.any():
            continue
        xs.append(unit_features(us["head"], us["bm25"], us["tokens"]))
        ys.append(y)
    if not xs:
        raise ValueError("no calibration question has gold evidence in its haystack")
    X, y = np.concatenate(xs), np.concatenate(ys)
    meta = {"questions": len(xs), "units": int(len(y)), "gold_units": int(y.sum()), "l2": l2,
            **(info or {})}
    return LearnedFusion.fit(us["heads"], X, y, l2=l2, info=meta)
