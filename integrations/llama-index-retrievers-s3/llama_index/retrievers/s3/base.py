"""``S3Retriever``: an S3-Attention :class:`~s3_retriever.S3Index` as a LlamaIndex retriever.

Each result is one evidence span of an indexed document, returned as a
``NodeWithScore(TextNode)`` whose id is ``"<doc_id>:<start>-<end>"``, whose text is exactly
``document_text[start_char_idx:end_char_idx]`` and whose ``SOURCE`` relationship points to
the document.

Example:
    >>> from llama_index.core import Document
    >>> from llama_index.retrievers.s3 import S3Retriever
    >>> retriever = S3Retriever.from_defaults(
    ...     documents=[Document(text="Marie Curie was born in Warsaw.", id_="curie",
    ...                         metadata={"topic": "science"})],
    ...     similarity_top_k=2)
    >>> hit = retriever.retrieve("Where was Marie Curie born?")[0]
    >>> hit.node.node_id, hit.node.text
    ('curie:0-31', 'Marie Curie was born in Warsaw.')
    >>> retriever.persist("./curie_s3")
    PosixPath('curie_s3')
    >>> S3Retriever.from_persist_dir("./curie_s3").similarity_top_k
    2
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.schema import (
    BaseNode,
    IndexNode,
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    ObjectType,
    QueryBundle,
    QueryType,
    RelatedNodeInfo,
    TextNode,
)
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from s3_retriever import (
    DEFAULT_K,
    DEFAULT_MODEL,
    FUSIONS,
    MODES,
    EmptyIndexError,
    InvalidInputError,
    LoadedModel,
    S3Index,
    Span,
    check_filters,
    validate,
)
from s3_retriever.adapters import (
    INDEX_FOLDER,
    RETRIEVER_FILE,
    is_index,
    load_index,
    open_retriever,
    save_retriever,
    split_settings,
)
from s3_retriever.distributed.shards import ShardedIndex

#: Span metadata keys added to results with ``include_scores=True``; hidden from the LLM
#: and embedding views.
SCORE_KEYS = ("s3_score", "bm25_score")

FiltersLike = MetadataFilters | Mapping[str, Any]


# --------------------------------------------------------------------------- filters
#: The LlamaIndex operators that are one engine operator each.
_ENGINE_OPS = {FilterOperator.EQ: "$eq", FilterOperator.NE: "$ne", FilterOperator.GT: "$gt",
               FilterOperator.GTE: "$gte", FilterOperator.LT: "$lt", FilterOperator.LTE: "$lte",
               FilterOperator.IN: "$in", FilterOperator.NIN: "$nin",
               FilterOperator.CONTAINS: "$contains"}
_EMPTY_VALUES = [None, "", []]  # what IS_EMPTY matches, besides a missing key


def _where(f: MetadataFilter, op: FilterOperator) -> str:
    return f"metadata filter {f.key!r} {op.name} ({op.value!r})"


def _values(f: MetadataFilter, op: FilterOperator, nonempty: bool = False) -> list[Any]:
    value = f.value
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise InvalidInputError(f"{_where(f, op)} needs a list of values, got {value!r}")
    if nonempty and not value:
        raise InvalidInputError(f"{_where(f, op)} needs at least one value, got []")
    return list(value)


def _like_literal(text: str) -> str:
    """``text`` as a SQL LIKE pattern matching exactly it."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _leaf(f: MetadataFilter) -> dict[str, Any]:
    """One ``MetadataFilter`` as an engine filter, with LlamaIndex's meaning of each operator
    (that of its ``SimpleVectorStore``)."""
    try:
        op = FilterOperator(f.operator)
    except ValueError:
        raise InvalidInputError(f"metadata filter {f.key!r}: unknown operator {f.operator!r}; "
                                f"use one of {[o.name for o in FilterOperator]}") from None
    key, value = f.key, f.value
    if op in (FilterOperator.IN, FilterOperator.NIN):
        return {key: {_ENGINE_OPS[op]: _values(f, op)}}
    if op in (FilterOperator.ANY, FilterOperator.ALL):  # a list holding any / all of them
        parts = [{key: {"$contains": v}} for v in _values(f, op, nonempty=True)]
        if len(parts) == 1:
            return parts[0]
        return {"$or" if op == FilterOperator.ANY else "$and": parts}
    if op == FilterOperator.IS_EMPTY:  # missing, None, "" or []
        return {"$or": [{key: {"$exists": False}}, {key: {"$in": list(_EMPTY_VALUES)}}]}
    if op in (FilterOperator.TEXT_MATCH, FilterOperator.TEXT_MATCH_INSENSITIVE):
        if not isinstance(value, str):
            raise InvalidInputError(f"{_where(f, op)} matches a str, got {value!r}")
        like = "$like" if op == FilterOperator.TEXT_MATCH else "$ilike"
        return {key: {like: f"%{_like_literal(value)}%"}}  # a substring of a str value
    if op not in _ENGINE_OPS:
        raise InvalidInputError(f"{_where(f, op)} is not supported by S3Retriever")
    if isinstance(value, (list, tuple)) and op not in (FilterOperator.EQ, FilterOperator.NE):
        hint = "; use ANY or ALL for several" if op == FilterOperator.CONTAINS else ""
        raise InvalidInputError(f"{_where(f, op)} takes one value, got {value!r}{hint}")
    if value is None and op in (FilterOperator.GT, FilterOperator.GTE, FilterOperator.LT,
                                FilterOperator.LTE):
        raise InvalidInputError(f"{_where(f, op)} compares with a number, an ISO 8601 date or "
                                "a str, got None")
    return {key: {_ENGINE_OPS[op]: value}}


def _and(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """AND of engine filters: one dict when no key (or operator of a key) repeats (readable,
    ``{"year": {"$gte": 2000, "$lt": 2010}, "$or": [...]}``), else ``{"$and": parts}``."""
    if len(parts) == 1:
        return parts[0]
    merged: dict[str, Any] = {}
    for part in parts:
        for key, cond in part.items():
            if key not in merged:
                merged[key] = cond
            elif key.startswith("$") or not isinstance(cond, Mapping) or \
                    set(cond) & set(merged[key]):
                return {"$and": parts}
            else:
                merged[key] = {**merged[key], **cond}
    return merged


def _group(filters: MetadataFilters, nested: bool) -> dict[str, Any]:
    try:
        cond = FilterCondition(filters.condition or FilterCondition.AND)  # None: AND
    except ValueError:
        raise InvalidInputError(f"unknown filter condition {filters.condition!r}; use "
                                f"{[c.name for c in FilterCondition]}") from None
    if not filters.filters:
        if nested:
            raise InvalidInputError(f"a nested MetadataFilters ({cond.name}) has no filters; "
                                    "remove it")
        return {}
    parts = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            parts.append(_group(f, nested=True))
        elif isinstance(f, MetadataFilter):  # ExactMatchFilter is an alias of it
            parts.append(_leaf(f))
        else:
            raise InvalidInputError(f"unsupported metadata filter {f!r}: give MetadataFilter "
                                    "or MetadataFilters")
    if cond == FilterCondition.AND:
        return _and(parts)
    either = parts[0] if len(parts) == 1 else {"$or": parts}
    if cond == FilterCondition.OR:
        return either
    if cond == FilterCondition.NOT:  # none of them matches
        return {"$not": either}
    raise InvalidInputError(f"filter condition {cond.name} is not supported by S3Retriever")


def to_engine_filters(filters: FiltersLike | None) -> dict[str, Any] | None:
    """Translate LlamaIndex ``MetadataFilters`` into the engine's filter language
    (docs/filters.md), with the meaning LlamaIndex's own ``SimpleVectorStore`` gives them.

    Conditions ``AND``, ``OR`` and ``NOT`` (none of the filters matches) nest freely; every
    ``FilterOperator`` is supported: ``EQ NE GT GTE LT LTE`` (numbers, ISO 8601 dates
    compared as dates, strings), ``IN NIN`` (a list of values), ``CONTAINS`` (a list
    holding the value, or a substring), ``ANY ALL`` (a list holding any / all of the
    values), ``TEXT_MATCH`` / ``TEXT_MATCH_INSENSITIVE`` (a substring of a str) and
    ``IS_EMPTY`` (missing, None, "" or []). A value of the wrong kind raises
    :class:`~s3_retriever.InvalidInputError` (a ``ValueError``); a plain dict is taken as
    engine filters as it is (checked at search time).

    Example:
        >>> from llama_index.core.vector_stores.types import (
        ...     FilterCondition, FilterOperator, MetadataFilter, MetadataFilters)
        >>> f = to_engine_filters(MetadataFilters(filters=[
        ...     MetadataFilter(key="lang", value="en"),
        ...     MetadataFilter(key="year", value=2020, operator=FilterOperator.GTE),
        ...     MetadataFilters(filters=[
        ...         MetadataFilter(key="src", value="wiki"),
        ...         MetadataFilter(key="date", value="2024-05-01", operator=FilterOperator.LT)],
        ...         condition=FilterCondition.OR)]))
        >>> f["lang"], f["year"]
        ({'$eq': 'en'}, {'$gte': 2020})
        >>> f["$or"]
        [{'src': {'$eq': 'wiki'}}, {'date': {'$lt': '2024-05-01'}}]
    """
    if filters is None:
        return None
    if isinstance(filters, Mapping):
        return dict(filters)
    if isinstance(filters, MetadataFilter):
        raise InvalidInputError("filters must be MetadataFilters, got a single MetadataFilter: "
                                "wrap it, MetadataFilters(filters=[...])")
    if not isinstance(filters, MetadataFilters):
        raise InvalidInputError(f"filters must be MetadataFilters or a dict of engine filters, "
                                f"got {type(filters).__name__}")
    return _group(filters, nested=False)


def _plain_json(value: Any) -> Any:
    """Engine filters as JSON: tuples and sets become lists."""
    if isinstance(value, Mapping):
        return {k: _plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain_json(v) for v in value]
    return value


def _filters_to_json(filters: FiltersLike | None) -> dict[str, Any] | None:
    """Filters as stored by ``persist`` (nested ``MetadataFilters`` included)."""
    if filters is None:
        return None
    if isinstance(filters, MetadataFilters):
        data = filters.model_dump(mode="json")
        if MetadataFilters.model_validate(data) != filters:
            raise InvalidInputError(f"filters {filters!r} do not survive a JSON round trip")
        return {"type": "llama_index", "value": data}
    data = _plain_json(filters)
    try:
        json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"filters {filters!r} cannot be stored as JSON ({e})") from None
    return {"type": "engine", "value": data}


def _filters_from_json(data: Mapping[str, Any] | None) -> FiltersLike | None:
    """The filters :func:`_filters_to_json` stored."""
    if data is None:
        return None
    if isinstance(data, Mapping) and data.get("type") == "llama_index":
        try:
            return MetadataFilters.model_validate(data.get("value"))
        except ValueError as e:
            raise ValueError(f"stored filters are not valid MetadataFilters: {e}") from None
    if isinstance(data, Mapping) and data.get("type") == "engine" and \
            isinstance(data.get("value"), Mapping):
        return dict(data["value"])
    raise ValueError(f"unknown stored filters {data!r}")




# --------------------------------------------------------------------------- nodes
#: The metadata key under which :meth:`S3Retriever.add_nodes` keeps where a node came from
#: (its ``ref_doc_id``, ``start_char_idx`` and hidden metadata keys); results never show it.
LINEAGE_KEY = "_s3_lineage"


def _lineage(node: BaseNode) -> dict[str, Any] | None:
    """What a chunk's results need to point back into its source document."""
    out: dict[str, Any] = {}
    ref = node.ref_doc_id
    if ref is not None and ref != node.node_id:
        out["ref_doc_id"] = ref
    start = getattr(node, "start_char_idx", None)  # a Document has none
    if isinstance(start, int) and not isinstance(start, bool) and start >= 0:
        out["start_char_idx"] = start
    for key in ("excluded_llm_metadata_keys", "excluded_embed_metadata_keys"):
        hidden = [k for k in getattr(node, key, None) or [] if isinstance(k, str)]
        if hidden:
            out[key] = hidden
    return out or None


def span_to_node(span: Span, *, include_scores: bool = False) -> NodeWithScore:
    """One engine :class:`~s3_retriever.Span` as a ``NodeWithScore``.

    The node's metadata is the indexed node's. When that node was a chunk of a document
    (an ``IngestionPipeline`` or a node parser's output), the result's ``SOURCE`` is that
    document (``ref_doc_id``), its ``PARENT`` the chunk, and ``start_char_idx`` /
    ``end_char_idx`` are in the document's coordinates. ``include_scores=True`` adds the
    component scores ``s3_score`` and ``bm25_score`` to the metadata (hidden from the LLM
    and embedding views); off by default, so that the same span is the same node whatever
    the query (fusion retrievers dedup it).

    Example:
        >>> from s3_retriever import Span
        >>> hit = span_to_node(Span("doc", 4, 9, "quick", 0.7, bm25_score=1.2,
        ...                         metadata={"lang": "en"}))
        >>> hit.node.node_id, hit.score, hit.node.source_node.node_id, hit.node.metadata
        ('doc:4-9', 0.7, 'doc', {'lang': 'en'})
        >>> chunk = Span("chunk-7", 4, 9, "quick", 0.7, metadata={
        ...     "lang": "en", LINEAGE_KEY: {"ref_doc_id": "book", "start_char_idx": 500}})
        >>> node = span_to_node(chunk).node
        >>> node.ref_doc_id, node.parent_node.node_id, node.start_char_idx, node.end_char_idx
        ('book', 'chunk-7', 504, 509)
    """
    meta = dict(span.metadata)
    lineage = meta.pop(LINEAGE_KEY, None)
    lineage = lineage if isinstance(lineage, Mapping) else {}
    base = lineage.get("start_char_idx")
    base = base if isinstance(base, int) and not isinstance(base, bool) and base >= 0 else 0
    source = dict(meta)  # the document's metadata, without the scores
    hidden_llm = list(lineage.get("excluded_llm_metadata_keys", []))
    hidden_embed = list(lineage.get("excluded_embed_metadata_keys", []))
    if include_scores:
        meta.update(s3_score=span.s3_score, bm25_score=span.bm25_score)
        hidden_llm += [k for k in SCORE_KEYS if k not in hidden_llm]
        hidden_embed += [k for k in SCORE_KEYS if k not in hidden_embed]
    ref = lineage.get("ref_doc_id")
    relationships = {NodeRelationship.SOURCE: RelatedNodeInfo(
        node_id=str(ref) if ref is not None else span.doc_id, node_type=ObjectType.DOCUMENT,
        metadata=source)}
    if ref is not None:
        relationships[NodeRelationship.PARENT] = RelatedNodeInfo(
            node_id=span.doc_id, node_type=ObjectType.TEXT, metadata=source)
    node = TextNode(id_=span.id, text=span.text, start_char_idx=base + span.start_char,
                    end_char_idx=base + span.end_char, metadata=meta,
                    excluded_llm_metadata_keys=hidden_llm,
                    excluded_embed_metadata_keys=hidden_embed, relationships=relationships)
    return NodeWithScore(node=node, score=float(span.score))


def _positive_int(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


#: Options of one call (``retriever.retrieve(q, similarity_top_k=2)``), seen by the search
#: that call makes (a context variable: safe across threads and tasks).
_CALL: ContextVar[dict[str, Any] | None] = ContextVar("s3_retrieve_options", default=None)


# --------------------------------------------------------------------------- retriever
class S3Retriever(BaseRetriever):
    """Evidence spans from an S3-Attention index, as LlamaIndex nodes.

    Args:
        index: the :class:`~s3_retriever.S3Index` to search (may be shared).
        similarity_top_k: spans per query (may be None when ``budget_tokens`` is given).
        budget_tokens: fill this many tokens with spans (as well as stopping at top k).
        mode: ``"hybrid"``, ``"s3"`` or ``"bm25"``; None: the index's default mode.
        filters: ``MetadataFilters`` (every operator, AND / OR / NOT, nested) or an engine
            filter dict (docs/filters.md); non-matching documents are excluded before
            ranking.
        fusion, fusion_weight, rrf_k: hybrid fusion overrides (None: the index's settings).
        include_scores: add ``s3_score`` and ``bm25_score`` to each result's metadata (off
            by default, so the same span is the same node across queries).
        callback_manager, objects, object_map, verbose: as for any LlamaIndex retriever.

    The settings are attributes that can be changed on an instance (validated on
    assignment); ``similarity_top_k``, ``budget_tokens``, ``mode``, ``filters`` and
    ``doc_ids`` can also be given per call: ``retriever.retrieve(q, similarity_top_k=2)``.
    An empty index gives ``[]``, as a vector store does.

    Example:
        >>> from llama_index.core.schema import TextNode
        >>> r = S3Retriever.from_defaults(
        ...     nodes=[TextNode(text="The code word is Zanzibar.", id_="n1")],
        ...     similarity_top_k=1, mode="bm25")
        >>> r.retrieve("What is the code word?")[0].node.text
        'The code word is Zanzibar.'
    """

    def __init__(
        self,
        index: S3Index,
        similarity_top_k: int | None = DEFAULT_K,
        budget_tokens: int | None = None,
        mode: str | None = None,
        filters: FiltersLike | None = None,
        *,
        fusion: str | None = None,
        fusion_weight: float | None = None,
        rrf_k: int | None = None,
        include_scores: bool = False,
        callback_manager: CallbackManager | None = None,
        objects: list[IndexNode] | None = None,
        object_map: dict | None = None,
        verbose: bool = False,
    ) -> None:
        if not is_index(index):
            raise TypeError(f"index must be an S3Index or a ShardedIndex, got "
                            f"{type(index).__name__}")
        self._index = index
        self._budget_tokens: int | None = None
        self._top_k: int | None = DEFAULT_K
        self.budget_tokens = budget_tokens
        self.similarity_top_k = similarity_top_k
        self.mode = mode
        self.filters = filters
        self.fusion = fusion
        self.fusion_weight = fusion_weight
        self.rrf_k = rrf_k
        self.include_scores = include_scores
        super().__init__(callback_manager=callback_manager, object_map=object_map,
                         objects=objects, verbose=verbose)

    # ----------------------------------------------------------------- settings
    @property
    def index(self) -> S3Index | ShardedIndex:
        """The underlying :class:`~s3_retriever.S3Index` (or ``ShardedIndex``)."""
        return self._index

    @property
    def similarity_top_k(self) -> int | None:
        """Spans returned per query."""
        return self._top_k

    @similarity_top_k.setter
    def similarity_top_k(self, value: int | None) -> None:
        self._top_k = _positive_int("similarity_top_k", value,
                                    allow_none=self._budget_tokens is not None)

    @property
    def budget_tokens(self) -> int | None:
        """The token budget spans are packed into (None: no budget, top k only)."""
        return self._budget_tokens

    @budget_tokens.setter
    def budget_tokens(self, value: int | None) -> None:
        value = _positive_int("budget_tokens", value, allow_none=True)
        if value is None and getattr(self, "_top_k", DEFAULT_K) is None:
            raise ValueError("similarity_top_k is None: a budget_tokens is required")
        self._budget_tokens = value

    @property
    def mode(self) -> str | None:
        """The retrieval mode (None: the index's default)."""
        return self._mode

    @mode.setter
    def mode(self, value: str | None) -> None:
        self._mode = None if value is None else validate.choice(value, MODES, "mode")

    @property
    def fusion(self) -> str | None:
        """How hybrid mode fuses S3 and BM25 (None: the index's setting)."""
        return self._fusion

    @fusion.setter
    def fusion(self, value: str | None) -> None:
        self._fusion = None if value is None else validate.choice(value, FUSIONS, "fusion")

    @property
    def fusion_weight(self) -> float | None:
        """The S3 side's weight in linear fusion (None: the index's setting)."""
        return self._fusion_weight

    @fusion_weight.setter
    def fusion_weight(self, value: float | None) -> None:
        self._fusion_weight = None if value is None else validate.fraction(value,
                                                                             "fusion_weight")

    @property
    def rrf_k(self) -> int | None:
        """The rank offset of reciprocal-rank fusion (None: the index's setting)."""
        return self._rrf_k

    @rrf_k.setter
    def rrf_k(self, value: int | None) -> None:
        self._rrf_k = _positive_int("rrf_k", value, allow_none=True)

    @property
    def include_scores(self) -> bool:
        """Whether results carry ``s3_score`` and ``bm25_score`` in their metadata."""
        return self._include_scores

    @include_scores.setter
    def include_scores(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"include_scores must be True or False, got {value!r}")
        self._include_scores = value

    @property
    def filters(self) -> FiltersLike | None:
        """The metadata filters applied to every query (None: no filter)."""
        return self._filters

    @filters.setter
    def filters(self, value: FiltersLike | None) -> None:
        self._engine_filters = _checked_filters(value)  # validates early
        self._filters = value

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_model(
        cls,
        model: str | LoadedModel = DEFAULT_MODEL,
        texts: Iterable[str] | None = None,
        documents: Iterable[BaseNode] | None = None,
        *,
        nodes: Iterable[BaseNode] | None = None,
        metadatas: Sequence[Mapping[str, Any]] | None = None,
        ids: Sequence[str] | None = None,
        saes: Any = None,
        device: str | None = None,
        dtype: str | None = None,
        show_progress: bool = True,
        **kwargs: Any,
    ) -> S3Retriever:
        """A retriever over a new index built with ``model``, optionally filled at once.

        Args:
            model: a model name/path or a :class:`~s3_retriever.LoadedModel` (share one
                between indexes to load it once).
            texts: texts to index (with ``metadatas`` and ``ids``).
            documents, nodes: LlamaIndex documents or nodes to index (see :meth:`add_nodes`).
            saes: SAE folder or mapping (default: the SAEs shipped for the model).
            device, dtype: where and how to load the model.
            show_progress: show the scan's progress bar.
            **kwargs: retriever settings (``similarity_top_k``, ``filters``,
                ``include_scores``, ``callback_manager``, ...) and
                :class:`~s3_retriever.S3Settings` fields (``mode``, ``fusion``,
                ``fusion_weight``, ``span_tokens``, ``chunk_tokens``, ...). Settings go to
                the new index, so they are saved with it.

        Example:
            >>> r = S3Retriever.from_model("smollm2-135m", texts=["Bach lived in Leipzig."],
            ...                            similarity_top_k=2, span_tokens=64)
        """
        settings, kwargs = split_settings(kwargs, _RETRIEVER_ARGS)
        if texts is None and (metadatas is not None or ids is not None):
            raise ValueError("metadatas and ids go with texts")
        index = S3Index.from_model(model, saes=saes, device=device, dtype=dtype, **settings)
        retriever = cls(index, **kwargs)
        if texts is not None:
            retriever.add_texts(texts, metadatas, ids, show_progress=show_progress)
        to_add = [*(nodes or []), *(documents or [])]
        if to_add:
            retriever.add_nodes(to_add, show_progress=show_progress)
        return retriever

    @classmethod
    def from_texts(cls, texts: Iterable[str],
                   metadatas: Sequence[Mapping[str, Any]] | None = None,
                   ids: Sequence[str] | None = None, *,
                   model: str | LoadedModel = DEFAULT_MODEL, **kwargs: Any) -> S3Retriever:
        """A retriever over a new index of ``texts`` (see :meth:`from_model`).

        Example:
            >>> r = S3Retriever.from_texts(["Bach lived in Leipzig."], ids=["bach"],
            ...                            metadatas=[{"topic": "music"}])
        """
        return cls.from_model(model, texts=texts, metadatas=metadatas, ids=ids, **kwargs)

    @classmethod
    def from_documents(cls, documents: Iterable[BaseNode], *,
                       model: str | LoadedModel = DEFAULT_MODEL, **kwargs: Any) -> S3Retriever:
        """A retriever over a new index of LlamaIndex documents or nodes (see
        :meth:`from_model`).

        Example:
            >>> from llama_index.core import Document
            >>> r = S3Retriever.from_documents([Document(text="Bach lived in Leipzig.")])
        """
        return cls.from_model(model, documents=documents, **kwargs)

    @classmethod
    def from_index(cls, index: S3Index | ShardedIndex, **kwargs: Any) -> S3Retriever:
        """A retriever over an existing index (shared, not copied): an ``S3Index`` or a
        read-only ``ShardedIndex``.

        Example:
            >>> from s3_retriever import S3Index
            >>> r = S3Retriever.from_index(S3Index.from_model("smollm2-135m"),
            ...                            similarity_top_k=3)
        """
        return cls(index, **kwargs)

    @classmethod
    def from_defaults(
        cls,
        nodes: Sequence[BaseNode] | None = None,
        documents: Sequence[BaseNode] | None = None,
        index: Any = None,
        model: str | LoadedModel = DEFAULT_MODEL,
        *,
        show_progress: bool = True,
        **kwargs: Any,
    ) -> S3Retriever:
        """Build a retriever and index ``nodes`` / ``documents`` with it (the LlamaIndex
        habit; :meth:`from_model` and :meth:`from_index` are the same with explicit roles).

        Args:
            nodes, documents: what to index (see :meth:`add_nodes`).
            index: an existing :class:`~s3_retriever.S3Index` to wrap (``nodes`` and
                ``documents`` are added to it), or a LlamaIndex index whose docstore nodes
                are indexed; None: a new index for ``model``.
            model: see :meth:`from_model` (ignored when ``index`` is an S3Index).
            show_progress: show the scan's progress bar.
            **kwargs: as for :meth:`from_model` (index settings only for a new index).

        Example:
            >>> from llama_index.core import Document
            >>> r = S3Retriever.from_defaults(
            ...     documents=[Document(text="Bach worked in Leipzig.")], mode="hybrid")
        """
        to_add = list(nodes or [])
        if index is not None and not is_index(index):
            docstore = getattr(index, "docstore", None)
            if docstore is None:
                raise TypeError(f"index must be an S3Index or a LlamaIndex index with a "
                                f"docstore, got {type(index).__name__}")
            to_add += list(docstore.docs.values())
            index = None
        to_add += list(documents or [])
        if index is None:
            return cls.from_model(model, nodes=to_add, show_progress=show_progress, **kwargs)
        retriever_kwargs = {k: v for k, v in kwargs.items() if k in _RETRIEVER_ARGS}
        rest = sorted(set(kwargs) - set(retriever_kwargs))
        if rest:
            raise TypeError(f"{rest} cannot be applied to an existing S3Index (index settings "
                            "are fixed when it is built)")
        retriever = cls(index, **retriever_kwargs)
        if to_add:
            retriever.add_nodes(to_add, show_progress=show_progress)
        return retriever

    # ----------------------------------------------------------------- content
    def add_nodes(self, nodes: Iterable[BaseNode], *, show_progress: bool = True) -> list[str]:
        """Index nodes (or documents) as S3 documents; returns their ids.

        Each keeps its ``node_id``, metadata, and lineage: a chunk's results point to its
        ``ref_doc_id`` and give offsets in that document's coordinates (the chunk's
        ``start_char_idx`` plus the offset inside it).

        Example:
            >>> from llama_index.core.schema import TextNode
            >>> retriever = S3Retriever.from_defaults(nodes=[TextNode(text="Kiwis are green.")])
            >>> retriever.add_nodes([TextNode(text="Bananas are yellow.", id_="b")])
            ['b']
        """
        texts, metas, ids = [], [], []
        for n in nodes:
            if not isinstance(n, BaseNode):
                raise TypeError(f"expected LlamaIndex nodes or documents, got {type(n).__name__}")
            meta = dict(n.metadata)
            if LINEAGE_KEY in meta:
                raise InvalidInputError(f"node {n.node_id!r}: metadata key {LINEAGE_KEY!r} is "
                                        "reserved for S3Retriever")
            lineage = _lineage(n)
            if lineage:
                meta[LINEAGE_KEY] = lineage
            texts.append(n.get_content(metadata_mode=MetadataMode.NONE))
            metas.append(meta)
            ids.append(n.node_id)
        return self._index.add_texts(texts, metas, ids, show_progress=show_progress)

    def add_documents(self, documents: Iterable[BaseNode], *,
                      show_progress: bool = True) -> list[str]:
        """Index LlamaIndex documents (the same as :meth:`add_nodes`)."""
        return self.add_nodes(documents, show_progress=show_progress)

    def add_texts(self, texts: Iterable[str],
                  metadatas: Sequence[Mapping[str, Any]] | None = None,
                  ids: Sequence[str] | None = None, *, show_progress: bool = True) -> list[str]:
        """Index plain texts; returns their ids (see :meth:`S3Index.add_texts`).

        Example:
            >>> retriever = S3Retriever.from_texts(["Kiwis are green."])
            >>> retriever.add_texts(["Bananas are yellow."], ids=["b"])
            ['b']
        """
        return self._index.add_texts(texts, metadatas, ids, show_progress=show_progress)

    async def aadd_nodes(self, nodes: Iterable[BaseNode], *,
                         show_progress: bool = True) -> list[str]:
        """Async :meth:`add_nodes` (the scan runs in a worker thread)."""
        return await asyncio.to_thread(self.add_nodes, list(nodes),
                                       show_progress=show_progress)

    async def aadd_documents(self, documents: Iterable[BaseNode], *,
                             show_progress: bool = True) -> list[str]:
        """Async :meth:`add_documents` (the scan runs in a worker thread)."""
        return await self.aadd_nodes(documents, show_progress=show_progress)

    async def aadd_texts(self, texts: Iterable[str],
                         metadatas: Sequence[Mapping[str, Any]] | None = None,
                         ids: Sequence[str] | None = None, *,
                         show_progress: bool = True) -> list[str]:
        """Async :meth:`add_texts` (the scan runs in a worker thread)."""
        return await asyncio.to_thread(self.add_texts, list(texts), metadatas, ids,
                                       show_progress=show_progress)

    def delete(self, ids: str | Iterable[str]) -> None:
        """Remove documents by id (``KeyError`` for an unknown id, nothing removed)."""
        self._index.delete(ids)

    async def adelete(self, ids: str | Iterable[str]) -> None:
        """Async :meth:`delete`."""
        await asyncio.to_thread(self.delete, ids)

    # ----------------------------------------------------------------- retrieval
    def _call_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(_CALL_ARGS))
        if unknown:
            raise TypeError(f"unknown retrieve arguments {unknown}; per call give "
                            f"{', '.join(_CALL_ARGS)}")
        top_k = options.get("similarity_top_k", self._top_k)
        budget = options.get("budget_tokens", self._budget_tokens)
        filters = (_checked_filters(options["filters"]) if "filters" in options
                   else self._engine_filters)
        return {"k": top_k, "budget_tokens": budget, "mode": options.get("mode", self._mode),
                "filters": filters, "doc_ids": options.get("doc_ids")}

    def retrieve(self, str_or_query_bundle: QueryType, **options: Any) -> list[NodeWithScore]:
        """Spans for a query; ``similarity_top_k``, ``budget_tokens``, ``mode``, ``filters``
        and ``doc_ids`` override the retriever's settings for this call."""
        token = _CALL.set(self._call_options(options))
        try:
            return super().retrieve(str_or_query_bundle)
        finally:
            _CALL.reset(token)

    async def aretrieve(self, str_or_query_bundle: QueryType,
                        **options: Any) -> list[NodeWithScore]:
        """Async :meth:`retrieve`: the search runs in a worker thread."""
        token = _CALL.set(self._call_options(options))
        try:
            return await super().aretrieve(str_or_query_bundle)
        finally:
            _CALL.reset(token)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        options = _CALL.get() or self._call_options({})
        fusion = {"fusion": self._fusion, "fusion_weight": self._fusion_weight,
                  "rrf_k": self._rrf_k}
        try:
            spans = self._index.search(query_bundle.query_str, **options,
                                       **{k: v for k, v in fusion.items() if v is not None})
        except EmptyIndexError:
            return []  # as a vector store does (the arguments were checked first)
        return [span_to_node(s, include_scores=self._include_scores) for s in spans]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # The search runs the model on the CPU/GPU: keep it off the event loop (the call's
        # options travel with the context).
        return await asyncio.to_thread(self._retrieve, query_bundle)

    # ----------------------------------------------------------------- persistence
    def get_persist_args(self) -> dict[str, Any]:
        """The retriever-level settings :meth:`save` stores (JSON-ready)."""
        return {"similarity_top_k": self._top_k, "budget_tokens": self._budget_tokens,
                "mode": self._mode, "filters": _filters_to_json(self._filters),
                "fusion": self._fusion, "fusion_weight": self._fusion_weight,
                "rrf_k": self._rrf_k, "include_scores": self._include_scores,
                "verbose": bool(self._verbose)}

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Save the retriever to the folder ``path``: the index in ``path/s3_index``
        (atomic) and the settings in ``path/s3_retriever.json``, so :meth:`load` gives it
        back as it was. Replacing a retriever saved there needs ``overwrite=True``; other
        files in ``path`` are kept, and neither name is replaced when it holds something
        that is not ours.

        Example:
            >>> from llama_index.core.schema import TextNode
            >>> retriever = S3Retriever.from_defaults(nodes=[TextNode(text="Kiwis are green.")])
            >>> retriever.save("./kiwis")
            PosixPath('kiwis')
        """
        return save_retriever(self._index, path, adapter=_ADAPTER,
                              settings=self.get_persist_args(), overwrite=overwrite)

    def persist(self, persist_dir: str | os.PathLike) -> Path:
        """:meth:`save`, replacing what an earlier ``persist`` wrote there, as LlamaIndex's
        own ``persist`` does.

        Example:
            >>> from llama_index.core.schema import TextNode
            >>> retriever = S3Retriever.from_defaults(nodes=[TextNode(text="Kiwis are green.")])
            >>> retriever.persist("./storage")
            PosixPath('storage')
        """
        return self.save(persist_dir, overwrite=True)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        model: str | LoadedModel | None = None,
        device: str | None = None,
        dtype: str | None = None,
        callback_manager: CallbackManager | None = None,
        **overrides: Any,
    ) -> S3Retriever:
        """Load a retriever saved by :meth:`save` / :meth:`persist`, every setting restored.

        ``path`` may also be a plain index folder written by ``S3Index.save`` or
        ``s3-retriever index`` (the retriever then gets default settings).

        Args:
            path: the folder given to :meth:`save`.
            model: an already loaded model (or a name/path) to reuse; default: the model
                recorded in the index, loaded afresh.
            **overrides: retriever settings that replace the stored ones
                (``similarity_top_k``, ``mode``, ``filters``, ``include_scores``, ...).

        Raises:
            FileNotFoundError: nothing saved at ``path``.
            ValueError: an unknown override, or settings saved by the LangChain adapter.

        Example:
            >>> from llama_index.core.schema import TextNode
            >>> S3Retriever.from_defaults(nodes=[TextNode(text="Kiwis are green.")],
            ...                           mode="bm25").persist("./storage")
            PosixPath('storage')
            >>> r = S3Retriever.load("./storage", similarity_top_k=8)
            >>> r.index.settings.mode, r.similarity_top_k  # mode: an index setting here
            ('bm25', 8)
        """
        unknown = set(overrides) - set(_PERSISTED)
        if unknown:
            raise ValueError(f"unknown retriever settings {sorted(unknown)}; "
                             f"known: {list(_PERSISTED)}")
        index_dir, stored = open_retriever(path, adapter=_ADAPTER)
        args = {k: stored[k] for k in _PERSISTED if k in stored}
        args["filters"] = _filters_from_json(args.get("filters"))
        args.update(overrides)
        index = load_index(index_dir, model=model, device=device, dtype=dtype)
        return cls(index, callback_manager=callback_manager, **args)

    from_persist_dir = load  # the LlamaIndex name

    def __repr__(self) -> str:
        return (f"S3Retriever(index={self._index!r}, similarity_top_k={self._top_k}, "
                f"budget_tokens={self._budget_tokens}, mode={self._mode!r}, "
                f"filters={self._engine_filters!r})")


def _checked_filters(filters: FiltersLike | None) -> Any:
    """Filters in the engine's language, checked now (a bad one fails here, not at search)."""
    engine = to_engine_filters(filters)
    return check_filters(engine) if engine else None


_ADAPTER = "llamaindex"
_PERSISTED = ("similarity_top_k", "budget_tokens", "mode", "filters", "fusion", "fusion_weight",
              "rrf_k", "include_scores", "verbose")
_RETRIEVER_ARGS = (*_PERSISTED, "callback_manager", "objects", "object_map")
_CALL_ARGS = ("similarity_top_k", "budget_tokens", "mode", "filters", "doc_ids")

__all__ = ["INDEX_FOLDER", "LINEAGE_KEY", "RETRIEVER_FILE", "S3Retriever", "span_to_node",
           "to_engine_filters"]
