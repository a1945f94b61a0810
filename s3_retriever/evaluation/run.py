"""The quality benchmark: every retriever on the same haystacks, questions and budgets.

One scan of the union of every benchmark's paragraphs serves every question and length
(a haystack is the documents a search is filtered to); each retriever ranks each haystack
once and every budget is packed from that ranking (``greedy_fill``), then evidence recall,
answer recall, MRR, latency and (``generate > 0``) KV-free answers are scored. Seeded.

Example:
    >>> cfg = EvalConfig(datasets=("hotpotqa",), contexts=(8000,), n_questions=5)
    >>> results = run_eval(cfg, index_factory=lambda overrides: S3Index.from_model(
    ...     "smollm2-135m", **overrides))  # doctest: +SKIP
    >>> sorted(results["runs"][0])[:3]  # doctest: +SKIP
    ['answer_em', 'answer_f1', 'answer_recall']
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import logging
import math
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from s3_retriever import corpus as _corpus
from s3_retriever import storage
from s3_retriever.config import ANSWER_BUDGET_TOKENS, MAX_NEW_TOKENS, S3Settings
from s3_retriever.engine import S3Index
from s3_retriever.evaluation import splits as _splits
from s3_retriever.evaluation.baselines import (
    BM25Retriever,
    DenseRetriever,
    EnsembleRetriever,
    OracleRetriever,
    Passage,
    RandomRetriever,
    make_passages,
)
from s3_retriever.evaluation.data import (
    Benchmark,
    Document,
    Example,
    hotpotqa_benchmark,
    load_squad,
    needle_benchmark,
    squad_benchmark,
)
from s3_retriever.evaluation.metrics import (
    answer_recall,
    evidence_recall,
    exact_match,
    f1_score,
    mean_stderr,
    mrr,
    paired_difference,
)
from s3_retriever.generate import answer_from_spans
from s3_retriever.model.loading import LoadedModel
from s3_retriever.retrieval.packing import greedy_fill
from s3_retriever.retrieval.spans import Span

logger = logging.getLogger(__name__)

__all__ = [
    "ALL_RETRIEVERS",
    "DATASETS",
    "DEFAULT_BUDGETS",
    "DEFAULT_CONTEXTS",
    "ENGINE_RETRIEVERS",
    "ENSEMBLES",
    "EvalConfig",
    "IndexFactory",
    "PASSAGE_RETRIEVERS",
    "SCAN_SETTINGS",
    "apply_search_settings",
    "build_benchmarks",
    "corpus_documents",
    "index_corpus",
    "run_eval",
    "run_sweep",
    "summarize_records",
    "sweep_grid",
]

DATASETS = ("hotpotqa", "squad", "needle", "needle-near", "needle-multi", "needle-para")
DEFAULT_CONTEXTS = (8000, 32000, 128000)
DEFAULT_BUDGETS = (512, 1024, 2048, 4096)
# retriever name -> S3Index.search mode ("bm25-sentences": the engine's own sentence BM25)
ENGINE_RETRIEVERS = {"s3": "s3", "hybrid": "hybrid", "rerank": "rerank",
                     "bm25-sentences": "bm25"}
# "bm25+dense": BM25 and MiniLM fused by RRF (k=60, equal weights), as LangChain's
# EnsembleRetriever does; "bm25+dense-linear": min-max linear fusion, weight 0.5
ENSEMBLES = {"bm25+dense": "rrf", "bm25+dense-linear": "linear"}
PASSAGE_RETRIEVERS = ("bm25", "dense", *ENSEMBLES, "random", "oracle")
ALL_RETRIEVERS = ("s3", "hybrid", "rerank", *PASSAGE_RETRIEVERS)
# S3Settings fields that change what the scan stores: changing one needs a new scan
SCAN_SETTINGS = ("chunk_tokens", "context_tokens", "heads")
_ALL_SPANS = 10**9  # "k" that keeps every ranked span

IndexFactory = Callable[[Mapping[str, Any]], S3Index]
"""Settings overrides -> an empty :class:`S3Index` (the model loaded once, shared)."""


@dataclass
class EvalConfig:
    """What to run. Defaults are the issue's: three datasets, 8k/32k/128k haystacks,
    budgets 512-4096, every retriever (ALL_RETRIEVERS), the reported split.

    Attributes:
        datasets: any of ``"hotpotqa"``, ``"squad"``, ``"needle"`` and the needle variants
            ``"needle-near"``, ``"needle-multi"``, ``"needle-para"``
            (:data:`~s3_retriever.evaluation.data.NEEDLE_VARIANTS`).
        contexts: haystack lengths in tokens of the LM's tokenizer.
        budgets: retrieval token budgets.
        retrievers: names from :data:`ALL_RETRIEVERS` (plus ``"bm25-sentences"``).
        split: ``"reported"`` (default), ``"dev"`` or ``"calibration"``.
        n_questions: the first this many questions of the split, per dataset.
        questions: explicit positions instead (HotpotQA file indices; positions in the
            SQuAD split permutation; needles take ``len(questions)``).
        seed: seeds haystacks, padding, needles and the random baseline.
        passage_tokens: passage size of the passage baselines.
        granularity: per baseline, its own passage size instead (``{"bm25": 64}``; 1 makes
            every sentence a passage): each baseline at the granularity best for it on the
            dev split.
        pool_factor: see :mod:`~s3_retriever.evaluation.data`.
        data: the data folder (default: ``../shared/data``).
        generate: answer the first this many questions of every benchmark (0: none).
        generate_budgets: budgets to generate at (None: the answer budget,
            ``ANSWER_BUDGET_TOKENS``, when it is among ``budgets``, else every budget).
        generate_retrievers: retrievers to generate for (None: every retriever).
        max_new_tokens: answer length limit.
        search_per_budget: call the engine once per budget (exact per-budget latency).
        show_progress: tqdm bars.
    """

    datasets: tuple[str, ...] = DATASETS
    contexts: tuple[int, ...] = DEFAULT_CONTEXTS
    budgets: tuple[int, ...] = DEFAULT_BUDGETS
    retrievers: tuple[str, ...] = ALL_RETRIEVERS
    split: str = "reported"
    n_questions: int = 100
    questions: tuple[int, ...] | None = None
    seed: int = 0
    passage_tokens: int = 128
    granularity: dict[str, int] = dataclasses.field(default_factory=dict)
    pool_factor: float = 2.0
    data: str | None = None
    generate: int = 0
    generate_budgets: tuple[int, ...] | None = None
    generate_retrievers: tuple[str, ...] | None = None
    max_new_tokens: int = MAX_NEW_TOKENS
    search_per_budget: bool = False
    show_progress: bool = True

    def validate(self) -> EvalConfig:
        """Check every field; returns ``self``. Raises ValueError naming the problem."""
        known = set(ALL_RETRIEVERS) | set(ENGINE_RETRIEVERS)
        for name, values, allowed in (("datasets", self.datasets, DATASETS),
                                      ("retrievers", self.retrievers, known)):
            if not values:
                raise ValueError(f"{name} is empty")
            bad = [v for v in values if v not in allowed]
            if bad:
                raise ValueError(f"unknown {name} {bad}; known: {sorted(allowed)}")
            if len(set(values)) != len(values):
                raise ValueError(f"{name} has duplicates: {list(values)}")
        for name, values in (("contexts", self.contexts), ("budgets", self.budgets)):
            if not values or any(int(v) <= 0 for v in values):
                raise ValueError(f"{name} must be positive integers, got {list(values)}")
        if self.split not in _splits.SPLITS:
            raise ValueError(f"unknown split {self.split!r}; known: {sorted(_splits.SPLITS)}")
        if self.questions is None and self.n_questions <= 0:
            raise ValueError(f"n_questions must be positive, got {self.n_questions}")
        if self.questions is not None and not self.questions:
            raise ValueError("questions is empty")
        bad = {n: v for n, v in self.granularity.items()
               if n not in PASSAGE_RETRIEVERS or not isinstance(v, int) or v <= 0}
        if bad:
            raise ValueError(f"granularity {bad}: give passage baselines "
                             f"{list(PASSAGE_RETRIEVERS)} positive passage sizes")
        if self.passage_tokens <= 0 or self.max_new_tokens <= 0 or self.generate < 0:
            raise ValueError("passage_tokens and max_new_tokens must be > 0, generate >= 0")
        for name, sub, full in (("generate_budgets", self.generate_budgets, self.budgets),
                                ("generate_retrievers", self.generate_retrievers,
                                 self.retrievers)):
            if sub is not None and [v for v in sub if v not in full]:
                raise ValueError(f"{name} {list(sub)} must be a subset of {list(full)}")
        return self

    def positions(self) -> list[int]:
        """The question positions this run evaluates (HotpotQA indices / SQuAD positions)."""
        if self.questions is not None:
            return [int(q) for q in self.questions]
        return _splits.split_positions(self.split, self.n_questions)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


# --------------------------------------------------------------------------- benchmarks


class _TokenMemo:
    """``count_tokens`` with a memo (documents and sentences are counted many times)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.memo: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        n = self.memo.get(text)
        if n is None:
            n = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(self.memo) < 2_000_000:
                self.memo[text] = n
        return n


def _squad_answerable(path: str | None) -> int:
    """How many answerable SQuAD questions :func:`squad_benchmark` can draw from."""
    n = 0
    for article in load_squad(path):
        for para in article["paragraphs"]:
            if not para["context"].strip():
                continue
            n += sum(1 for qa in para["qas"]
                     if not qa.get("is_impossible") and qa.get("answers"))
    return n


def squad_split_benchmark(positions: Sequence[int], context_tokens: int,
                          count_tokens: Callable[[str], int], *, path: str | None = None,
                          seed: int = 0, pool_factor: float = 2.0) -> Benchmark:
    """SQuAD questions at ``positions`` of the fixed split permutation (see
    :mod:`~.splits`), each in a ``context_tokens`` haystack built by
    :func:`~.data.squad_benchmark` (a question's haystack does not depend on which
    other questions are drawn). Positions past the last answerable question are dropped.
    """
    n = _squad_answerable(path)
    full = squad_benchmark(n, context_tokens, count_tokens, path=path, seed=seed,
                           pool_factor=pool_factor)
    if len(full.examples) != n:
        raise RuntimeError(f"expected {n} SQuAD examples, built {len(full.examples)}")
    perm = list(range(n))
    random.Random(_splits.SQUAD_SPLIT_SEED).shuffle(perm)
    chosen = [full.examples[perm[p]] for p in positions if 0 <= p < n]
    documents = {d: full.documents[d] for ex in chosen for d in ex.doc_ids}
    for ex in chosen:
        ex.dataset = "squad"
    return Benchmark(full.name, documents, chosen)


def build_benchmarks(cfg: EvalConfig, count_tokens: Callable[[str], int], *,
                     split: str | None = None) -> list[tuple[str, int, Benchmark]]:
    """``(dataset, context_tokens, benchmark)`` for every dataset and haystack length.

    ``split`` only picks the needles' seed offset (default ``cfg.split``); the HotpotQA /
    SQuAD questions are ``cfg.positions()``.
    """
    split = split or cfg.split
    positions = cfg.positions()
    out = []
    todo = [(d, c) for d in cfg.datasets for c in cfg.contexts]
    for dataset, ctx in tqdm(todo, desc="building haystacks", disable=not cfg.show_progress):
        if dataset == "hotpotqa":
            reserved = [p for p in positions if p in _corpus.RESERVED_SAE_QUESTIONS]
            if reserved:
                raise ValueError(f"HotpotQA questions {reserved[:5]} are reserved for SAE "
                                 "training and are never evaluated")
            n_file = len(_corpus.load_hotpotqa(cfg.data))
            bench = hotpotqa_benchmark([p for p in positions if p < n_file], ctx, count_tokens,
                                       path=cfg.data, seed=cfg.seed,
                                       pool_factor=cfg.pool_factor)
        elif dataset == "squad":
            bench = squad_split_benchmark(positions, ctx, count_tokens, path=cfg.data,
                                          seed=cfg.seed, pool_factor=cfg.pool_factor)
        else:
            bench = needle_benchmark(len(positions), ctx, count_tokens,
                                     seed=cfg.seed + _splits.NEEDLE_SEED_OFFSETS[split],
                                     path=cfg.data, pool_factor=cfg.pool_factor,
                                     variant=dataset.partition("-")[2] or "plain")
        if not bench.examples:
            raise ValueError(f"no {dataset} questions at positions {positions[:3]}...")
        out.append((dataset, int(ctx), bench))
    return out


def corpus_documents(benches: Iterable[tuple[str, int, Benchmark]]) -> dict[str, Document]:
    """The union of the benchmarks' documents, in first-appearance order.

    Raises:
        ValueError: one id with two different texts.
    """
    docs: dict[str, Document] = {}
    for _, _, bench in benches:
        for ex in bench.examples:
            for d in ex.doc_ids:
                doc = bench.documents[d]
                have = docs.get(d)
                if have is None:
                    docs[d] = doc
                elif have.text != doc.text:
                    raise ValueError(f"document id {d!r} has two different texts")
    return docs


# --------------------------------------------------------------------------- S3 index


def apply_search_settings(index: S3Index, overrides: Mapping[str, Any]) -> None:
    """Set search-time settings on a scanned index (validated; scan settings refused)."""
    scan = [k for k in overrides if k in SCAN_SETTINGS]
    if scan:
        raise ValueError(f"settings {scan} change the scan; build a new index for them")
    index.settings = S3Settings.from_dict({**index.settings.to_dict(), **dict(overrides)})


def _heads_key(index: S3Index) -> list[list[Any]]:
    return [h.to_entry() + [h.column] for h in index.heads]


def index_corpus(index: S3Index, documents: Mapping[str, Document], *,
                 cache: str | os.PathLike | None = None, show_progress: bool = True
                 ) -> tuple[S3Index, dict[str, Any]]:
    """Scan ``documents`` into the empty ``index``, or reuse a cached scan of them.

    ``cache``: a folder. When it holds an index of exactly these documents (ids and
    texts), made with the same model, SAEs, heads and scan settings, it is loaded and
    ``index``'s settings are applied to it; otherwise ``index`` scans the documents and
    the result is saved there (replacing an index there; a folder of other files is
    refused).

    Returns:
        the index to search and ``{"scan_s", "from_cache", "documents", "tokens"}``.
    """
    if len(index) and (len(index) != len(documents)
                       or any(d not in index.index for d in documents)):
        raise ValueError("index_corpus needs an empty index, or one holding exactly the corpus "
                         "(other documents would change the BM25 statistics)")
    info: dict[str, Any] = {"from_cache": False, "scan_s": 0.0}
    if cache is not None and S3Index.exists(cache):
        cached = S3Index.load(cache, model=index.lm)
        same = (len(cached) == len(documents)
                and all(d in cached.index and cached.get_document(d).text == doc.text
                        for d, doc in documents.items())
                and _heads_key(cached) == _heads_key(index)
                and {hp: s.content_hash() for hp, s in cached.saes.items()}
                == {hp: s.content_hash() for hp, s in index.saes.items()}
                and all(getattr(cached.settings, k) == getattr(index.settings, k)
                        for k in ("chunk_tokens", "context_tokens", "query_mean")))
        if same:
            cached.settings = S3Settings.from_dict(index.settings.to_dict())
            info.update(from_cache=True, documents=len(cached),
                        tokens=int(cached.index.n_tokens))
            return cached, info
        logger.info("index cache %s holds another corpus or setup; rescanning", cache)
    todo = [d for d in documents.values() if d.doc_id not in index.index]
    t = time.perf_counter()
    if todo:
        index.add_texts([d.text for d in todo], [d.metadata for d in todo],
                        [d.doc_id for d in todo], show_progress=show_progress)
    info["scan_s"] = time.perf_counter() - t
    if cache is not None:
        index.save(cache, overwrite=True)  # only ever replaces an index (never other files)
    info.update(documents=len(index), tokens=int(index.index.n_tokens))
    return index, info


# --------------------------------------------------------------------------- retrieval


@dataclass
class _Ranking:
    items: list[Any]
    lengths: list[int]
    ms: float
    packed: dict[int, tuple[list[Any], float]] = field(default_factory=dict)


class _Baselines:
    """The passage baselines over the whole corpus (built once), each over passages of its
    own granularity (``granularity[name]``, else ``passage_tokens``; 1: single sentences)."""

    def __init__(self, documents: Mapping[str, Document], count_tokens: Callable[[str], int],
                 names: Sequence[str], evidence: Mapping[str, list], *, passage_tokens: int,
                 seed: int, show_progress: bool, granularity: Mapping[str, int] | None = None):
        passages: dict[int, list[Passage]] = {}
        built: dict[tuple[str, int], Any] = {}  # (kind, size): shared with the ensembles

        def make(kind: str, size: int) -> Any:
            if size not in passages:
                passages[size] = make_passages(documents, count_tokens, size)
            ps = passages[size]
            if (kind, size) not in built:
                built[kind, size] = (
                    BM25Retriever(ps) if kind == "bm25"
                    else DenseRetriever(ps, show_progress=show_progress) if kind == "dense"
                    else EnsembleRetriever(ps, fusion=ENSEMBLES[kind], bm25=make("bm25", size),
                                           dense=make("dense", size)) if kind in ENSEMBLES
                    else RandomRetriever(ps, seed=seed) if kind == "random"
                    else OracleRetriever(ps, evidence))
            return built[kind, size]

        sizes = {n: int((granularity or {}).get(n, passage_tokens)) for n in names}
        self.retrievers: dict[str, Any] = {n: make(n, sizes[n]) for n in names}
        self.n_passages = {n: len(passages[sizes[n]]) for n in names}  # per baseline
        self.lengths = {(p.doc_id, p.start_char, p.end_char): p.n_tokens
                        for ps in passages.values() for p in ps}

    def rank(self, name: str, ex: Example) -> _Ranking:
        t = time.perf_counter()
        hits = self.retrievers[name].retrieve(ex.question, doc_ids=ex.doc_ids, qid=ex.qid)
        ms = (time.perf_counter() - t) * 1000
        spans = [Span(h.doc_id, h.start_char, h.end_char, h.text, h.score) for h in hits]
        lengths = [self.lengths[(h.doc_id, h.start_char, h.end_char)] for h in hits]
        return _Ranking(spans, lengths, ms)


def _engine_rank(index: S3Index, mode: str, ex: Example, budgets: Sequence[int],
                 per_budget: bool) -> _Ranking:
    # With span_tokens="auto" the span size depends on the budget, so one ranking can't
    # serve every budget: search once per budget then.
    if per_budget or index.settings.span_tokens == "auto":
        r = _Ranking([], [], 0.0)
        for b in budgets:
            t = time.perf_counter()
            try:
                spans = index.search(ex.question, k=None, budget_tokens=int(b), mode=mode,
                                     doc_ids=ex.doc_ids)
            except ValueError as e:  # budget below the smallest span
                if "smaller than the smallest" not in str(e):
                    raise
                spans = []
            r.packed[int(b)] = (spans, (time.perf_counter() - t) * 1000)
        return r
    t = time.perf_counter()
    spans = index.search(ex.question, k=_ALL_SPANS, mode=mode, doc_ids=ex.doc_ids)
    ms = (time.perf_counter() - t) * 1000
    return _Ranking(spans, [int(s.n_tokens) for s in spans], ms)


def _depth_key(ex: Example) -> str | None:
    d = ex.metadata.get("depth")
    return None if d is None else f"{float(d):.2f}"


def _score(ex: Example, spans: list[Span], lengths: Iterable[int]) -> dict[str, Any]:
    recall = evidence_recall(spans, ex.evidence)
    return {"evidence_recall": recall,
            "joint_recall": None if recall is None else float(recall == 1.0),
            "answer_recall": answer_recall([s.text for s in spans], ex.answers),
            "mrr": mrr(spans, ex.evidence), "tokens_used": int(sum(lengths)),
            "n_spans": len(spans)}


def _retrieve_benchmark(dataset: str, ctx: int, bench: Benchmark, retrievers: Sequence[str],
                        budgets: Sequence[int], index: S3Index | None,
                        baselines: _Baselines | None, keep: int, *, per_budget: bool,
                        show_progress: bool, tag: Mapping[str, Any] | None = None
                        ) -> tuple[list[dict[str, Any]], dict[tuple, list[Span]]]:
    """Per-question records, and the packed spans of the first ``keep`` questions."""
    records: list[dict[str, Any]] = []
    kept: dict[tuple, list[Span]] = {}
    bar = tqdm(bench.examples, desc=f"{dataset} {ctx}: retrieval", disable=not show_progress)
    for qi, ex in enumerate(bar):
        for name in retrievers:
            if name in ENGINE_RETRIEVERS:
                assert index is not None
                r = _engine_rank(index, ENGINE_RETRIEVERS[name], ex, budgets, per_budget)
            else:
                assert baselines is not None
                r = baselines.rank(name, ex)
            for b in budgets:
                if int(b) in r.packed:
                    spans, ms = r.packed[int(b)]
                    lengths = [int(s.n_tokens) for s in spans]
                else:
                    t = time.perf_counter()
                    packed = [(r.items[i], r.lengths[i])
                              for i in greedy_fill(r.lengths, int(b))]
                    ms = r.ms + (time.perf_counter() - t) * 1000
                    spans, lengths = [s for s, _ in packed], [n for _, n in packed]
                rec = {"dataset": dataset, "context_tokens": ctx, "qid": ex.qid,
                       "retriever": name, "budget_tokens": int(b),
                       "haystack_tokens": ex.context_tokens, "depth": _depth_key(ex),
                       "latency_ms": ms, **_score(ex, spans, lengths)}
                if tag:
                    rec["setting"] = dict(tag)
                records.append(rec)
                if qi < keep:
                    kept[(ex.qid, name, int(b))] = spans
    return records, kept


# --------------------------------------------------------------------------- generation


def _generate(lm: LoadedModel, bench: Benchmark, dataset: str, ctx: int,
              kept: Mapping[tuple, list[Span]], cfg: EvalConfig
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """EM/F1 of KV-free answers from each retriever's spans, and from the full haystack."""
    examples = bench.examples[:cfg.generate]
    default = ((ANSWER_BUDGET_TOKENS,) if ANSWER_BUDGET_TOKENS in cfg.budgets
               else cfg.budgets)
    budgets = [int(b) for b in (cfg.generate_budgets or default)]
    names = list(cfg.generate_retrievers or cfg.retrievers)
    answers: list[dict[str, Any]] = []
    full: list[dict[str, Any]] = []
    total = len(examples) * (1 + len(budgets) * len(names))
    bar = tqdm(total=total, desc=f"{dataset} {ctx}: generation",
               disable=not cfg.show_progress)
    for ex in examples:
        order = {d: i for i, d in enumerate(ex.doc_ids)}
        text = bench.haystack_text(ex)
        try:
            if ex.context_tokens + cfg.max_new_tokens >= lm.max_length:
                raise ValueError("the haystack alone fills the window")
            ans = answer_from_spans(lm, ex.question, [Span("haystack", 0, len(text), text, 0.0)],
                                    max_new_tokens=cfg.max_new_tokens)
            full.append({"dataset": dataset, "context_tokens": ctx, "qid": ex.qid,
                         "fits": True, "answer": ans.text, "prompt_tokens": ans.prompt_tokens,
                         "f1": f1_score(ans.text, ex.answers),
                         "em": exact_match(ans.text, ex.answers)})
        except ValueError:  # the haystack does not fit the model's window
            full.append({"dataset": dataset, "context_tokens": ctx, "qid": ex.qid,
                         "fits": False, "answer": None, "prompt_tokens": None,
                         "f1": None, "em": None})
        bar.update(1)
        for name in names:
            for b in budgets:
                spans = kept[(ex.qid, name, b)]
                try:
                    ans = answer_from_spans(lm, ex.question, spans, doc_order=order,
                                            max_new_tokens=cfg.max_new_tokens)
                    rec = {"answer": ans.text, "f1": f1_score(ans.text, ex.answers),
                           "em": exact_match(ans.text, ex.answers)}
                except ValueError:
                    rec = {"answer": None, "f1": None, "em": None}
                answers.append({"dataset": dataset, "context_tokens": ctx, "qid": ex.qid,
                                "retriever": name, "budget_tokens": b, **rec})
                bar.update(1)
    bar.close()
    return answers, full


# --------------------------------------------------------------------------- summaries


def _mean_or_none(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    s = mean_stderr(values)
    mean = None if math.isnan(s["mean"]) else s["mean"]
    err = None if math.isnan(s["stderr"]) else s["stderr"]
    return mean, err, int(s["n"])


def summarize_records(records: Sequence[Mapping[str, Any]],
                      answers: Sequence[Mapping[str, Any]] = (),
                      full: Sequence[Mapping[str, Any]] = (),
                      n_questions: Mapping[tuple[str, int], int] | None = None,
                      ) -> list[dict[str, Any]]:
    """One row per (setting, dataset, context, retriever, budget): the quality.json rows.

    Means skip unscored questions (no gold evidence; answers that cannot be found in
    text such as yes/no). ``answer_f1`` / ``answer_em`` are over the generated questions
    (``n_generated``), ``full_context_f1`` over the same questions where the haystack fit
    (``n_full_context``); None when nothing was generated.
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in records:
        key = (json.dumps(r.get("setting"), sort_keys=True), r["dataset"], r["context_tokens"],
               r["retriever"], r["budget_tokens"])
        groups.setdefault(key, []).append(r)
    gen: dict[tuple, list[Mapping[str, Any]]] = {}
    for a in answers:
        gen.setdefault((a["dataset"], a["context_tokens"], a["retriever"],
                        a["budget_tokens"]), []).append(a)
    fulls: dict[tuple, dict[str, Mapping[str, Any]]] = {}
    for f in full:
        fulls.setdefault((f["dataset"], f["context_tokens"]), {})[f["qid"]] = f
    rows = []
    for key, rs in groups.items():
        setting, dataset, ctx, name, budget = key
        row: dict[str, Any] = {"dataset": dataset, "context_tokens": int(ctx),
                               "n_questions": (n_questions or {}).get((dataset, ctx), len(rs)),
                               "retriever": name, "budget_tokens": int(budget)}
        for metric in ("evidence_recall", "joint_recall", "answer_recall", "mrr"):
            mean, err, n = _mean_or_none(r.get(metric) for r in rs)
            row[metric] = mean
            row[f"{metric}_stderr"] = err
            row[f"n_{metric}"] = n
        lat = [float(r["latency_ms"]) for r in rs]
        row["latency_ms_p50"] = statistics.median(lat)
        row["latency_ms_mean"] = statistics.fmean(lat)
        row["tokens_used_mean"] = statistics.fmean(r["tokens_used"] for r in rs)
        row["haystack_tokens_mean"] = statistics.fmean(r["haystack_tokens"] for r in rs)
        g = [a for a in gen.get((dataset, ctx, name, budget), []) if a["f1"] is not None]
        row["answer_f1"] = _mean_or_none(a["f1"] for a in g)[0] if g else None
        row["answer_em"] = _mean_or_none(a["em"] for a in g)[0] if g else None
        row["n_generated"] = len(g)
        fq = fulls.get((dataset, ctx), {})
        fg = [fq[a["qid"]] for a in g if a["qid"] in fq and fq[a["qid"]]["fits"]]
        row["full_context_f1"] = _mean_or_none(f["f1"] for f in fg)[0] if fg else None
        row["full_context_em"] = _mean_or_none(f["em"] for f in fg)[0] if fg else None
        row["n_full_context"] = len(fg)
        depths = sorted({r["depth"] for r in rs if r.get("depth") is not None})
        if depths:
            row["evidence_recall_by_depth"] = {
                d: _mean_or_none(r["evidence_recall"] for r in rs if r["depth"] == d)[0]
                for d in depths}
        if setting != "null":
            row["setting"] = json.loads(setting)
        rows.append(row)
    return rows


S3_MODES = ("s3", "hybrid", "rerank")
"""The engine's modes a comparison puts against the strongest baseline."""
USER_BASELINES = ("bm25", "dense", *ENSEMBLES)
"""What a RAG user already runs: the candidates for the strongest baseline of a cell."""


def versus_baseline(records: Sequence[Mapping[str, Any]],
                    runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (dataset, context, budget) and S3 mode: its evidence and joint recall against the
    strongest user baseline of that cell (the highest mean evidence recall), as paired
    differences over the same questions (mean, standard error, n)."""
    best: dict[tuple, tuple[float, str]] = {}
    for r in runs:
        if r["retriever"] in USER_BASELINES and r["evidence_recall"] is not None:
            key = (r["dataset"], r["context_tokens"], r["budget_tokens"])
            best[key] = max(best.get(key, (-1.0, "")), (r["evidence_recall"], r["retriever"]))
    per_q: dict[tuple, dict[str, Mapping[str, Any]]] = {}
    for r in records:
        per_q.setdefault((r["dataset"], r["context_tokens"], r["budget_tokens"],
                          r["retriever"]), {})[r["qid"]] = r
    out = []
    for (dataset, ctx, budget), (_, base) in sorted(best.items()):
        theirs = per_q[(dataset, ctx, budget, base)]
        for mode in S3_MODES:
            ours = per_q.get((dataset, ctx, budget, mode))
            if not ours:
                continue
            qids = sorted(set(ours) & set(theirs))
            row = {"dataset": dataset, "context_tokens": ctx, "budget_tokens": budget,
                   "retriever": mode, "baseline": base}
            for metric in ("evidence_recall", "joint_recall"):
                row[metric] = paired_difference([ours[q].get(metric) for q in qids],
                                                [theirs[q].get(metric) for q in qids])
            out.append(row)
    return out


def _full_rows(full: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for f in full:
        groups.setdefault((f["dataset"], f["context_tokens"]), []).append(f)
    rows = []
    for (dataset, ctx), fs in groups.items():
        fit = [f for f in fs if f["fits"]]
        rows.append({"dataset": dataset, "context_tokens": ctx, "n_questions": len(fs),
                     "n_fit": len(fit),
                     "answer_f1": _mean_or_none(f["f1"] for f in fit)[0] if fit else None,
                     "answer_em": _mean_or_none(f["em"] for f in fit)[0] if fit else None})
    return rows


# --------------------------------------------------------------------------- runs


def _environment() -> dict[str, Any]:
    import torch

    return {"machine": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def _evidence(benches: Sequence[tuple[str, int, Benchmark]]) -> dict[str, list]:
    evidence: dict[str, list] = {}
    for _, _, bench in benches:
        for ex in bench.examples:
            evidence.setdefault(ex.qid, ex.evidence)
    return evidence


def run_eval(cfg: EvalConfig, *, index: S3Index | None = None,
             index_factory: IndexFactory | None = None,
             index_cache: str | os.PathLike | None = None,
             details: str | os.PathLike | None = None,
             command: str | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the quality.json content (``{"model", "runs", ...}``).

    Args:
        cfg: what to run.
        index: an empty :class:`S3Index` (or ``index_factory({})`` makes one).
        index_cache: a folder to reuse / store the scan (see :func:`index_corpus`).
        details: write one JSON line per question, retriever and budget here (with the
            generated answers), for paired comparisons.
        command: the command line, recorded in the output.
    """
    cfg.validate()
    if index is None:
        if index_factory is None:
            raise ValueError("give index= or index_factory=")
        index = index_factory({})
    t0 = time.perf_counter()
    count = _TokenMemo(index.lm.tokenizer)
    benches = build_benchmarks(cfg, count)
    documents = corpus_documents(benches)
    build_s = time.perf_counter() - t0

    names = list(cfg.retrievers)
    engine_names = [n for n in names if n in ENGINE_RETRIEVERS]
    passage_names = [n for n in names if n not in ENGINE_RETRIEVERS]
    scan_info: dict[str, Any] = {}
    if engine_names:
        index, scan_info = index_corpus(index, documents, cache=index_cache,
                                        show_progress=cfg.show_progress)
    t = time.perf_counter()
    baselines = (_Baselines(documents, count, passage_names, _evidence(benches),
                            passage_tokens=cfg.passage_tokens, seed=cfg.seed,
                            show_progress=cfg.show_progress, granularity=cfg.granularity)
                 if passage_names else None)
    baselines_s = time.perf_counter() - t

    records: list[dict[str, Any]] = []
    answers: list[dict[str, Any]] = []
    full: list[dict[str, Any]] = []
    n_q: dict[tuple[str, int], int] = {}
    t = time.perf_counter()
    for dataset, ctx, bench in benches:
        n_q[(dataset, ctx)] = len(bench.examples)
        recs, kept = _retrieve_benchmark(dataset, ctx, bench, names, cfg.budgets, index,
                                         baselines, cfg.generate,
                                         per_budget=cfg.search_per_budget,
                                         show_progress=cfg.show_progress)
        records += recs
        if cfg.generate:
            a, f = _generate(index.lm, bench, dataset, ctx, kept, cfg)
            answers += a
            full += f
    eval_s = time.perf_counter() - t

    runs = summarize_records(records, answers, full, n_q)
    results: dict[str, Any] = {
        "model": index.lm.model_id,
        "model_fingerprint": index.lm.fingerprint,
        "command": command,
        "split": cfg.split if cfg.questions is None else "custom",
        "questions": cfg.positions(),
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "settings": index.settings.to_dict(),
        "heads": _heads_key(index),
        "corpus": {"documents": len(documents),
                   "tokens": scan_info.get("tokens"),
                   "passages": baselines.n_passages if baselines else None},
        "runs": runs,
        "versus_baseline": versus_baseline(records, runs),
        "full_context": _full_rows(full),
        "timing": {"build_s": build_s, "scan_s": scan_info.get("scan_s"),
                   "scan_from_cache": scan_info.get("from_cache"),
                   "baselines_s": baselines_s, "eval_s": eval_s,
                   "total_s": time.perf_counter() - t0},
        "environment": _environment(),
    }
    if details is not None:
        _write_details(details, records, answers, full)
    return results


def _write_details(path: str | os.PathLike, records: Sequence[Mapping[str, Any]],
                   answers: Sequence[Mapping[str, Any]],
                   full: Sequence[Mapping[str, Any]]) -> None:
    """One JSON object per line: retrieval records, then answers, then full-context."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        for kind, rows in (("retrieval", records), ("answer", answers), ("full_context", full)):
            for r in rows:
                f.write(json.dumps({"kind": kind, **r}, ensure_ascii=False) + "\n")


def sweep_grid(sweeps: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the swept values, in the given order.

    Example:
        >>> sweep_grid({"fusion": ["rrf", "linear"], "rrf_k": [10, 60]})[:2]
        [{'fusion': 'rrf', 'rrf_k': 10}, {'fusion': 'rrf', 'rrf_k': 60}]
    """
    if not sweeps:
        raise ValueError("nothing to sweep")
    known = {f.name for f in dataclasses.fields(S3Settings)}
    unknown = [k for k in sweeps if k not in known]
    if unknown:
        raise ValueError(f"unknown settings {unknown}; known: {sorted(known)}")
    for k, vs in sweeps.items():
        if not vs:
            raise ValueError(f"no values to sweep for {k}")
    names = list(sweeps)
    return [dict(zip(names, combo)) for combo in itertools.product(*sweeps.values())]


def run_sweep(cfg: EvalConfig, sweeps: Mapping[str, Sequence[Any]], *,
              index_factory: IndexFactory, base_settings: Mapping[str, Any] | None = None,
              command: str | None = None) -> dict[str, Any]:
    """Run the S3 retrievers (``s3``, ``hybrid``, ``bm25-sentences`` among
    ``cfg.retrievers``) for every combination of ``sweeps`` on the dev split.

    Passage retrievers in ``cfg.retrievers`` run once, as reference rows. Search-time
    settings reuse one scan; a scan setting (:data:`SCAN_SETTINGS`) rescans per value.

    Raises:
        ValueError: the split (or an explicit question) is not the dev split.
    """
    cfg.validate()
    if cfg.questions is None and cfg.split != "dev":
        raise ValueError(f"sweeps run on the dev split only, not {cfg.split!r}: "
                         "defaults are never chosen on the reported questions")
    _splits.check_within(cfg.positions(), "dev")
    grid = sweep_grid(sweeps)
    base = dict(base_settings or {})
    engine_names = [n for n in cfg.retrievers if n in ENGINE_RETRIEVERS]
    passage_names = [n for n in cfg.retrievers if n not in ENGINE_RETRIEVERS]
    if not engine_names:
        raise ValueError("a sweep needs s3, hybrid or bm25-sentences among the retrievers")

    t0 = time.perf_counter()
    index = index_factory(base)
    count = _TokenMemo(index.lm.tokenizer)
    benches = build_benchmarks(cfg, count, split="dev")
    documents = corpus_documents(benches)
    scanned, _ = index_corpus(index, documents, show_progress=cfg.show_progress)
    base_scan = scanned.settings.to_dict()

    records: list[dict[str, Any]] = []
    n_q = {(d, c): len(b.examples) for d, c, b in benches}
    if passage_names:
        baselines = _Baselines(documents, count, passage_names, _evidence(benches),
                               passage_tokens=cfg.passage_tokens, seed=cfg.seed,
                               show_progress=cfg.show_progress, granularity=cfg.granularity)
        for dataset, ctx, bench in benches:
            recs, _ = _retrieve_benchmark(dataset, ctx, bench, passage_names, cfg.budgets,
                                          None, baselines, 0, per_budget=False,
                                          show_progress=cfg.show_progress)
            records += recs
    for combo in tqdm(grid, desc="sweep", disable=not cfg.show_progress):
        if any(k in SCAN_SETTINGS for k in combo):
            idx, _ = index_corpus(index_factory({**base, **combo}), documents,
                                  show_progress=cfg.show_progress)
        else:
            idx = scanned
            idx.settings = S3Settings.from_dict(base_scan)
            apply_search_settings(idx, combo)
        for dataset, ctx, bench in benches:
            recs, _ = _retrieve_benchmark(dataset, ctx, bench, engine_names, cfg.budgets, idx,
                                          None, 0, per_budget=cfg.search_per_budget,
                                          show_progress=cfg.show_progress, tag=combo)
            records += recs
    scanned.settings = S3Settings.from_dict(base_scan)
    rows = summarize_records(records, n_questions=n_q)
    return {
        "model": index.lm.model_id,
        "command": command,
        "split": "dev" if cfg.questions is None else "custom",
        "questions": cfg.positions(),
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "sweep": {k: list(v) for k, v in sweeps.items()},
        "base_settings": base_scan,
        "heads": _heads_key(scanned),
        "rows": [r for r in rows if "setting" in r],
        "reference": [r for r in rows if "setting" not in r],
        "timing": {"total_s": time.perf_counter() - t0},
    }


def write_results(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``results`` as JSON, atomically (NaN and infinity written as null)."""
    storage.write_json(path, _clean(results))
    return Path(path)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj
