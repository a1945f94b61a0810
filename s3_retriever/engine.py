"""``S3Index``: scan documents once, keep sparse key codes, retrieve evidence spans, answer.

Example:
    >>> from s3_retriever import S3Index
    >>> index = S3Index.from_model("smollm2-135m")
    >>> index.add_texts(["Marie Curie was born in Warsaw. She won two Nobel Prizes.",
    ...                  "The Amazon river flows through Brazil."], ids=["curie", "amazon"],
    ...                 show_progress=False)
    ['curie', 'amazon']
    >>> index.search("Where was Marie Curie born?", k=1)[0].text  # a span grows to ~48 tokens
    'Marie Curie was born in Warsaw. She won two Nobel Prizes.'
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s3_retriever import lexical, storage, validate
from s3_retriever.errors import (
    EmptyIndexError,
    IndexFormatError,
    InvalidInputError,
    SAEError,
    UnknownDocumentError,
)
from s3_retriever.fusion import FUSION_FILE, LearnedFusion, head_name
from s3_retriever.generate import Answer, answer_from_spans
from s3_retriever.hooks import QKHooks
from s3_retriever.index import DocRecord, InvertedIndex, Postings, Segment
from s3_retriever.lexical import BM25Index
from s3_retriever.models import DEFAULT_MODEL, LoadedModel, load_model
from s3_retriever.sae import TopKSAE, load_saes, save_saes
from s3_retriever.scan import Scanner, hookpoint_layer, postings_name, tokenize_document
from s3_retriever.scoring import SCORERS, HeadWeight, attention_scores, query_feature_weights
from s3_retriever.spans import (
    Span,
    grow_spans,
    grown_span_keys,
    pack_spans,
    select_for_packing,
    sentence_max_scores,
    sentence_token_counts,
    spans_for_document,
    split_sentences,
    token_sentence_map,
)
from s3_retriever.storage import read_json, write_json

FORMAT_VERSION = 2
INDEX_KIND = "s3-retriever-index"
MODES = ("hybrid", "s3", "bm25")
FUSIONS = ("linear", "rrf", "learned")


@dataclass
class S3Settings:
    """Every setting that shapes an index and its retrieval (stored in the manifest).

    Attributes:
        chunk_tokens: tokens per forward pass of the scan (None: 512 on CPU, 2048 on GPU).
        context_tokens: left context carried into each chunk (not indexed twice).
        scorer: ``"attention"`` (softmax mass on keys reconstructed from codes) or
            ``"coactivation"`` (IDF-weighted feature co-activation through the postings).
        heads: query heads used for scoring as ``[hookpoint, head, weight]`` triples, with
            an optional 4th entry: the head's mean query (a list of ``head_dim`` floats);
            None reads the head file shipped with the SAEs, else every head of every
            hookpoint.
        query_mean: when the heads carry mean queries, keep the exact ``mean_query . key``
            of every token and head (2 bytes each) and score with it: the logit becomes
            ``(q - mean) . k_hat + mean . k``, so the sparse codes only approximate the
            question-specific part. Needs a re-scan to change.
        max_df_fraction: features firing on more than this fraction of tokens are pruned
            from co-activation scoring.
        smooth_window: moving-average width over token scores before sentences take the max.
        span_tokens: spans grow around their best sentence up to this many tokens
            (0: single sentences); ``"auto"``: a tenth of the search's token budget, kept
            within 48-192 (48 when only ``k`` is given).
        mode: default retrieval mode, ``"hybrid"``, ``"s3"`` or ``"bm25"``.
        fusion: ``"linear"`` (min-max normalised mix), ``"rrf"`` (reciprocal rank) or
            ``"learned"`` (the logistic regression of ``fusion.json`` shipped with the SAEs;
            see :mod:`s3_retriever.fusion`).
        fusion_weight: the S3 share in the fusion, in [0, 1].
        rrf_k: the RRF constant.
    """

    chunk_tokens: int | None = None
    context_tokens: int = 64
    scorer: str = "attention"
    heads: list[list[Any]] | None = None
    query_mean: bool = True
    max_df_fraction: float = 0.01
    smooth_window: int = 3
    span_tokens: int | str = "auto"
    mode: str = "hybrid"
    fusion: str = "linear"
    fusion_weight: float = 0.5
    rrf_k: int = 60

    def validate(self) -> S3Settings:
        """Check every field's type and range (settings read from disk included).

        Raises:
            InvalidInputError: the first bad field, named.
        """
        validate.choice(self.scorer, SCORERS, "scorer")
        validate.choice(self.mode, MODES, "mode")
        validate.choice(self.fusion, FUSIONS, "fusion")
        validate.fraction(self.fusion_weight, "fusion_weight")
        validate.optional_positive_int(self.chunk_tokens, "chunk_tokens")
        validate.positive_int(self.smooth_window, "smooth_window")
        validate.positive_int(self.rrf_k, "rrf_k")
        if self.context_tokens != 0:
            validate.positive_int(self.context_tokens, "context_tokens (or 0)")
        if self.span_tokens not in ("auto", 0):
            validate.positive_int(self.span_tokens, "span_tokens (or 0 or 'auto')")
        if type(self.query_mean) is not bool:
            raise InvalidInputError(f"query_mean must be True or False, got "
                                    f"{self.query_mean!r}")
        if isinstance(self.max_df_fraction, bool) or \
                not isinstance(self.max_df_fraction, (int, float)) or \
                not 0.0 < self.max_df_fraction <= 1.0:
            raise InvalidInputError(f"max_df_fraction must be in (0, 1], got "
                                    f"{self.max_df_fraction!r}")
        if self.heads is not None and (not isinstance(self.heads, list) or not all(
                isinstance(h, (list, tuple)) and len(h) >= 2 for h in self.heads)):
            raise InvalidInputError("heads must be None or a list of [hookpoint, head, "
                                    "weight(, mean query)] entries")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> S3Settings:
        if not isinstance(d, Mapping):
            raise InvalidInputError(f"settings must be a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InvalidInputError(f"unknown settings {sorted(map(str, unknown))}; known: "
                                    f"{sorted(names)}")
        return cls(**dict(d)).validate()


def shipped_sae_dir(model_id: str) -> Path | None:
    """The folder of the SAEs shipped in the package for ``model_id``, if any."""
    folder = Path(str(resources.files("s3_retriever") / "saes" / model_id))
    return folder if folder.is_dir() else None


def _contiguous(ranges: Sequence[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """``(segment, start, end)`` token ranges with consecutive touching ones merged."""
    out: list[tuple[int, int, int]] = []
    for seg, s, e in ranges:
        if out and out[-1][0] == seg and out[-1][2] == s:
            out[-1] = (seg, out[-1][1], e)
        else:
            out.append((seg, s, e))
    return out


def _join(parts: list[np.ndarray]) -> np.ndarray:
    """``np.concatenate(parts)``, but a single part is returned as is (a view, no copy)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class S3Index:
    """A retriever over documents scanned once by a causal LM (see the module docstring).

    Build it with :meth:`from_model` (or :meth:`load`), add text with :meth:`add_texts`,
    then :meth:`search` for evidence spans or :meth:`answer` for KV-free generation.
    Thread-safe: searches may run concurrently with each other and with additions.
    """

    def __init__(self, lm: LoadedModel, saes: Mapping[str, TopKSAE],
                 settings: S3Settings | None = None, *, heads: list[list[Any]] | None = None,
                 fusion_model: LearnedFusion | None = None):
        if not saes:
            raise SAEError("an S3Index needs at least one SAE")
        self.fusion_model = fusion_model
        self.lm = lm
        self.saes = dict(saes)
        # a copy: the caller's settings object is never changed
        self.settings = dataclasses.replace(settings or S3Settings()).validate()
        if self.settings.chunk_tokens is None:
            self.settings.chunk_tokens = 2048 if lm.device.type == "cuda" else 512
        self.heads = self._resolve_heads(self.settings.heads or heads)
        kv_heads: dict[str, list[int]] = {}
        for hw in self.heads:
            kv_heads.setdefault(hw.hookpoint, [])
            if hw.kv not in kv_heads[hw.hookpoint]:
                kv_heads[hw.hookpoint].append(hw.kv)
        bias_vectors: dict[str, list[tuple[float, ...]]] = {}
        if self.settings.query_mean:
            for hw in self.heads:
                if hw.query_mean is not None:
                    bias_vectors.setdefault(postings_name(hw.hookpoint, hw.kv), []).append(
                        hw.query_mean)
        self._lock = threading.RLock()
        self.scanner = Scanner(lm, {hp: self.saes[hp] for hp in kv_heads}, kv_heads=kv_heads,
                               chunk_tokens=self.settings.chunk_tokens,
                               context_tokens=self.settings.context_tokens,
                               lock=self.lm.lock,
                               bias_vectors={nm: torch.tensor(v) for nm, v in
                                             bias_vectors.items()})
        self.index = InvertedIndex(self.scanner.names,
                                   {postings_name(hp, g): self.saes[hp].cfg.num_latents
                                    for hp, gs in kv_heads.items() for g in gs},
                                   {nm: len(v) for nm, v in bias_vectors.items()})
        self._reset_units()
        if self.settings.fusion == "learned":
            self._check_fusion_model()

    def _check_fusion_model(self) -> LearnedFusion:
        if self.fusion_model is None:
            raise ValueError("fusion='learned' needs a fusion.json next to the SAEs (train one "
                             "with `s3-retriever calibrate-fusion`)")
        want = [head_name(h.hookpoint, h.head) for h in self.heads]
        if self.fusion_model.heads != want:
            raise ValueError(f"the learned fusion was fitted on heads {self.fusion_model.heads}, "
                             f"this index scores with {want}")
        if self.settings.scorer != "attention":
            raise ValueError("fusion='learned' needs scorer='attention'")
        return self.fusion_model

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_model(cls, model: str | LoadedModel = DEFAULT_MODEL, *,
                   saes: str | os.PathLike | Mapping[str, TopKSAE] | None = None,
                   device: str | None = None, dtype: str | None = None,
                   **settings: Any) -> S3Index:
        """An empty index for ``model`` with its SAEs (the shipped ones by default).

        Args:
            model: a name/path for :func:`~s3_retriever.models.load_model` or a loaded model.
            saes: a folder of SAEs (one subfolder per hookpoint) or a mapping; default: the
                SAEs shipped for the model.
            **settings: any :class:`S3Settings` field.
        """
        lm = model if isinstance(model, LoadedModel) else load_model(model, device, dtype)
        heads = None
        if saes is None:
            folder = shipped_sae_dir(lm.model_id)
            if folder is None:
                raise SAEError(
                    f"no SAEs are shipped for model {lm.model_id!r}; train them with "
                    f"`s3-retriever train-sae --model {lm.model_id} --out DIR` and pass saes=DIR")
            saes = folder
        fusion_model = None
        if not isinstance(saes, Mapping):
            folder = Path(saes)
            heads_file = folder / "heads.json"
            if heads_file.is_file():
                heads = json.loads(heads_file.read_text(encoding="utf-8"))["heads"]
            if (folder / FUSION_FILE).is_file():
                fusion_model = LearnedFusion.load(folder / FUSION_FILE)
            saes = load_saes(folder, device="cpu")
        return cls(lm, saes, S3Settings.from_dict(settings), heads=heads,
                   fusion_model=fusion_model)

    def _resolve_heads(self, heads: list[list[Any]] | None) -> list[HeadWeight]:
        spec = self.lm.spec
        for hp, sae in self.saes.items():
            sae.check_compatible(spec.head_dim, hookpoint_layer(hp))
        if heads is None:
            heads = [[hp, h, 1.0] for hp in sorted(self.saes) for h in range(spec.n_heads)]
        out = []
        columns: dict[str, int] = {}
        for entry in heads:
            hp, h, *rest = entry
            if hp not in self.saes:
                raise ValueError(f"head {str(entry)[:60]} names hookpoint {hp!r}, which has no "
                                 f"SAE (have {sorted(self.saes)})")
            w = float(rest[0]) if rest else 1.0
            mean = column = None
            if len(rest) > 1 and rest[1] is not None and self.settings.query_mean:
                mean = tuple(float(x) for x in rest[1])
                if len(mean) != spec.head_dim or not all(map(math.isfinite, mean)):
                    raise ValueError(f"head [{hp!r}, {h}]: the mean query must be "
                                     f"{spec.head_dim} finite floats")
                name = postings_name(hp, spec.kv_group(int(h)))
                column = columns[name] = columns.get(name, -1) + 1
            out.append(HeadWeight(hp, int(h), spec.kv_group(int(h)), w, mean, column))
        if not out:
            raise ValueError("no query heads selected")
        return out

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
        if metadatas is not None:
            if isinstance(metadatas, (str, bytes, Mapping)) or not isinstance(metadatas, Sequence):
                raise InvalidInputError("metadatas must be a list of dicts (one per text), "
                                        f"got {type(metadatas).__name__}")
            if len(metadatas) != len(texts):
                raise InvalidInputError(f"{len(metadatas)} metadatas for {len(texts)} texts")
        if ids is not None:
            if isinstance(ids, (str, bytes, Mapping)) or not isinstance(ids, Sequence):
                raise InvalidInputError("ids must be a list of str (one per text), got "
                                        f"{type(ids).__name__}")
            if len(ids) != len(texts):
                raise InvalidInputError(f"{len(ids)} ids for {len(texts)} texts")
            ids = [validate.doc_id(i, f"ids[{n}]") for n, i in enumerate(ids)]
        else:
            ids = [uuid.uuid4().hex for _ in texts]
        metas = [validate.metadata(m, f"metadatas[{n}]")
                 for n, m in enumerate(metadatas or [None] * len(texts))]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        with self._lock:
            dup += [i for i in ids if i in self.index]
        if dup:
            raise InvalidInputError(f"duplicate document ids: {sorted(set(dup))}; delete the "
                                    "old document first, or give new ids")

        scanned = self.scanner.scan(texts, show_progress=show_progress)
        offsets = np.cumsum([0] + [d.n_tokens for d in scanned])
        token_doc = np.repeat(np.arange(len(texts), dtype=np.int32), np.diff(offsets))
        token_char = (np.concatenate([d.token_char for d in scanned]) if offsets[-1]
                      else np.zeros((0, 2), np.int32))
        postings = {}
        for name in self.scanner.names:
            k = self.saes[name.rsplit(".", 1)[0]].cfg.k
            cat_ids = np.concatenate([d.ids[name] for d in scanned]).reshape(-1, k)
            cat_acts = np.concatenate([d.acts[name] for d in scanned]).reshape(-1, k)
            postings[name] = Postings.from_codes(cat_ids, cat_acts,
                                                 self.saes[name.rsplit(".", 1)[0]].cfg.num_latents)
        bias = {name: np.concatenate([d.bias[name] for d in scanned])
                for name in self.scanner.bias_vectors}
        segment = Segment(postings=postings, token_doc=token_doc, token_char=token_char,
                          bias=bias)
        docs = [DocRecord(doc_id=i, text=t, metadata=m, segment=-1,
                          token_start=int(offsets[j]), token_end=int(offsets[j + 1]),
                          sentences=split_sentences(t))
                for j, (i, t, m) in enumerate(zip(ids, texts, metas))]
        with self._lock:
            self.index.add_segment(segment, docs)
            self._add_units(len(self.index.docs) - len(docs))
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
            if text is None:
                text = get("text")
            texts.append(text)
            metas.append(get("metadata"))  # checked by add_texts
            ids.append(get("id") or get("id_") or get("doc_id"))
        if any(i is None for i in ids):
            ids = [i if i is not None else uuid.uuid4().hex for i in ids]
        return self.add_texts(texts, metas, ids, show_progress=show_progress)

    def delete(self, ids: Iterable[str]) -> None:
        """Remove documents by id (tombstones). Unknown ids raise
        :class:`~s3_retriever.errors.UnknownDocumentError` (a ``KeyError``); nothing is deleted.

        The BM25 statistics are rebuilt without the deleted documents (cost grows with the
        number of sentences indexed), so no score depends on deleted text.
        """
        ids = validate.id_list(ids, "ids")
        with self._lock:
            unknown = [i for i in dict.fromkeys(ids) if i not in self.index]
            if unknown:
                raise UnknownDocumentError(f"unknown document ids: {unknown[:10]}; nothing "
                                           "deleted")
            self.index.delete(ids)
            self._reset_units()
            self._add_units(0)

    def get_document(self, doc_id: str) -> DocRecord:
        """The stored record (text, metadata) of a live document."""
        validate.doc_id(doc_id, "doc_id")
        with self._lock:
            if doc_id not in self.index:
                raise UnknownDocumentError(f"no document {doc_id!r}")
            return self.index.get(doc_id)

    # ----------------------------------------------------------------- lexical units
    def _reset_units(self) -> None:
        self._bm25 = BM25Index()
        self._unit_doc = np.zeros(0, np.int64)
        self._unit_bounds = np.zeros((0, 2), np.int64)
        self._unit_tokens = np.zeros(0, np.int64)
        self._doc_units: list[tuple[int, int]] = []
        self._doc_token_unit: list[np.ndarray] = []

    def _add_units(self, first_row: int) -> None:
        """Register the sentence units of doc rows ``first_row..`` for BM25 and span growth."""
        docs = self.index.docs
        texts, unit_doc, bounds, counts = [], [], [], []
        base = len(self._unit_doc)
        for row in range(first_row, len(docs)):
            rec = docs[row]
            if rec.deleted:
                self._doc_units.append((base + len(unit_doc), base + len(unit_doc)))
                self._doc_token_unit.append(np.zeros(0, np.int64))
                continue
            seg = self.index.segments[rec.segment]
            tc = np.asarray(seg.token_char[rec.token_start:rec.token_end])
            tsent = token_sentence_map(tc, rec.sentences)
            n = len(rec.sentences)
            cnt = sentence_token_counts(tsent, n)
            self._doc_units.append((base + len(unit_doc), base + len(unit_doc) + n))
            self._doc_token_unit.append(tsent)
            for j, (s, e) in enumerate(rec.sentences):
                texts.append(rec.text[s:e])
                unit_doc.append(row)
                bounds.append((s, e))
                counts.append(max(1, int(cnt[j])))
        if texts:
            self._bm25.add(texts)
        self._unit_doc = np.concatenate([self._unit_doc, np.asarray(unit_doc, np.int64)])
        self._unit_bounds = np.concatenate([self._unit_bounds,
                                            np.asarray(bounds, np.int64).reshape(-1, 2)])
        self._unit_tokens = np.concatenate([self._unit_tokens, np.asarray(counts, np.int64)])

    # ----------------------------------------------------------------- search
    def _question_queries(self, question: str) -> dict[str, torch.Tensor]:
        ids, _ = tokenize_document(self.lm.tokenizer, question)
        n_sink = len(self.lm.sink_ids)
        if len(ids) + n_sink > self.lm.max_length:
            raise InvalidInputError(f"the query is {len(ids)} tokens, longer than the model's context "
                             f"of {self.lm.max_length} tokens")
        layers = {hw.hookpoint: hookpoint_layer(hw.hookpoint) for hw in self.heads}
        with self.lm.lock, QKHooks(self.lm.model, sorted(set(layers.values())),
                                       keys=False, queries=True) as hooks:
            cap = hooks.run(input_ids=self.lm.input_tensor(ids))
        return {hp: cap.queries[layer][0, n_sink:].float().cpu() for hp, layer in layers.items()}

    def _candidate_rows(self, filters: Mapping[str, Any] | None,
                        doc_ids: Collection[str] | None = None) -> list[int]:
        filters = validate.filters(filters)
        if doc_ids is not None:
            if isinstance(doc_ids, str):
                raise InvalidInputError("doc_ids must be a collection of ids, not a single "
                                        "string: wrap it, [doc_id]")
            wanted = set(validate.id_list(doc_ids, "doc_ids"))
            rows = sorted(self.index.row_of(d) for d in wanted if d in self.index)
            docs = self.index.docs
            return [r for r in rows if not filters or validate.matches(docs[r].metadata, filters)]
        return [row for row, rec in enumerate(self.index.docs)
                if not rec.deleted and (not filters or validate.matches(rec.metadata, filters))]

    def _s3_token_scores(self, question: str, rows: list[int], per_head: bool = False
                         ) -> list[np.ndarray]:
        """Per candidate doc row, the S3 score of each of its tokens ([n], or with
        ``per_head`` [n_heads, n] unweighted attention masses; attention scorer only)."""
        queries = self._question_queries(question)
        docs = self.index.docs
        spans = [(docs[r].segment, docs[r].token_start, docs[r].token_end) for r in rows]
        lengths = [e - s for _, s, e in spans]
        if self.settings.scorer == "attention":
            codes, bias = {}, {}
            for name in self.scanner.names:
                k = self.saes[name.rsplit(".", 1)[0]].cfg.k
                parts_i, parts_a, parts_b = [], [], []
                for seg, s, e in _contiguous(spans):
                    segment = self.index.segments[seg]
                    fi, fa = segment.postings[name].to_codes(k, compact=True)
                    # scoring reads the forward view only: the CSR arrays leave memory
                    # (rebuilt, identical, when something reads them again)
                    segment.postings[name].drop_inverted(k)
                    parts_i.append(fi[s:e])
                    parts_a.append(fa[s:e])
                    if name in segment.bias:
                        parts_b.append(segment.bias[name][s:e])
                codes[name] = (_join(parts_i), _join(parts_a))
                if parts_b:
                    bias[name] = _join(parts_b)
            flat = attention_scores(queries, codes, self.saes, self.heads, bias,
                                    per_head=per_head)
        else:
            names = self.scanner.names
            idf = {n: self.index.idf(n) for n in names}
            pruned = {n: self.index.pruned(n, self.settings.max_df_fraction) for n in names}
            weights = query_feature_weights(queries, self.saes, self.heads, idf, pruned)
            per_seg: dict[int, np.ndarray] = {}
            for seg in sorted({s for s, _, _ in spans}):
                segment = self.index.segments[seg]
                tot = np.zeros(segment.n_tokens, np.float64)
                for name, w in weights.items():
                    feats = np.flatnonzero(w)
                    pos, acts, which = segment.postings[name].gather(feats)
                    tot += np.bincount(np.asarray(pos, np.int64),
                                       weights=np.asarray(acts, np.float64) * w[feats][which],
                                       minlength=segment.n_tokens)
                per_seg[seg] = tot
            flat = np.concatenate([per_seg[seg][s:e] for seg, s, e in spans])
        out, pos = [], 0
        for n in lengths:
            out.append(np.asarray(flat[..., pos:pos + n], np.float64))
            pos += n
        return out

    def _unit_scores(self, rows: list[int], token_scores: list[np.ndarray]) -> np.ndarray:
        """Smoothed token scores -> the max per sentence unit, concatenated over ``rows``."""
        parts = []
        for r, ts in zip(rows, token_scores):
            a, b = self._doc_units[r]
            parts.append(sentence_max_scores(ts, self._doc_token_unit[r], b - a,
                                             self.settings.smooth_window))
        return np.concatenate(parts) if parts else np.zeros(0)

    def unit_scores(self, query: str, doc_ids: Collection[str] | None = None,
                    filters: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The raw per-sentence scores a search ranks, for analysis or a custom fusion.

        Returns a dict of aligned arrays over the candidate documents' sentence units:
        ``doc_id`` (list), ``bounds`` [U, 2] char offsets, ``tokens`` [U], ``head`` [H, U]
        per-head S3 scores (attention scorer), ``s3`` [U], ``bm25`` [U], and ``heads``
        (the head names, in row order of ``head``).
        """
        with self._lock:
            if len(self.index) == 0:
                raise EmptyIndexError("the index is empty: add documents before searching")
            rows = self._candidate_rows(filters, doc_ids)
            units = np.concatenate([np.arange(*self._doc_units[r]) for r in rows]) if rows \
                else np.zeros(0, np.int64)
            head, s3 = self._s3_units(query, rows, per_head=self.settings.scorer == "attention")
            return {"doc_id": [self.index.docs[r].doc_id for r in self._unit_doc[units]],
                    "bounds": self._unit_bounds[units], "tokens": self._unit_tokens[units],
                    "head": head, "s3": s3,
                    "bm25": np.asarray(self._bm25.scores(query), np.float64)[units],
                    "heads": [head_name(h.hookpoint, h.head) for h in self.heads]}

    def _s3_units(self, query: str, rows: list[int], per_head: bool
                  ) -> tuple[np.ndarray | None, np.ndarray]:
        """(per-head unit scores [H, U] or None, the summed S3 unit scores [U])."""
        if not rows:
            return (np.zeros((len(self.heads), 0)) if per_head else None), np.zeros(0)
        token_scores = self._s3_token_scores(query, rows, per_head=per_head)
        if not per_head:
            return None, self._unit_scores(rows, token_scores)
        w = np.asarray([h.weight for h in self.heads])
        summed = [np.tensordot(w, ts, axes=1) for ts in token_scores]
        head = np.stack([self._unit_scores(rows, [ts[i] for ts in token_scores])
                         for i in range(len(self.heads))])
        return head, self._unit_scores(rows, summed)

    def search(self, query: str, k: int | None = 4, budget_tokens: int | None = None,
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
            filters: metadata conditions: ``{"key": value}`` (equality),
                ``{"key": [v1, v2]}`` (in), or ``{"key": {"$in"|"$nin"|"$eq"|"$ne": ...}}``.
                Non-matching documents are excluded before ranking.
            doc_ids: restrict the search to these documents (unknown ids are ignored).
            fusion, fusion_weight, rrf_k: per-call overrides of the hybrid fusion settings.

        Returns:
            :class:`~s3_retriever.spans.Span` objects whose ``text`` is exactly
            ``document[start_char:end_char]``.
        """
        if isinstance(query, str) and not query.strip():
            raise InvalidInputError("query is empty")
        validate.text(query, "query")
        validate.optional_positive_int(k, "k")
        validate.optional_positive_int(budget_tokens, "budget_tokens")
        if k is None and budget_tokens is None:
            raise InvalidInputError("give k, budget_tokens or both")
        mode = validate.choice(mode or self.settings.mode, MODES, "mode")
        fusion = validate.choice(fusion or self.settings.fusion, FUSIONS, "fusion")
        fusion_weight = validate.fraction(
            self.settings.fusion_weight if fusion_weight is None else fusion_weight,
            "fusion_weight")
        rrf_k = validate.positive_int(self.settings.rrf_k if rrf_k is None else rrf_k, "rrf_k")
        with self._lock:
            if len(self.index) == 0:
                raise EmptyIndexError("the index is empty: add documents before searching")
            rows = self._candidate_rows(filters, doc_ids)
            if not rows:
                return []
            unit_ranges = [self._doc_units[r] for r in rows]
            units = np.concatenate([np.arange(a, b) for a, b in unit_ranges])
            s3_units = np.zeros(len(units))
            bm_units = np.zeros(len(units))
            learned = mode == "hybrid" and fusion == "learned"
            model = self._check_fusion_model() if learned else None
            head_units = None
            if mode != "bm25":
                head_units, s3_units = self._s3_units(query, rows, per_head=learned)
            if mode != "s3":
                bm_units = np.asarray(self._bm25.scores(query), np.float64)[units]
            if learned:
                fused = model.score(head_units, bm_units, self._unit_tokens[units])
            elif mode == "hybrid":
                fused = lexical.fuse(s3_units, bm_units, method=fusion, weight=fusion_weight,
                                     rrf_k=rrf_k)
            else:
                fused = s3_units if mode == "s3" else bm_units
            spans = self._grow(rows, unit_ranges, fused, s3_units, bm_units, mode,
                               self.span_tokens_for(budget_tokens), k, budget_tokens)
        return pack_spans(spans, k=k, budget_tokens=budget_tokens)

    def span_tokens_for(self, budget_tokens: int | None) -> int:
        """The span growth limit of a search: the setting, or with ``"auto"`` a tenth of
        the budget within 48-192 tokens (bigger budgets afford more context per hit)."""
        if self.settings.span_tokens != "auto":
            return int(self.settings.span_tokens)
        return 48 if budget_tokens is None else int(min(192, max(48, budget_tokens // 10)))

    def _grow(self, rows, unit_ranges, fused, s3_units, bm_units, mode,
              span_tokens: int, k: int | None = None,
              budget_tokens: int | None = None) -> list[Span]:
        """Spans grown in every candidate document; with ``k`` / ``budget_tokens`` only the
        spans that ``pack_spans`` will keep are built (it gives the same result on them)."""
        docs = self.index.docs
        grown_all, pos = [], 0
        for r, (a, b) in zip(rows, unit_ranges):
            rec, n = docs[r], b - a
            grown = grow_spans(fused[pos:pos + n], rec.sentences, self._unit_tokens[a:b],
                               span_tokens=span_tokens)
            grown_all.append((r, slice(pos, pos + n), grown))
            pos += n
        chosen = None
        if k is not None or budget_tokens is not None:
            keys = [grown_span_keys(docs[r].sentences, self._doc_token_unit[r], grown)
                    for r, _, grown in grown_all]
            owners = [j for j, (_, _, grown) in enumerate(grown_all) for _ in grown]
            has = [j for j, (_, _, grown) in enumerate(grown_all) if grown]
            rank = np.zeros(len(grown_all), np.int64)
            rank[has] = np.arange(len(has))
            picked = select_for_packing(
                np.asarray([g[2] for _, _, grown in grown_all for g in grown], np.float64),
                rank[np.asarray(owners, np.int64)],
                np.concatenate([st for st, _ in keys]) if keys else np.zeros(0, np.int64),
                np.concatenate([nt for _, nt in keys]) if keys else np.zeros(0, np.int64),
                k=k, budget_tokens=budget_tokens)
            if picked is not None:
                chosen = [[] for _ in grown_all]
                flat = [(j, g) for j, (_, _, grown) in enumerate(grown_all) for g in grown]
                for i in picked.tolist():
                    chosen[flat[i][0]].append(flat[i][1])
        spans: list[Span] = []
        for j, (r, sl, grown) in enumerate(grown_all):
            rec = docs[r]
            grown = grown if chosen is None else chosen[j]
            if not grown:
                continue
            spans += spans_for_document(
                rec.doc_id, rec.text, rec.sentences, self._doc_token_unit[r], grown,
                s3_scores=None if mode == "bm25" else s3_units[sl],
                bm25_scores=None if mode == "s3" else bm_units[sl], metadata=rec.metadata)
        return spans

    def answer(self, question: str, budget_tokens: int = 2048, *, k: int | None = None,
               mode: str | None = None, filters: Mapping[str, Any] | None = None,
               doc_ids: Collection[str] | None = None, max_new_tokens: int = 48) -> Answer:
        """Retrieve spans within ``budget_tokens`` and answer from them (KV-free generation).

        The model sees only the spans (in document order) and the question, never the
        indexed documents' KV cache; memory does not grow with the index.
        """
        validate.positive_int(max_new_tokens, "max_new_tokens")
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
        with self._lock, storage.commit(path, INDEX_KIND, overwrite=overwrite) as c:
            self.index.save(c.folder)
            save_saes(self.saes, c.folder / "saes")
            write_json(c.folder / "heads.json", {"heads": [h.to_entry() for h in self.heads]})
            if self.fusion_model is not None:
                self.fusion_model.save(c.folder / FUSION_FILE)
            c.manifest.update({
                "format_version": FORMAT_VERSION,
                "model": {"id": self.lm.model_id, "fingerprint": self.lm.fingerprint},
                "saes": {hp: sae.content_hash() for hp, sae in sorted(self.saes.items())},
                "settings": self.settings.to_dict(),
                "documents": len(self.index),
                "tokens": int(self.index.n_tokens),
            })
        return Path(path)

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """Whether ``path`` holds an index saved by :meth:`save` (not verified: see
        :meth:`load`)."""
        return storage.folder_state(path, INDEX_KIND) == "ours"

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
        with storage.open_committed(path, INDEX_KIND, format_version=FORMAT_VERSION) as snap:
            folder, m = snap.folder, snap.manifest
            where = f"{Path(path) / snap.folder.name / storage.MANIFEST_NAME}"
            try:
                mid, mfp = m["model"]["id"], m["model"]["fingerprint"]
                sae_hashes = dict(m["saes"])
                settings = S3Settings.from_dict(m["settings"])
                counts = (m["documents"], m["tokens"])
                if not (isinstance(mid, str) and isinstance(mfp, str)
                        and all(type(x) is int for x in counts)):
                    raise TypeError("model id, fingerprint and counts have the wrong types")
            except (KeyError, TypeError, ValueError) as e:
                raise IndexFormatError(f"{where}: bad entry ({e})") from None
            lm = model if isinstance(model, LoadedModel) else load_model(model or mid, device,
                                                                          dtype)
            if lm.fingerprint != mfp:
                raise IndexFormatError(
                    f"{path}: the index was built with model {mid!r} ({mfp}) but the loaded "
                    f"model {lm.model_id!r} is {lm.fingerprint}; rebuild the index for it")
            try:
                saes = load_saes(folder / "saes", device="cpu")
                if {hp: sae.content_hash() for hp, sae in saes.items()} != sae_hashes:
                    raise SAEError("the SAEs do not match the manifest's hashes")
                heads = read_json(folder / "heads.json")["heads"]
                fusion_model = (LearnedFusion.load(folder / FUSION_FILE)
                                if (folder / FUSION_FILE).is_file() else None)
                out = cls(lm, saes, settings, heads=heads, fusion_model=fusion_model)
            except (KeyError, TypeError, ValueError) as e:  # SAEError is a ValueError
                raise IndexFormatError(f"{path}: {e}") from None
            out.index = InvertedIndex.load(folder, mmap=mmap)
        if sorted(out.index.hookpoints) != sorted(out.scanner.names):
            raise IndexFormatError(f"{path}: postings {sorted(out.index.hookpoints)} do not "
                                   f"match the heads' kv heads {sorted(out.scanner.names)}")
        if (len(out.index), out.index.n_tokens) != counts:
            raise IndexFormatError(f"{where}: says {counts[0]} documents and {counts[1]} tokens,"
                                   f" the data holds {len(out.index)} and {out.index.n_tokens}")
        out._add_units(0)
        return out

    def __repr__(self) -> str:
        return (f"S3Index(model={self.lm.model_id!r}, documents={len(self.index)}, "
                f"tokens={self.index.n_tokens}, hookpoints={sorted(self.saes)})")


__all__ = ["S3Index", "S3Settings", "EmptyIndexError", "Span", "Answer", "FORMAT_VERSION",
           "INDEX_KIND"]
