"""``S3Index``: scan documents once, keep sparse key codes, retrieve evidence spans, answer.
Orchestration only: each step lives in the module named after it.

Example:
    >>> from s3_retriever import S3Index
    >>> index = S3Index.from_model("smollm2-135m")
    >>> index.add_texts(["Marie Curie was born in Warsaw. She won two Nobel Prizes.",
    ...                  "The Amazon river flows through Brazil."], ids=["curie", "amazon"],
    ...                 show_progress=False)
    ['curie', 'amazon']
    >>> index.search("Where was Marie Curie born?", k=1)[0].doc_id
    'curie'
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s3_retriever import validate
from s3_retriever.config import (
    ANSWER_BUDGET_TOKENS,
    DEFAULT_K,
    DEFAULT_MODEL,
    MAX_NEW_TOKENS,
    S3Settings,
    chunk_tokens_for,
    rerank_pool_for,
    span_tokens_for,
)
from s3_retriever.errors import (
    EmptyIndexError,
    IndexFormatError,
    InvalidInputError,
    SAEError,
    UnknownDocumentError,
)
from s3_retriever.generate import Answer, answer_from_spans
from s3_retriever.index import persistence
from s3_retriever.index.codes import Codes
from s3_retriever.index.documents import DocRecord
from s3_retriever.index.segments import InvertedIndex, Segment
from s3_retriever.model.loading import LoadedModel, load_model
from s3_retriever.retrieval import filters as filter_rules
from s3_retriever.retrieval.fusion import fuse
from s3_retriever.retrieval.packing import best_spans
from s3_retriever.retrieval.rerank import answer_mode_for, rerank_spans, reranker_for
from s3_retriever.retrieval.scan import Scanner, question_queries
from s3_retriever.retrieval.scoring import Normaliser, resolve_heads, token_scores
from s3_retriever.retrieval.spans import Span
from s3_retriever.retrieval.units import SentenceUnits
from s3_retriever.sae.coder import TopKSAE
from s3_retriever.sae.io import load_saes, read_heads, shipped_sae_dir
from s3_retriever.text.sentences import split_sentences

__all__ = ["Answer", "EmptyIndexError", "S3Index", "S3Settings", "Span"]


class S3Index:
    """A retriever over documents scanned once by a causal LM (see the module docstring).

    Build it with :meth:`from_model` (or :meth:`load`), add text with :meth:`add_texts`,
    then :meth:`search` for evidence spans or :meth:`answer` for KV-free generation.
    Thread-safe: searches may run concurrently with each other and with additions.
    """

    def __init__(self, lm: LoadedModel, saes: Mapping[str, TopKSAE],
                 settings: S3Settings | None = None, *, heads: list[list[Any]] | None = None):
        if not saes:
            raise SAEError("an S3Index needs at least one SAE")
        self.lm = lm
        self.saes = dict(saes)
        # a copy: the caller's settings object is never changed
        self.settings = dataclasses.replace(settings or S3Settings()).validate()
        if self.settings.chunk_tokens is None:
            self.settings.chunk_tokens = chunk_tokens_for(lm.device.type)
        self.heads = resolve_heads(self.settings.heads or heads, self.saes, lm.spec,
                                   query_mean=self.settings.query_mean)
        kv_heads: dict[str, list[int]] = {}
        bias_vectors: dict[str, list[tuple[float, ...]]] = {}
        for hw in self.heads:
            if hw.kv not in kv_heads.setdefault(hw.hookpoint, []):
                kv_heads[hw.hookpoint].append(hw.kv)
            if hw.column is not None:
                bias_vectors.setdefault(hw.stream, []).append(hw.query_mean)
        self._lock = threading.RLock()
        self.scanner = Scanner(lm, {hp: self.saes[hp] for hp in kv_heads}, kv_heads=kv_heads,
                               chunk_tokens=self.settings.chunk_tokens,
                               context_tokens=self.settings.context_tokens, lock=lm.lock,
                               bias_vectors={nm: torch.tensor(v)
                                             for nm, v in bias_vectors.items()})
        self.index = InvertedIndex(
            list(self.scanner.streams),
            {nm: self.saes[hp].cfg.num_latents for nm, (hp, _) in self.scanner.streams.items()},
            {nm: len(v) for nm, v in bias_vectors.items()})
        self.units = SentenceUnits()

    @classmethod
    def from_model(cls, model: str | LoadedModel = DEFAULT_MODEL, *,
                   saes: str | os.PathLike | Mapping[str, TopKSAE] | None = None,
                   device: str | None = None, dtype: str | None = None,
                   **settings: Any) -> S3Index:
        """An empty index for ``model`` with its SAEs (the shipped ones by default).

        Args:
            model: a name/path for :func:`~s3_retriever.load_model` or a loaded model.
            saes: a folder of SAEs (one subfolder per hookpoint, and a ``heads.json``) or
                a mapping; default: the SAEs shipped for the model.
            **settings: any :class:`~s3_retriever.config.S3Settings` field.
        """
        settings_ = S3Settings.from_dict(settings)
        lm = model if isinstance(model, LoadedModel) else load_model(model, device, dtype)
        heads = None
        if saes is None:
            saes = shipped_sae_dir(lm.model_id)
            if saes is None:
                raise SAEError(
                    f"no SAEs are shipped for model {lm.model_id!r}; train them with "
                    f"`s3-retriever train-sae --model {lm.model_id} --out DIR` and pass saes=DIR")
        if not isinstance(saes, Mapping):
            heads = read_heads(saes)
            saes = load_saes(saes, device="cpu")
        return cls(lm, saes, settings_, heads=heads)

    # ----------------------------------------------------------------- adding, deleting
    def __len__(self) -> int:
        return len(self.index)

    def add_texts(self, texts: Iterable[str], metadatas: Sequence[Mapping[str, Any]] | None = None,
                  ids: Sequence[str] | None = None, *, show_progress: bool = True) -> list[str]:
        """Scan and index ``texts``; returns their ids (new uuid4 hex ids when not given).

        Everything is validated before the scan: a non-str or empty text, a duplicate id or
        a metadata that is not JSON-serialisable raises and leaves the index unchanged.
        """
        if isinstance(texts, (str, bytes)) or not isinstance(texts, Iterable):
            raise InvalidInputError("add_texts takes a list of strings, not "
                                    f"{type(texts).__name__}; wrap a single text: [text]")
        texts = [validate.text(t, f"text {i}") for i, t in enumerate(texts)]
        if not texts:
            return []
        n = len(texts)
        metas = [validate.metadata(m, f"metadatas[{j}]")
                 for j, m in enumerate(validate.one_per(metadatas, n, "metadatas", "dicts"))]
        ids = ([validate.doc_id(i, f"ids[{j}]")
                for j, i in enumerate(validate.one_per(ids, n, "ids", "str"))]
               if ids is not None else [uuid.uuid4().hex for _ in texts])
        dup = sorted({i for i in ids if ids.count(i) > 1})
        with self._lock:
            dup += [i for i in ids if i in self.index]
        if dup:
            raise InvalidInputError(f"duplicate document ids: {sorted(set(dup))}; delete the "
                                    "old document first, or give new ids")

        scanned = self.scanner.scan(texts, show_progress=show_progress)
        offsets = np.cumsum([0] + [d.n_tokens for d in scanned])
        token_char = (np.concatenate([d.token_char for d in scanned]) if offsets[-1]
                      else np.zeros((0, 2), np.int32))
        codes = {nm: Codes.from_scan(np.concatenate([d.ids[nm] for d in scanned]),
                                     np.concatenate([d.acts[nm] for d in scanned]),
                                     self.saes[hp].cfg.num_latents)
                 for nm, (hp, _) in self.scanner.streams.items()}
        segment = Segment(codes, np.repeat(np.arange(n, dtype=np.int32), np.diff(offsets)),
                          token_char, {nm: np.concatenate([d.bias[nm] for d in scanned])
                                       for nm in self.scanner.bias_vectors})
        docs = [DocRecord(doc_id=i, text=t, metadata=m, token_start=int(offsets[j]),
                          token_end=int(offsets[j + 1]), sentences=split_sentences(t))
                for j, (i, t, m) in enumerate(zip(ids, texts, metas))]
        with self._lock:
            self.index.add_segment(segment, docs)
            self._add_units(len(self.index.docs) - n)
        return ids

    def add_documents(self, documents: Iterable[Any], *, show_progress: bool = True) -> list[str]:
        """Add documents given as objects with ``page_content``/``text``, ``metadata`` and an
        optional ``id``/``id_``/``doc_id`` (LangChain and LlamaIndex documents work), or as
        dicts with the same keys."""
        if isinstance(documents, (str, bytes, Mapping)) or not isinstance(documents, Iterable):
            raise InvalidInputError("add_documents takes a list of documents, not "
                                    f"{type(documents).__name__}")
        texts, metas, ids = [], [], []
        for d in documents:
            get = d.get if isinstance(d, Mapping) else lambda k, _d=d: getattr(_d, k, None)
            text = get("page_content")
            texts.append(get("text") if text is None else text)
            metas.append(get("metadata"))  # checked by add_texts
            ids.append(get("id") or get("id_") or get("doc_id") or uuid.uuid4().hex)
        return self.add_texts(texts, metas, ids, show_progress=show_progress)

    def delete(self, ids: Iterable[str]) -> None:
        """Remove documents by id (tombstones). Unknown ids raise
        :class:`~s3_retriever.errors.UnknownDocumentError` (a ``KeyError``); nothing is deleted.

        The BM25 statistics are rebuilt without the deleted documents, so no score depends
        on deleted text.
        """
        ids = validate.id_list(ids, "ids")
        with self._lock:
            unknown = [i for i in dict.fromkeys(ids) if i not in self.index]
            if unknown:
                raise UnknownDocumentError(f"unknown document ids: {unknown[:10]}; nothing "
                                           "deleted")
            self.index.delete(ids)
            self.units = SentenceUnits()
            self._add_units(0)

    def get_document(self, doc_id: str) -> DocRecord:
        """The stored record (text, metadata) of a live document."""
        validate.doc_id(doc_id, "doc_id")
        with self._lock:
            if doc_id not in self.index:
                raise UnknownDocumentError(f"no document {doc_id!r}")
            return self.index.get(doc_id)

    def _add_units(self, first_row: int) -> None:
        docs = self.index.docs[first_row:]
        segments = self.index.segments
        self.units.add(docs, [segments[d.segment].token_char[d.token_start:d.token_end]
                              for d in docs])

    # ----------------------------------------------------------------- search
    def _rows(self, filters: Mapping[str, Any] | None,
              doc_ids: Collection[str] | None) -> list[int]:
        """The live document rows a search ranks: ``doc_ids`` (if given) that pass
        ``filters``."""
        filters = filter_rules.check(filters)
        docs = self.index.docs
        if doc_ids is None:
            rows = [r for r, rec in enumerate(docs) if not rec.deleted]
        else:
            if isinstance(doc_ids, str):
                raise InvalidInputError("doc_ids must be a collection of ids, not a single "
                                        "string: wrap it, [doc_id]")
            wanted = set(validate.id_list(doc_ids, "doc_ids"))
            rows = sorted(self.index.row_of(d) for d in wanted if d in self.index)
        return [r for r in rows if not filters or filter_rules.matches(docs[r].metadata, filters)]

    def _s3_units(self, query: str | Mapping[str, torch.Tensor], rows: list[int],
                  per_head: bool = False, *, normaliser: Normaliser | None = None,
                  features: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                  scorer: str | None = None, window: int | None = None
                  ) -> tuple[np.ndarray | None, np.ndarray]:
        """(per-head unit scores [H, U] or None, the weighted S3 unit scores [U]).

        ``query``: the question, or its queries already encoded
        (:func:`~s3_retriever.retrieval.scan.question_queries`). A shard of a sharded index
        passes those with the whole index's ``normaliser`` / ``features`` statistics and
        the driver's ``scorer`` and smoothing ``window`` (default: this index's settings).
        """
        if not rows:
            return (np.zeros((len(self.heads), 0)) if per_head else None), np.zeros(0)
        queries = (question_queries(self.lm, query, self._hookpoints()) if isinstance(query, str)
                   else dict(query))
        scores = token_scores(self.index, rows, queries, self.saes, self.heads,
                              scorer=scorer or self.settings.scorer,
                              max_df_fraction=self.settings.max_df_fraction, per_head=per_head,
                              normaliser=normaliser, features=features)
        window = self.settings.smooth_window if window is None else window
        if not per_head:
            return None, self.units.s3_scores(rows, scores, window)
        w = np.asarray([h.weight for h in self.heads])
        head = np.stack([self.units.s3_scores(rows, row, window) for row in scores])
        return head, self.units.s3_scores(rows, w @ scores, window)

    def _hookpoints(self) -> list[str]:
        """The hookpoints whose queries a search encodes."""
        return sorted({h.hookpoint for h in self.heads})

    def search(self, query: str, k: int | None = DEFAULT_K, budget_tokens: int | None = None,
               mode: str | None = None, filters: Mapping[str, Any] | None = None,
               doc_ids: Collection[str] | None = None, *, fusion: str | None = None,
               fusion_weight: float | None = None, rrf_k: int | None = None) -> list[Span]:
        """Evidence spans for ``query``, best first.

        Args:
            query: the question.
            k: how many spans (None with a budget: as many as fit).
            budget_tokens: fill this many tokens instead of (or as well as) stopping at k.
            mode: ``"hybrid"`` (S3 fused with BM25), ``"s3"`` or ``"bm25"``; default from
                the settings.
            filters: metadata conditions (:mod:`s3_retriever.retrieval.filters`):
                ``{"key": value}``, ``{"key": [v1, v2]}`` or
                ``{"key": {"$gt": 2000}}``, nested ``$and`` / ``$or`` / ``$not`` (the whole
                language is in ``docs/filters.md``); applied before ranking.
            doc_ids: restrict the search to these documents (unknown ids are ignored).
            fusion, fusion_weight, rrf_k: per-call overrides of the hybrid fusion settings.

        Returns:
            :class:`~s3_retriever.retrieval.spans.Span` objects whose ``text`` is exactly
            ``document[start_char:end_char]``.
        """
        mode, fusion, fusion_weight, rrf_k = self.settings.search_options(
            query, k, budget_tokens, mode, fusion, fusion_weight, rrf_k)
        with self._lock:
            if len(self.index) == 0:
                raise EmptyIndexError("the index is empty: add documents before searching")
            rows = self._rows(filters, doc_ids)
            if not rows:
                return []
            if mode != "rerank":
                return self._spans(query, rows, mode, k, budget_tokens, fusion, fusion_weight,
                                   rrf_k)
            pool = self._spans(query, rows, "hybrid", None,
                               rerank_pool_for(self.settings.rerank_pool_tokens, budget_tokens),
                               fusion, fusion_weight, rrf_k)
            return rerank_spans(reranker_for(self.lm, self.settings), query, pool, k=k,
                                budget_tokens=budget_tokens,
                                doc_order={self.index.docs[r].doc_id: r for r in rows},
                                token_bounds=self._token_bounds)

    def _spans(self, query: str, rows: list[int], mode: str, k: int | None,
               budget_tokens: int | None, fusion: str, fusion_weight: float,
               rrf_k: int) -> list[Span]:
        """The first-stage spans of ``rows`` (``mode``: hybrid, s3 or bm25)."""
        with self._lock:
            units = self.units.of_rows(rows)
            s3 = self._s3_units(query, rows)[1] if mode != "bm25" else np.zeros(len(units))
            bm = self.units.bm25_scores(query)[units] if mode != "s3" else np.zeros(len(units))
            ranked = (fuse(s3, bm, method=fusion, weight=fusion_weight, rrf_k=rrf_k)
                      if mode == "hybrid" else s3 if mode == "s3" else bm)
            return best_spans(self.index.docs, self.units, rows, ranked,
                              s3_scores=None if mode == "bm25" else s3,
                              bm25_scores=None if mode == "s3" else bm,
                              span_tokens=span_tokens_for(self.settings.span_tokens,
                                                          budget_tokens),
                              k=k, budget_tokens=budget_tokens,
                              cross_paragraphs=self.settings.cross_paragraphs)

    def _token_bounds(self, doc_id: str, start_char: int, end_char: int) -> tuple[int, int]:
        """Document-local token range of a character range: the tokens that end after
        ``start_char`` and start before ``end_char``."""
        rec = self.index.docs[self.index.row_of(doc_id)]
        tc = self.index.segments[rec.segment].token_char[rec.token_start:rec.token_end]
        return (int(np.searchsorted(tc[:, 1], start_char, side="right")),
                int(np.searchsorted(tc[:, 0], end_char, side="left")))

    def unit_scores(self, query: str, doc_ids: Collection[str] | None = None,
                    filters: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The raw per-sentence scores a search ranks, for analysis or a custom fusion.

        Returns aligned arrays over the candidate documents' sentence units: ``doc_id``
        (list), ``bounds`` [U, 2] char offsets, ``tokens`` [U], ``s3`` [U], ``bm25`` [U],
        and with the attention scorer ``head`` [H, U] per-head scores and ``heads`` (their
        names, ``"layers.17/3"``).
        """
        validate.text(query, "query")
        with self._lock:
            if len(self.index) == 0:
                raise EmptyIndexError("the index is empty: add documents before searching")
            rows = self._rows(filters, doc_ids)
            units = self.units.of_rows(rows)
            head, s3 = self._s3_units(query, rows,
                                      per_head=self.settings.scorer == "attention")
            return {"doc_id": [self.index.docs[r].doc_id for r in self.units.doc[units]],
                    "bounds": self.units.bounds[units], "tokens": self.units.tokens[units],
                    "head": head, "s3": s3, "bm25": self.units.bm25_scores(query)[units],
                    "heads": [h.name for h in self.heads]}

    def answer(self, question: str, budget_tokens: int = ANSWER_BUDGET_TOKENS, *,
               k: int | None = None, mode: str | None = None,
               filters: Mapping[str, Any] | None = None,
               doc_ids: Collection[str] | None = None,
               max_new_tokens: int = MAX_NEW_TOKENS) -> Answer:
        """Retrieve spans within ``budget_tokens`` and answer from them (KV-free generation).

        The model sees only the spans (in document order) and the question, never the
        indexed documents' KV cache; memory does not grow with the index. ``mode``
        defaults to the ``answer_mode`` setting (``"rerank"``).
        """
        validate.positive_int(max_new_tokens, "max_new_tokens")
        mode = mode or answer_mode_for(self.lm, self.settings)
        spans = self.search(question, k=k, budget_tokens=budget_tokens, mode=mode,
                            filters=filters, doc_ids=doc_ids)
        order = {rec.doc_id: row for row, rec in enumerate(self.index.docs)}
        return answer_from_spans(self.lm, question, spans, max_new_tokens=max_new_tokens,
                                 doc_order=order, lock=self.lm.lock)

    # ----------------------------------------------------------------- persistence
    def stats(self) -> dict[str, Any]:
        """Sizes: documents, tokens, index bytes per token vs the model's KV-cache bytes."""
        with self._lock:
            n = self.index.n_tokens
            nbytes = self.index.nbytes()
            return {"documents": len(self.index), "tokens": int(n), "index_bytes": int(nbytes),
                    "index_bytes_per_token": nbytes / n if n else math.nan,
                    "kv_bytes_per_token": self.lm.kv_bytes_per_token(2)}

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the index to the folder ``path``, atomically.

        ``path`` must be new or an empty folder; replacing an index saved there before needs
        ``overwrite=True``, and a folder of other files is never touched. A reader of
        ``path`` finds the complete old or the complete new index at every instant, even if
        this process is killed mid-save (see docs/guarantees.md). Through a symlink, the
        link's target is updated.

        Raises:
            OutputExistsError: ``path`` is a file or a folder of other files, or already
                holds an index and ``overwrite`` is False. Nothing is written.
        """
        with self._lock:
            return persistence.save(
                path, self.index, self.saes, [h.to_entry() for h in self.heads],
                {"model": {"id": self.lm.model_id, "fingerprint": self.lm.fingerprint},
                 "settings": self.settings.to_dict()}, overwrite=overwrite)

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """Whether ``path`` holds an index saved by :meth:`save` (not verified: see
        :meth:`load`)."""
        return persistence.is_saved_index(path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, model: str | LoadedModel | None = None,
             device: str | None = None, dtype: str | None = None, mmap: bool = True) -> S3Index:
        """Open a saved index, verified byte for byte before anything is used.

        The pointer and manifest checksums, every file's size and SHA-256, the absence of
        unlisted files, the format version, the settings (validated as in code), the model
        and SAE hashes, and the document and token counts are all checked. Leftovers of an
        interrupted save are removed.

        Raises:
            IndexNotFoundError: no index at ``path`` (missing, a file, another folder).
            IndexFormatError: anything that does not verify, another format version, or a
                model / SAE that differs from the one the index was built with.
        """
        with persistence.open_saved(path) as saved:
            mid, mfp = saved.entry("model", "id"), saved.entry("model", "fingerprint")
            try:
                settings = S3Settings.from_dict(saved.entry("settings"))
            except InvalidInputError as e:
                raise IndexFormatError(f"{saved.where}: settings: {e}") from None
            lm = model if isinstance(model, LoadedModel) else load_model(model or mid, device,
                                                                          dtype)
            if lm.fingerprint != mfp:
                raise IndexFormatError(
                    f"{path}: the index was built with model {mid!r} ({mfp}) but the loaded "
                    f"model {lm.model_id!r} is {lm.fingerprint}; rebuild the index for it")
            try:
                out = cls(lm, saved.saes(), settings, heads=saved.heads())
            except (TypeError, ValueError) as e:  # IndexFormatError passes through as is
                if isinstance(e, IndexFormatError):
                    raise
                raise IndexFormatError(f"{path}: {e}") from None
            store = saved.store(mmap=mmap)
        if sorted(store.hookpoints) != sorted(out.scanner.streams):
            raise IndexFormatError(f"{path}: streams {sorted(store.hookpoints)} do not match "
                                   f"the heads' kv heads {sorted(out.scanner.streams)}")
        out.index = store
        out._add_units(0)
        return out

    def __repr__(self) -> str:
        return (f"S3Index(model={self.lm.model_id!r}, documents={len(self.index)}, "
                f"tokens={self.index.n_tokens}, hookpoints={sorted(self.saes)})")
