"""Exact sharded search: an index too big for one machine, split into shards that rank as one.

Each shard is an ordinary :class:`~s3_retriever.S3Index` served by a :class:`ShardServer`
(in this process, or inside a Ray actor: :mod:`s3_retriever.distributed.serve`). The driver,
:class:`ShardedIndex`, encodes the question once and talks to the shards through handles
with one method, ``submit(method, *args, **kwargs) -> future`` (``future.result()``), so
every argument and result is plain picklable data. A search is a few rounds, each sent to
every shard at once and then collected:

1. ``candidates``: the shard's candidate rows (filters, ``doc_ids``) and, for the attention
   scorer, its share of the softmax normaliser (per query column, the max logit and the
   sum of ``exp(logit - max)``). The driver merges the shares
   (:func:`~s3_retriever.retrieval.scoring.combine_normalisers`).
2. ``unit_scores``: every candidate sentence's S3 score under the global normaliser and
   its BM25 score under the global IDF and average length (gathered from the shards once,
   when the :class:`ShardedIndex` is built), plus each candidate document's unit count and
   smallest unit. The driver fuses them over all shards (min-max or RRF need all of them):
   this costs two floats per candidate sentence per query on the driver.
3. ``grow``: the driver walks the documents best first exactly as
   :func:`~s3_retriever.retrieval.packing.best_spans` does and asks the shards holding
   them to grow their spans (sending those documents' fused scores), stopping as soon as
   no document left can change the result.
4. ``build``: the shards turn the chosen spans into :class:`Span` objects; the driver packs
   them (``k`` / the budget).

Document position is the global row order (shard order, then row), so ties break exactly
as in one index holding the shards' documents in that order: a sharded search returns the
same spans, in the same order, as that index (scores equal up to float rounding of the
softmax normaliser, ~1e-7 relative).

Example:
    >>> from s3_retriever import S3Index
    >>> index = S3Index.from_model("smollm2-135m")
    >>> index.add_texts(["Marie Curie was born in Warsaw. She won two Nobel Prizes.",
    ...                  "The Amazon river flows through Brazil."], ids=["curie", "amazon"],
    ...                 show_progress=False)
    ['curie', 'amazon']
    >>> folder = save_sharded(split_index(index, 2), "sharded")
    >>> sharded = ShardedIndex.load(folder)
    >>> sharded.shards, len(sharded)
    (['shard-00000', 'shard-00001'], 2)
    >>> sharded.search("Where was Marie Curie born?", k=1)[0].doc_id
    'curie'
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import threading
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from s3_retriever import validate
from s3_retriever.config import (
    ANSWER_BUDGET_TOKENS,
    DEFAULT_K,
    MAX_NEW_TOKENS,
    S3Settings,
    rerank_pool_for,
    span_tokens_for,
)
from s3_retriever.distributed.manifest import (
    is_sharded_index,
    read_manifest,
    shard_name,
    write_manifest,
)
from s3_retriever.engine import S3Index
from s3_retriever.errors import (
    EmptyIndexError,
    IndexFormatError,
    InvalidInputError,
    OutputExistsError,
)
from s3_retriever.generate import Answer, answer_from_spans
from s3_retriever.index.codes import Codes
from s3_retriever.index.segments import Segment
from s3_retriever.model.loading import LoadedModel, load_model
from s3_retriever.retrieval import filters as filter_rules
from s3_retriever.retrieval.fusion import fuse
from s3_retriever.retrieval.packing import (
    Grown,
    build_spans,
    grow_and_pack,
    grow_document,
    unit_min_tokens,
)
from s3_retriever.retrieval.rerank import answer_mode_for, rerank_spans, reranker_for
from s3_retriever.retrieval.scan import question_queries
from s3_retriever.retrieval.scoring import (
    Normaliser,
    combine_normalisers,
    token_partials,
)
from s3_retriever.retrieval.scoring import feature_stats as _feature_idf
from s3_retriever.retrieval.spans import Span
from s3_retriever.text.bm25 import okapi_idf, tokenize

__all__ = ["SHARD_METHODS", "LocalShard", "ShardHandle", "ShardServer", "ShardedIndex",
           "save_sharded", "split_index"]

#: The methods of :class:`ShardServer` a handle may call (the search protocol).
SHARD_METHODS = ("info", "bm25_stats", "feature_stats", "candidates", "unit_scores", "grow",
                 "build")

#: Settings that must agree between shards (``chunk_tokens`` may differ: scan hardware).
_SHARED_SETTINGS = ("context_tokens", "scorer", "heads", "query_mean", "max_df_fraction",
                    "smooth_window", "span_tokens", "mode", "fusion", "fusion_weight", "rrf_k",
                    "cross_paragraphs")


class ShardServer:
    """The shard side of a sharded search: one :class:`~s3_retriever.S3Index`, answering
    the protocol methods (:data:`SHARD_METHODS`) with plain picklable data. Stateless
    between calls, so one server may serve many concurrent searches. Rows are the
    shard's own document-table rows.

    Example:
        >>> server = ShardServer.from_folder("index/shard-00000")  # doctest: +SKIP
        >>> server.info()["documents"]  # doctest: +SKIP
        1200
    """

    def __init__(self, index: S3Index) -> None:
        if not isinstance(index, S3Index):
            raise InvalidInputError(f"a ShardServer serves an S3Index, got "
                                    f"{type(index).__name__}")
        self.index = index

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, *, model: str | LoadedModel | None = None,
                    device: str | None = None, dtype: str | None = None,
                    mmap: bool = True) -> ShardServer:
        """Serve the index saved in ``folder`` (see :meth:`S3Index.load
        <s3_retriever.S3Index.load>`)."""
        return cls(S3Index.load(folder, model=model, device=device, dtype=dtype, mmap=mmap))

    def info(self) -> dict[str, Any]:
        """``documents`` (live), ``tokens``, ``index_bytes``, ``model`` (``id``,
        ``fingerprint``), ``settings`` (a dict), ``heads`` (resolved head entries) and
        ``hookpoints`` (whose queries the driver encodes)."""
        idx = self.index
        with idx._lock:
            return {"documents": len(idx), "tokens": int(idx.index.n_tokens),
                    "index_bytes": int(idx.index.nbytes()),
                    "model": {"id": idx.lm.model_id, "fingerprint": idx.lm.fingerprint},
                    "settings": idx.settings.to_dict(),
                    "heads": [h.to_entry() for h in idx.heads],
                    "hookpoints": idx._hookpoints()}

    def bm25_stats(self) -> dict[str, Any]:
        """The BM25 statistics of the shard's sentence units: ``terms`` (in order of first
        appearance), ``df`` (int64, units holding each term), ``units``, ``length`` (total
        terms) and the BM25 parameters ``k1``, ``b``, ``epsilon``."""
        with self.index._lock:
            bm = self.index.units.bm25
            terms, df, n, length = bm.term_stats()
            return {"terms": terms, "df": df, "units": n, "length": length, "k1": bm.k1,
                    "b": bm.b, "epsilon": bm.epsilon}

    def feature_stats(self) -> dict[str, Any]:
        """For the co-activation scorer: ``doc_freq`` (stream -> int64 live tokens per
        feature) and ``live_tokens``."""
        idx = self.index
        with idx._lock:
            streams = sorted({h.stream for h in idx.heads})
            return {"doc_freq": {n: np.array(idx.index.doc_freq(n)) for n in streams},
                    "live_tokens": int(idx.index.n_live_tokens)}

    def candidates(self, filters: Mapping[str, Any] | None, doc_ids: Sequence[str] | None,
                   queries: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
        """Round 1: ``rows`` (int64, the live rows passing ``filters`` and ``doc_ids``, in
        order) and ``partials``, this shard's softmax normaliser share for the encoded
        ``queries`` (None without queries or rows)."""
        idx = self.index
        with idx._lock:
            if len(idx) == 0:
                return {"rows": np.zeros(0, np.int64), "partials": None}
            rows = idx._rows(filters, doc_ids)
            partials = None
            if queries is not None and rows:
                partials = token_partials(idx.index, rows, dict(queries), idx.saes, idx.heads)
            return {"rows": np.asarray(rows, np.int64), "partials": partials}

    def unit_scores(self, rows: Sequence[int], *,
                    queries: Mapping[str, torch.Tensor] | None = None,
                    normaliser: Normaliser | None = None,
                    features: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                    scorer: str | None = None, smooth_window: int | None = None,
                    bm25_query: str | None = None, bm25_idf: Mapping[str, float] | None = None,
                    avgdl: float | None = None) -> dict[str, Any]:
        """Round 2: over the units of ``rows`` (in order), ``s3`` [U] (None without
        ``queries``) under the global ``normaliser`` / ``features``, ``bm25`` [U] (None
        without ``bm25_query``) under the global ``bm25_idf`` and ``avgdl``, and per row
        ``n_units`` and ``min_tokens`` (its smallest unit's tokens)."""
        idx = self.index
        rows = [int(r) for r in rows]
        with idx._lock:
            units = idx.units.of_rows(rows)
            s3 = None
            if queries is not None:
                s3 = idx._s3_units(dict(queries), rows, normaliser=normaliser,
                                   features=features, scorer=scorer, window=smooth_window)[1]
            bm = None
            if bm25_query is not None:
                bm = idx.units.bm25_scores(bm25_query, idf=bm25_idf, avgdl=avgdl)[units]
            ranges = [idx.units.doc_range(r) for r in rows]
            return {"s3": s3, "bm25": bm,
                    "n_units": np.fromiter((b - a for a, b in ranges), np.int64, len(rows)),
                    "min_tokens": unit_min_tokens(idx.units, rows)}

    def grow(self, rows: Sequence[int], scores: Sequence[np.ndarray], *, span_tokens: int,
             cross_paragraphs: bool = False) -> list[Grown]:
        """Round 3: grow the spans of each document row from its units' fused ``scores``:
        per row ``(spans, start_chars, token_counts)``
        (:func:`~s3_retriever.retrieval.packing.grow_document`)."""
        idx = self.index
        with idx._lock:
            docs = idx.index.docs
            return [grow_document(docs[int(r)], idx.units, int(r), np.asarray(sc, np.float64),
                                  span_tokens=span_tokens, cross_paragraphs=cross_paragraphs)
                    for r, sc in zip(rows, scores)]

    def build(self, rows: Sequence[int], grown: Sequence[list[tuple[int, int, float]]],
              s3: Sequence[np.ndarray] | None = None,
              bm25: Sequence[np.ndarray] | None = None) -> list[list[Span]]:
        """Round 4: the :class:`Span` objects of the ``grown`` spans chosen in each row,
        reporting the units' ``s3`` / ``bm25`` scores (per row, None: not reported)."""
        idx = self.index
        with idx._lock:
            docs = idx.index.docs
            return [build_spans(docs[int(r)], idx.units, int(r), list(g),
                                None if s3 is None else s3[i],
                                None if bm25 is None else bm25[i])
                    for i, (r, g) in enumerate(zip(rows, grown))]


class ShardHandle(Protocol):
    """How the driver reaches a shard: :class:`LocalShard` in process, ``RayShard``
    (:mod:`s3_retriever.distributed.serve`) on a cluster."""

    def submit(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` of the shard's :class:`ShardServer`; returns an object whose
        ``result()`` waits for (and returns, or raises) the outcome."""
        ...


class LocalShard:
    """A :class:`ShardHandle` for a :class:`ShardServer` in this process: each call runs at
    once and returns a completed future.

    ``copy``: send arguments and results through pickle (in memory), as a remote actor
    would, so tests catch anything that would not travel.

    Example:
        >>> shard = LocalShard(ShardServer(index))  # doctest: +SKIP
        >>> shard.submit("info").result()["documents"]  # doctest: +SKIP
        3
    """

    def __init__(self, server: ShardServer, *, copy: bool = False) -> None:
        self.server = server
        self.copy = copy

    def submit(self, method: str, *args: Any, **kwargs: Any) -> Future:
        """Run ``server.method(*args, **kwargs)`` now; the future holds its result or error."""
        if method not in SHARD_METHODS:
            raise InvalidInputError(f"unknown shard method {method!r}; allowed: "
                                    f"{', '.join(SHARD_METHODS)}")
        future: Future = Future()
        try:
            if self.copy:
                args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
            out = getattr(self.server, method)(*args, **kwargs)
            future.set_result(pickle.loads(pickle.dumps(out)) if self.copy else out)
        except Exception as e:  # delivered by result(), as a remote call would
            future.set_exception(e)
        return future

    def __repr__(self) -> str:
        return f"LocalShard({self.server.index!r})"


class ShardedIndex:
    """A read-only index over shards, searched exactly as one index holding all their
    documents in shard order (see the module docstring for the protocol).

    Args:
        lm: the model that encodes questions (and answers): the shards' model.
        shards: one handle per shard, in document order.
        names: the shards' names (default ``shard-00000``, ...).

    Raises:
        InvalidInputError: no shards.
        IndexFormatError: shards of another model, or with different heads or settings.

    Example:
        >>> index = ShardedIndex.load("wiki-sharded")  # doctest: +SKIP
        >>> [s.doc_id for s in index.search("Who composed the Brandenburg Concertos?", k=2)]
        ... # doctest: +SKIP
        ['bach', 'bach']
    """

    def __init__(self, lm: LoadedModel, shards: Sequence[ShardHandle], *,
                 names: Sequence[str] | None = None) -> None:
        shards = list(shards)
        if not shards:
            raise InvalidInputError("a ShardedIndex needs at least one shard")
        names = [shard_name(i) for i in range(len(shards))] if names is None else list(names)
        if len(names) != len(shards):
            raise InvalidInputError(f"{len(names)} names for {len(shards)} shards")
        self.lm = lm
        self._handles = shards
        self._names = names
        infos = self._all("info")
        first = infos[0]
        for name, info in zip(names, infos):
            if info["model"]["fingerprint"] != lm.fingerprint:
                raise IndexFormatError(
                    f"shard {name}: built with model {info['model']['id']!r} "
                    f"({info['model']['fingerprint']}) but the driver's model {lm.model_id!r} "
                    f"is {lm.fingerprint}")
            if info["heads"] != first["heads"]:
                raise IndexFormatError(f"shard {name}: its scoring heads differ from shard "
                                       f"{names[0]}'s")
            differ = [k for k in _SHARED_SETTINGS
                      if info["settings"].get(k) != first["settings"].get(k)]
            if differ:
                raise IndexFormatError(f"shard {name}: settings {differ} differ from shard "
                                       f"{names[0]}'s")
        #: search settings (a copy of the first shard's); the search-time ones (mode,
        #: fusion, fusion_weight, rrf_k, span_tokens, cross_paragraphs, scorer,
        #: smooth_window, max_df_fraction) may be changed here as on an S3Index
        self.settings = S3Settings.from_dict(first["settings"])
        self._hookpoints: list[str] = list(first["hookpoints"])
        self._documents = [int(i["documents"]) for i in infos]
        self._tokens = sum(int(i["tokens"]) for i in infos)
        self._bytes = sum(int(i["index_bytes"]) for i in infos)
        self._lock = threading.Lock()
        self._features: dict[str, Any] | None = None
        # global BM25 statistics: the shards' term frequencies summed, terms kept in order
        # of first appearance over the shards in order (what one index would see)
        doc_freq: dict[str, int] = {}
        units = length = 0
        stats = self._all("bm25_stats")
        for st in stats:
            for term, df in zip(st["terms"], np.asarray(st["df"]).tolist()):
                doc_freq[term] = doc_freq.get(term, 0) + df
            units += int(st["units"])
            length += int(st["length"])
        self._idf = okapi_idf(doc_freq, units, epsilon=stats[0]["epsilon"]) if length else {}
        self._avgdl = length / units if length else None

    # ----------------------------------------------------------------- loading
    @classmethod
    def load(cls, folder: str | os.PathLike, *, model: str | LoadedModel | None = None,
             device: str | None = None, dtype: str | None = None,
             mmap: bool = True) -> ShardedIndex:
        """Open a sharded index folder (``shards.json`` and one saved index per shard, see
        :mod:`s3_retriever.distributed.manifest`) in this process, sharing one model.

        Raises:
            IndexNotFoundError: no ``shards.json`` in ``folder``.
            IndexFormatError: a bad manifest, a missing or damaged shard, another model, or
                document / token counts that differ from the manifest's.
        """
        folder = Path(folder)
        manifest = read_manifest(folder)
        mid = manifest["model"].get("id")
        mfp = manifest["model"].get("fingerprint")
        lm = model if isinstance(model, LoadedModel) else load_model(model or mid, device,
                                                                      dtype)
        if mfp is not None and lm.fingerprint != mfp:
            raise IndexFormatError(f"{folder}: the shards were built with model {mid!r} "
                                   f"({mfp}) but the loaded model {lm.model_id!r} is "
                                   f"{lm.fingerprint}")
        handles = [LocalShard(ShardServer.from_folder(folder / name, model=lm, mmap=mmap))
                   for name in manifest["shards"]]
        out = cls(lm, handles, names=manifest["shards"])
        if len(out) != manifest["documents"] or out._tokens != manifest["tokens"]:
            raise IndexFormatError(
                f"{folder}: the shards hold {len(out)} documents and {out._tokens} tokens, "
                f"the manifest says {manifest['documents']} and {manifest['tokens']}")
        return out

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """Whether ``path`` holds a sharded index (``shards.json``; not verified)."""
        return is_sharded_index(path)

    # ----------------------------------------------------------------- read-only views
    @property
    def shards(self) -> list[str]:
        """The shards' names, in document order."""
        return list(self._names)

    def __len__(self) -> int:
        return sum(self._documents)

    def stats(self) -> dict[str, Any]:
        """Sizes as :meth:`S3Index.stats <s3_retriever.S3Index.stats>`, plus ``shards``
        and ``documents_per_shard``."""
        n = self._tokens
        return {"documents": len(self), "tokens": n, "index_bytes": self._bytes,
                "index_bytes_per_token": self._bytes / n if n else math.nan,
                "kv_bytes_per_token": self.lm.kv_bytes_per_token(2),
                "shards": len(self._handles), "documents_per_shard": list(self._documents)}

    def __repr__(self) -> str:
        return (f"ShardedIndex(model={self.lm.model_id!r}, shards={len(self._handles)}, "
                f"documents={len(self)}, tokens={self._tokens})")

    def _read_only(self, what: str) -> InvalidInputError:
        return InvalidInputError(
            f"a ShardedIndex is read-only ({what}): change a shard with S3Index.load(shard "
            f"folder), then add_texts / delete and save it, or build the shards again "
            f"(split_index + save_sharded, or s3_retriever.distributed.scan), and load the "
            f"ShardedIndex again")

    def add_texts(self, *args: Any, **kwargs: Any) -> list[str]:
        """Not supported: a sharded index is read-only (the error says what to do)."""
        raise self._read_only("add_texts")

    def add_documents(self, *args: Any, **kwargs: Any) -> list[str]:
        """Not supported: a sharded index is read-only (the error says what to do)."""
        raise self._read_only("add_documents")

    def delete(self, *args: Any, **kwargs: Any) -> None:
        """Not supported: a sharded index is read-only (the error says what to do)."""
        raise self._read_only("delete")

    def save(self, *args: Any, **kwargs: Any) -> Path:
        """Not supported: a sharded index is saved shard by shard (:func:`save_sharded`)."""
        raise self._read_only("save")

    # ----------------------------------------------------------------- search
    def _all(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """``method`` on every shard: submitted to all, then collected in order."""
        futures = [h.submit(method, *args, **kwargs) for h in self._handles]
        return [f.result() for f in futures]

    def _feature_stats(self) -> dict[str, Any]:
        """The co-activation statistics summed over the shards (gathered once)."""
        with self._lock:
            if self._features is None:
                parts = self._all("feature_stats")
                df = {n: sum(np.asarray(p["doc_freq"][n], np.int64) for p in parts)
                      for n in parts[0]["doc_freq"]}
                self._features = {"doc_freq": df,
                                  "live_tokens": sum(int(p["live_tokens"]) for p in parts)}
            return self._features

    def search(self, query: str, k: int | None = DEFAULT_K, budget_tokens: int | None = None,
               mode: str | None = None, filters: Mapping[str, Any] | None = None,
               doc_ids: Collection[str] | None = None, *, fusion: str | None = None,
               fusion_weight: float | None = None, rrf_k: int | None = None) -> list[Span]:
        """Evidence spans for ``query``, best first: exactly :meth:`S3Index.search
        <s3_retriever.S3Index.search>` (same arguments, errors and result) over one index
        holding every shard's documents in shard order."""
        return self._search(query, k, budget_tokens, mode, filters, doc_ids, fusion=fusion,
                            fusion_weight=fusion_weight, rrf_k=rrf_k)[0]

    def _search(self, query: str, k: int | None, budget_tokens: int | None, mode: str | None,
                filters: Mapping[str, Any] | None, doc_ids: Collection[str] | None, *,
                fusion: str | None, fusion_weight: float | None, rrf_k: int | None
                ) -> tuple[list[Span], dict[str, int]]:
        """(spans, their documents' global positions)."""
        mode, fusion, fusion_weight, rrf_k = self.settings.search_options(
            query, k, budget_tokens, mode, fusion, fusion_weight, rrf_k)
        if mode == "rerank":  # the hybrid's pool, re-read by the driver's model
            pool_tokens = rerank_pool_for(self.settings.rerank_pool_tokens, budget_tokens)
            pool, positions = self._search(query, None, pool_tokens, "hybrid", filters,
                                           doc_ids, fusion=fusion,
                                           fusion_weight=fusion_weight, rrf_k=rrf_k)
            return rerank_spans(reranker_for(self.lm, self.settings), query, pool, k=k,
                                budget_tokens=budget_tokens, doc_order=positions), positions
        if len(self) == 0:
            raise EmptyIndexError("the index is empty: add documents before searching")
        filter_rules.check(filters)
        ids = None
        if doc_ids is not None:
            if isinstance(doc_ids, str):
                raise InvalidInputError("doc_ids must be a collection of ids, not a single "
                                        "string: wrap it, [doc_id]")
            ids = sorted(set(validate.id_list(doc_ids, "doc_ids")))
        scorer = self.settings.scorer
        queries, problem = None, None
        if mode != "bm25":
            try:  # raised only if some document is a candidate (as one index does)
                queries = question_queries(self.lm, query, self._hookpoints)
            except InvalidInputError as e:
                problem = e
        # round 1: candidates and the softmax normaliser's shares
        first = self._all("candidates", filters, ids,
                          queries if scorer == "attention" else None)
        rows = [np.asarray(c["rows"], np.int64) for c in first]
        if not any(len(r) for r in rows):
            return [], {}
        if problem is not None:
            raise problem
        kwargs: dict[str, Any] = {}
        if queries is not None:
            kwargs.update(queries=queries, scorer=scorer,
                          smooth_window=self.settings.smooth_window)
            if scorer == "attention":
                kwargs["normaliser"] = combine_normalisers(
                    [c["partials"] for c, r in zip(first, rows) if len(r)])
            else:
                fs = self._feature_stats()
                kwargs["features"] = {
                    n: _feature_idf(df, fs["live_tokens"], self.settings.max_df_fraction)
                    for n, df in fs["doc_freq"].items()}
        if mode != "s3":
            kwargs.update(bm25_query=query, avgdl=self._avgdl,
                          bm25_idf={t: self._idf.get(t, 0.0) for t in set(tokenize(query))})
        # round 2: unit scores on the shards that hold candidates
        live = [i for i, r in enumerate(rows) if len(r)]
        futures = [self._handles[i].submit("unit_scores", rows[i].tolist(), **kwargs)
                   for i in live]
        second = [f.result() for f in futures]
        n_units = np.concatenate([s["n_units"] for s in second]).astype(np.int64)
        min_tokens = np.concatenate([s["min_tokens"] for s in second]).astype(np.int64)
        total = int(n_units.sum())
        s3 = (np.concatenate([s["s3"] for s in second]).astype(np.float64) if mode != "bm25"
              else np.zeros(total))
        bm = (np.concatenate([s["bm25"] for s in second]).astype(np.float64) if mode != "s3"
              else np.zeros(total))
        ranked = (fuse(s3, bm, method=fusion, weight=fusion_weight, rrf_k=rrf_k)
                  if mode == "hybrid" else s3 if mode == "s3" else bm)
        # global position j -> (shard, its row); positions run in shard order, then row
        shard_of = np.concatenate([np.full(len(rows[i]), i) for i in live])
        row_of = np.concatenate([rows[i] for i in live])
        offsets = np.cumsum(n_units) - n_units
        span_tokens = span_tokens_for(self.settings.span_tokens, budget_tokens)
        positions: dict[str, int] = {}

        def units_of(j: int, scores: np.ndarray) -> np.ndarray:
            return scores[offsets[j]:offsets[j] + n_units[j]]

        def by_shard(js: list[int]) -> dict[int, list[int]]:
            out: dict[int, list[int]] = {}
            for j in js:
                out.setdefault(int(shard_of[j]), []).append(j)
            return out

        def grow(js: list[int]) -> list[Grown]:
            groups = by_shard(js)
            futures = {s: self._handles[s].submit(
                "grow", [int(row_of[j]) for j in mine], [units_of(j, ranked) for j in mine],
                span_tokens=span_tokens, cross_paragraphs=self.settings.cross_paragraphs)
                for s, mine in groups.items()}
            got: dict[int, Grown] = {}
            for s, mine in groups.items():
                got.update(zip(mine, futures[s].result()))
            return [got[j] for j in js]

        def build(picks: list[tuple[int, list[tuple[int, int, float]]]]) -> list[Span]:
            chosen = dict(picks)
            groups = by_shard([j for j, _ in picks])
            futures = {s: self._handles[s].submit(
                "build", [int(row_of[j]) for j in mine], [chosen[j] for j in mine],
                None if mode == "bm25" else [units_of(j, s3) for j in mine],
                None if mode == "s3" else [units_of(j, bm) for j in mine])
                for s, mine in groups.items()}
            got: dict[int, list[Span]] = {}
            for s, mine in groups.items():
                got.update(zip(mine, futures[s].result()))
            out: list[Span] = []
            for j, _ in picks:
                for span in got[j]:
                    positions.setdefault(span.doc_id, j)
                out += got[j]
            return out

        spans = grow_and_pack(ranked, n_units, min_tokens, grow, build, k=k,
                              budget_tokens=budget_tokens)
        return spans, positions

    def answer(self, question: str, budget_tokens: int = ANSWER_BUDGET_TOKENS, *,
               k: int | None = None, mode: str | None = None,
               filters: Mapping[str, Any] | None = None,
               doc_ids: Collection[str] | None = None,
               max_new_tokens: int = MAX_NEW_TOKENS) -> Answer:
        """Retrieve spans within ``budget_tokens`` and answer from them, as
        :meth:`S3Index.answer <s3_retriever.S3Index.answer>` (KV-free generation on the
        driver's model; spans laid out in global document order)."""
        validate.positive_int(max_new_tokens, "max_new_tokens")
        mode = mode or answer_mode_for(self.lm, self.settings)
        spans, positions = self._search(question, k, budget_tokens, mode, filters, doc_ids,
                                        fusion=None, fusion_weight=None, rrf_k=None)
        return answer_from_spans(self.lm, question, spans, max_new_tokens=max_new_tokens,
                                 doc_order=positions, lock=self.lm.lock)


# --------------------------------------------------------------------- building shards
def split_index(index: S3Index, n_shards: int | None = None, *,
                sizes: Sequence[int] | None = None) -> list[S3Index]:
    """Split ``index``'s live documents, in order, into ``n_shards`` consecutive shards of
    near-equal document counts (or of the given ``sizes``), sharing its model, SAEs and
    settings and copying its codes: searching them as a :class:`ShardedIndex` gives what
    searching ``index`` gives.

    Raises:
        InvalidInputError: ``n_shards`` not a positive int, or ``sizes`` that do not add up
            to the live documents.

    Example:
        >>> [len(s) for s in split_index(index, 2)]  # doctest: +SKIP
        [2, 1]
    """
    with index._lock:
        docs = index.index.docs
        live = [r for r, rec in enumerate(docs) if not rec.deleted]
        if sizes is None:
            n = validate.positive_int(n_shards, "n_shards")
            sizes = [len(p) for p in np.array_split(np.arange(len(live)), n)]
        else:
            sizes = [int(s) for s in sizes]
            if any(s < 0 for s in sizes) or sum(sizes) != len(live) or not sizes:
                raise InvalidInputError(f"sizes {sizes} must be >= 0 and add up to the "
                                        f"{len(live)} live documents")
        heads = [h.to_entry() for h in index.heads]
        streams = list(index.scanner.streams)
        bias_names = list(index.index.bias_columns)
        out, at = [], 0
        for size in sizes:
            shard = S3Index(index.lm, index.saes, dataclasses.replace(index.settings),
                            heads=heads)
            rows = live[at:at + size]
            at += size
            if rows:
                shard.index.add_segment(*_segment_of(index, rows, streams, bias_names))
                shard._add_units(0)
            out.append(shard)
        return out


def _segment_of(index: S3Index, rows: list[int], streams: list[str], bias_names: list[str]
                ) -> tuple[Segment, list[Any]]:
    """One segment holding the codes of document ``rows`` of ``index``, and their records."""
    store = index.index
    ids: dict[str, list[np.ndarray]] = {n: [] for n in streams}
    acts: dict[str, list[np.ndarray]] = {n: [] for n in streams}
    bias: dict[str, list[np.ndarray]] = {n: [] for n in bias_names}
    token_char, token_doc, records = [], [], []
    at = 0
    for i, r in enumerate(rows):
        rec = store.docs[r]
        seg = store.segments[rec.segment]
        s, e = rec.token_start, rec.token_end
        for n in streams:
            ids[n].append(seg.codes[n].ids[s:e])
            acts[n].append(seg.codes[n].acts[s:e])
        for n in bias_names:
            bias[n].append(seg.bias[n][s:e])
        token_char.append(seg.token_char[s:e])
        token_doc.append(np.full(e - s, i, np.int32))
        records.append(dataclasses.replace(rec, segment=-1, token_start=at,
                                           token_end=at + e - s))
        at += e - s
    codes = {n: Codes(np.concatenate(ids[n]), np.concatenate(acts[n]),
                      store.num_latents[n], check=False) for n in streams}
    segment = Segment(codes, np.concatenate(token_doc), np.concatenate(token_char),
                      {n: np.concatenate(b) for n, b in bias.items()})
    return segment, records


def save_sharded(shards: Sequence[S3Index], folder: str | os.PathLike, *,
                 overwrite: bool = False) -> Path:
    """Save ``shards`` (in document order) as a sharded index in ``folder``: each with
    :meth:`S3Index.save <s3_retriever.S3Index.save>` into ``shard-00000``, ... and then
    ``shards.json`` (written last, atomically); returns ``folder``. Open it with
    :meth:`ShardedIndex.load`.

    Each shard is replaced atomically, the set of shards is not: a reader that opens the
    folder during an overwrite may find new and old shards together.

    Raises:
        InvalidInputError: no shards, or shards of different models.
        OutputExistsError: ``folder`` is a file or a folder of other files, or already
            holds a sharded index and ``overwrite`` is False.
    """
    shards = list(shards)
    if not shards:
        raise InvalidInputError("save_sharded needs at least one shard")
    models = {(s.lm.model_id, s.lm.fingerprint) for s in shards}
    if len(models) != 1:
        raise InvalidInputError(f"the shards use different models: {sorted(models)}")
    folder = Path(folder)
    if folder.exists():
        if not folder.is_dir():
            raise OutputExistsError(f"{folder} is a file")
        if is_sharded_index(folder):
            if not overwrite:
                raise OutputExistsError(f"{folder} already holds a sharded index; pass "
                                        "overwrite=True to replace it")
        elif any(folder.iterdir()):
            raise OutputExistsError(f"{folder} is a folder of other files; save into a new "
                                    "or empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    names = [shard_name(i) for i in range(len(shards))]
    for name, shard in zip(names, shards):
        shard.save(folder / name, overwrite=overwrite)
    (mid, mfp), = models
    write_manifest(folder, names, documents=sum(len(s) for s in shards),
                   tokens=sum(int(s.index.n_tokens) for s in shards),
                   model={"id": mid, "fingerprint": mfp})
    return folder
