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
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
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
    MODES,
    IndexNotFoundError,
    LoadedModel,
    OutputExistsError,
    S3Index,
    Span,
)
from s3_retriever.storage import read_json, write_json

logger = logging.getLogger(__name__)

#: The file next to the saved index that holds the retriever-level settings.
RETRIEVER_FILE = "s3_retriever.json"
#: The sub-folder of a persist dir that holds the saved :class:`S3Index`.
INDEX_FOLDER = "s3_index"
_FORMAT = "s3-retriever-llamaindex"
_FORMAT_VERSION = 1

#: Span metadata keys added to every returned node; hidden from the LLM and embeddings.
SCORE_KEYS = ("s3_score", "bm25_score")

_PERSISTED = ("similarity_top_k", "budget_tokens", "mode", "filters", "verbose")

FiltersLike = MetadataFilters | Mapping[str, Any]


# --------------------------------------------------------------------------- filters
def _as_list(value: Any, key: str, op: str) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"metadata filter {key!r} {op!r} needs a list of values, got {value!r}")
    return list(value)


def _flatten(filters: MetadataFilters) -> list[MetadataFilter]:
    cond = filters.condition if filters.condition is not None else FilterCondition.AND
    if FilterCondition(cond) != FilterCondition.AND:
        raise ValueError(
            f"S3Retriever supports only AND-combined metadata filters, got condition "
            f"{FilterCondition(cond).value!r}; split an OR into several retrievers "
            "(e.g. a QueryFusionRetriever) instead")
    out: list[MetadataFilter] = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            out += _flatten(f)
        elif isinstance(f, MetadataFilter):  # ExactMatchFilter is an alias of it
            out.append(f)
        else:
            raise TypeError(f"unsupported metadata filter {f!r}")
    return out


def to_engine_filters(filters: FiltersLike | None) -> dict[str, Any] | None:
    """Translate LlamaIndex ``MetadataFilters`` into the engine's filter dict.

    Supported: ``EQ``, ``NE``, ``IN``, ``NIN`` combined with ``AND`` (nested AND groups
    are flattened; several conditions on one key are intersected). A plain dict is
    taken as engine filters as it is. Anything else raises ``ValueError``.

    Example:
        >>> from llama_index.core.vector_stores.types import (
        ...     FilterOperator, MetadataFilter, MetadataFilters)
        >>> to_engine_filters(MetadataFilters(filters=[
        ...     MetadataFilter(key="lang", value="en"),
        ...     MetadataFilter(key="year", value=[2023, 2024], operator=FilterOperator.IN),
        ...     MetadataFilter(key="src", value="spam", operator=FilterOperator.NE)]))
        {'lang': {'$in': ['en']}, 'year': {'$in': [2023, 2024]}, 'src': {'$nin': ['spam']}}
    """
    if filters is None:
        return None
    if isinstance(filters, Mapping):
        return dict(filters)
    if not isinstance(filters, MetadataFilters):
        raise TypeError(f"filters must be MetadataFilters or a dict of engine filters, got "
                        f"{type(filters).__name__}")
    out: dict[str, dict[str, list[Any]]] = {}
    for f in _flatten(filters):
        op = FilterOperator(f.operator)
        if op in (FilterOperator.EQ, FilterOperator.NE):
            values = [f.value]
        elif op in (FilterOperator.IN, FilterOperator.NIN):
            values = _as_list(f.value, f.key, op.value)
        else:
            raise ValueError(
                f"metadata filter operator {op.name} ({op.value!r}) on {f.key!r} is not "
                "supported by S3Retriever; use EQ, NE, IN or NIN")
        conds = out.setdefault(f.key, {})
        if op in (FilterOperator.EQ, FilterOperator.IN):
            if "$in" in conds:  # AND of two positive conditions: their intersection
                values = [v for v in conds["$in"] if v in values]
            conds["$in"] = values
        else:
            conds["$nin"] = conds.get("$nin", []) + [v for v in values
                                                     if v not in conds.get("$nin", [])]
    return out


def _is_settings_file(path: Path) -> bool:
    try:
        stored = read_json(path)
    except ValueError:
        return False
    return isinstance(stored, dict) and stored.get("format") == _FORMAT


def _filters_to_json(filters: FiltersLike | None) -> dict[str, Any] | None:
    if filters is None:
        return None
    if isinstance(filters, MetadataFilters):
        return {"type": "llama_index", "value": filters.model_dump(mode="json")}
    return {"type": "engine", "value": dict(filters)}


def _filters_from_json(data: Mapping[str, Any] | None) -> FiltersLike | None:
    if data is None:
        return None
    if data.get("type") == "llama_index":
        return MetadataFilters.model_validate(data["value"])
    if data.get("type") == "engine":
        return dict(data["value"])
    raise ValueError(f"unknown stored filters {data!r}")


# --------------------------------------------------------------------------- nodes
def span_to_node(span: Span) -> NodeWithScore:
    """One engine :class:`~s3_retriever.Span` as a ``NodeWithScore``.

    The node's metadata is the document's metadata plus ``s3_score`` and ``bm25_score``
    (the component scores; excluded from the LLM and embedding views of the node).

    Example:
        >>> from s3_retriever import Span
        >>> hit = span_to_node(Span("doc", 4, 9, "quick", 0.7, bm25_score=1.2,
        ...                         metadata={"lang": "en"}))
        >>> hit.node.node_id, hit.score, hit.node.source_node.node_id
        ('doc:4-9', 0.7, 'doc')
        >>> hit.node.get_content(metadata_mode="llm")
        'lang: en\\n\\nquick'
    """
    meta = dict(span.metadata)
    meta.update({"s3_score": span.s3_score, "bm25_score": span.bm25_score})
    node = TextNode(
        id_=span.id,
        text=span.text,
        start_char_idx=span.start_char,
        end_char_idx=span.end_char,
        metadata=meta,
        excluded_llm_metadata_keys=list(SCORE_KEYS),
        excluded_embed_metadata_keys=list(SCORE_KEYS),
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(
            node_id=span.doc_id, node_type=ObjectType.DOCUMENT,
            metadata=dict(span.metadata))},
    )
    return NodeWithScore(node=node, score=float(span.score))


def _positive_int(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


# --------------------------------------------------------------------------- retriever
class S3Retriever(BaseRetriever):
    """Evidence spans from an S3-Attention index, as LlamaIndex nodes.

    Args:
        index: the :class:`~s3_retriever.S3Index` to search (may be shared).
        similarity_top_k: spans per query (may be None when ``budget_tokens`` is given).
        budget_tokens: fill this many tokens with spans (as well as stopping at top k).
        mode: ``"hybrid"``, ``"s3"`` or ``"bm25"``; None: the index's default mode.
        filters: ``MetadataFilters`` (EQ/NE/IN/NIN, AND) or an engine filter dict;
            non-matching documents are excluded before ranking.
        callback_manager, objects, object_map, verbose: as for any LlamaIndex retriever.

    ``similarity_top_k``, ``budget_tokens``, ``mode`` and ``filters`` are attributes that
    can be changed on an instance; they are validated on assignment.

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
        callback_manager: CallbackManager | None = None,
        objects: list[IndexNode] | None = None,
        object_map: dict | None = None,
        verbose: bool = False,
    ) -> None:
        if not isinstance(index, S3Index):
            raise TypeError(f"index must be an S3Index, got {type(index).__name__}")
        self._index = index
        self._budget_tokens: int | None = None
        self._top_k: int | None = DEFAULT_K
        self.budget_tokens = budget_tokens
        self.similarity_top_k = similarity_top_k
        self.mode = mode
        self.filters = filters
        super().__init__(callback_manager=callback_manager, object_map=object_map,
                         objects=objects, verbose=verbose)

    # ----------------------------------------------------------------- settings
    @property
    def index(self) -> S3Index:
        """The underlying :class:`~s3_retriever.S3Index`."""
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
        if value is None and getattr(self, "_top_k", 4) is None:
            raise ValueError("similarity_top_k is None: a budget_tokens is required")
        self._budget_tokens = value

    @property
    def mode(self) -> str | None:
        """The retrieval mode (None: the index's default)."""
        return self._mode

    @mode.setter
    def mode(self, value: str | None) -> None:
        if value is not None and value not in MODES:
            raise ValueError(f"mode must be one of {MODES} or None, got {value!r}")
        self._mode = value

    @property
    def filters(self) -> FiltersLike | None:
        """The metadata filters applied to every query (None: no filter)."""
        return self._filters

    @filters.setter
    def filters(self, value: FiltersLike | None) -> None:
        self._engine_filters = to_engine_filters(value)  # validates early
        self._filters = value

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_model(
        cls,
        model: str | LoadedModel = DEFAULT_MODEL,
        *,
        saes: Any = None,
        device: str | None = None,
        dtype: str | None = None,
        similarity_top_k: int | None = DEFAULT_K,
        budget_tokens: int | None = None,
        mode: str | None = None,
        filters: FiltersLike | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
        **settings: Any,
    ) -> S3Retriever:
        """A retriever over a new, empty index for ``model`` (add text with
        :meth:`add_documents` / :meth:`add_nodes`).

        Args:
            model: a model name/path or a :class:`~s3_retriever.LoadedModel`.
            saes: SAE folder or mapping (default: the SAEs shipped for the model).
            device, dtype: where and how to load the model.
            **settings: :class:`~s3_retriever.S3Settings` fields of the new index
                (``fusion``, ``span_tokens``, ``chunk_tokens``, ...).

        Example:
            >>> r = S3Retriever.from_model("smollm2-135m", span_tokens=64)
        """
        index = S3Index.from_model(model, saes=saes, device=device, dtype=dtype, **settings)
        return cls(index, similarity_top_k=similarity_top_k, budget_tokens=budget_tokens,
                   mode=mode, filters=filters, callback_manager=callback_manager,
                   verbose=verbose)

    @classmethod
    def from_defaults(
        cls,
        nodes: Sequence[BaseNode] | None = None,
        documents: Sequence[BaseNode] | None = None,
        index: Any = None,
        model: str | LoadedModel = DEFAULT_MODEL,
        *,
        saes: Any = None,
        device: str | None = None,
        dtype: str | None = None,
        similarity_top_k: int | None = DEFAULT_K,
        budget_tokens: int | None = None,
        mode: str | None = None,
        filters: FiltersLike | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
        show_progress: bool = False,
        **settings: Any,
    ) -> S3Retriever:
        """Build a retriever and index ``nodes`` / ``documents`` with it.

        Args:
            nodes: nodes to index; each becomes one S3 document (id = ``node_id``, text =
                the node's content without metadata, metadata = ``node.metadata``).
            documents: LlamaIndex documents, indexed the same way.
            index: an existing :class:`~s3_retriever.S3Index` to wrap (``nodes`` and
                ``documents`` are added to it), or a LlamaIndex index whose docstore nodes
                are indexed; None: a new index for ``model``.
            model, saes, device, dtype, **settings: see :meth:`from_model` (ignored when
                ``index`` is an S3Index).
            similarity_top_k, budget_tokens, mode, filters: see :class:`S3Retriever`.
            show_progress: show the scan's progress bar.

        Example:
            >>> from llama_index.core import Document
            >>> r = S3Retriever.from_defaults(
            ...     documents=[Document(text="Bach worked in Leipzig.")], mode="hybrid")
        """
        nodes = list(nodes or [])
        if index is not None and not isinstance(index, S3Index):
            docstore = getattr(index, "docstore", None)
            if docstore is None:
                raise TypeError(f"index must be an S3Index or a LlamaIndex index with a "
                                f"docstore, got {type(index).__name__}")
            nodes += list(docstore.docs.values())
            index = None
        if index is None:
            retriever = cls.from_model(model, saes=saes, device=device, dtype=dtype,
                                       similarity_top_k=similarity_top_k,
                                       budget_tokens=budget_tokens, mode=mode, filters=filters,
                                       callback_manager=callback_manager, verbose=verbose,
                                       **settings)
        else:
            if settings:
                raise TypeError(f"index settings {sorted(settings)} cannot be applied to an "
                                "existing S3Index")
            retriever = cls(index, similarity_top_k=similarity_top_k,
                            budget_tokens=budget_tokens, mode=mode, filters=filters,
                            callback_manager=callback_manager, verbose=verbose)
        to_add = nodes + list(documents or [])
        if to_add:
            retriever.add_nodes(to_add, show_progress=show_progress)
        return retriever

    # ----------------------------------------------------------------- content
    def add_nodes(self, nodes: Sequence[BaseNode], *, show_progress: bool = False) -> list[str]:
        """Index nodes (or documents) as S3 documents; returns their ids.

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
            texts.append(n.get_content(metadata_mode=MetadataMode.NONE))
            metas.append(dict(n.metadata))
            ids.append(n.node_id)
        return self._index.add_texts(texts, metas, ids, show_progress=show_progress)

    def add_documents(self, documents: Sequence[BaseNode], *,
                      show_progress: bool = False) -> list[str]:
        """Index LlamaIndex documents (same as :meth:`add_nodes`)."""
        return self.add_nodes(documents, show_progress=show_progress)

    def delete(self, ids: Iterable[str]) -> None:
        """Remove documents by id (``KeyError`` for an unknown id, nothing removed)."""
        self._index.delete(list(ids))

    # ----------------------------------------------------------------- retrieval
    def _search(self, query: str) -> list[Span]:
        return self._index.search(query, k=self._top_k, budget_tokens=self._budget_tokens,
                                  mode=self._mode, filters=self._engine_filters)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [span_to_node(s) for s in self._search(query_bundle.query_str)]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # The search runs the model on the CPU/GPU: keep it off the event loop.
        return await asyncio.to_thread(self._retrieve, query_bundle)

    # ----------------------------------------------------------------- persistence
    def get_persist_args(self) -> dict[str, Any]:
        """The retriever-level settings :meth:`persist` stores (JSON-ready)."""
        return {"similarity_top_k": self._top_k, "budget_tokens": self._budget_tokens,
                "mode": self._mode, "filters": _filters_to_json(self._filters),
                "verbose": bool(self._verbose)}

    def persist(self, persist_dir: str | os.PathLike) -> Path:
        """Save the index (``persist_dir/s3_index``, atomic) and the retriever settings
        (``persist_dir/s3_retriever.json``), replacing what an earlier ``persist`` wrote
        there, as LlamaIndex's own ``persist`` does. Other files in ``persist_dir`` are kept,
        and neither name is ever replaced when it holds something that is not ours.

        Example:
            >>> from llama_index.core.schema import TextNode
            >>> retriever = S3Retriever.from_defaults(nodes=[TextNode(text="Kiwis are green.")])
            >>> retriever.persist("./storage")
            PosixPath('storage')
        """
        folder = Path(persist_dir)
        if folder.exists() and not folder.is_dir():
            raise OutputExistsError(f"{folder}: exists and is not a folder")
        settings_file = folder / RETRIEVER_FILE
        if settings_file.exists() and not _is_settings_file(settings_file):
            raise OutputExistsError(f"{settings_file}: not a file S3Retriever.persist wrote; "
                                    "refusing to replace it")
        self._index.save(folder / INDEX_FOLDER, overwrite=True)  # only ever an index of ours
        write_json(settings_file, {"format": _FORMAT, "format_version": _FORMAT_VERSION,
                                   **self.get_persist_args()})
        return folder

    @classmethod
    def from_persist_dir(
        cls,
        persist_dir: str | os.PathLike,
        *,
        model: str | LoadedModel | None = None,
        device: str | None = None,
        dtype: str | None = None,
        callback_manager: CallbackManager | None = None,
        **overrides: Any,
    ) -> S3Retriever:
        """Load a retriever saved by :meth:`persist`, with every setting restored.

        ``persist_dir`` may also be a plain index folder written by ``S3Index.save`` or
        ``s3-retriever index`` (the retriever then gets default settings).

        Args:
            persist_dir: the folder given to :meth:`persist`.
            model: an already loaded model (or a name/path) to reuse; default: the model
                recorded in the index, loaded afresh.
            **overrides: retriever settings that replace the stored ones
                (``similarity_top_k``, ``budget_tokens``, ``mode``, ``filters``, ``verbose``).

        Raises:
            FileNotFoundError: ``persist_dir`` does not exist.
            ValueError: an unknown override, or a settings file of another format.

        Example:
            >>> from llama_index.core.schema import TextNode
            >>> S3Retriever.from_defaults(nodes=[TextNode(text="Kiwis are green.")],
            ...                           mode="bm25").persist("./storage")
            PosixPath('storage')
            >>> r = S3Retriever.from_persist_dir("./storage", similarity_top_k=8)
            >>> r.mode, r.similarity_top_k
            ('bm25', 8)
        """
        folder = Path(persist_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: persist dir not found (save one with "
                                    "S3Retriever.persist)")
        unknown = set(overrides) - set(_PERSISTED)
        if unknown:
            raise ValueError(f"unknown retriever settings {sorted(unknown)}; "
                             f"known: {list(_PERSISTED)}")
        settings_file = folder / RETRIEVER_FILE
        if settings_file.is_file():
            stored = read_json(settings_file)
            if not isinstance(stored, dict) or stored.get("format") != _FORMAT:
                raise ValueError(f"{settings_file}: not an S3Retriever settings file")
            if stored.get("format_version") != _FORMAT_VERSION:
                raise ValueError(f"{settings_file}: format version "
                                 f"{stored.get('format_version')!r}, expected {_FORMAT_VERSION}")
            args = {k: stored[k] for k in _PERSISTED if k in stored}
            args["filters"] = _filters_from_json(args.get("filters"))
            index_dir = folder / INDEX_FOLDER
        elif S3Index.exists(folder):
            logger.info("%s holds a bare S3Index: using default retriever settings", folder)
            args, index_dir = {}, folder
        else:
            raise IndexNotFoundError(f"{folder}: neither {RETRIEVER_FILE} nor an index found "
                                     "(save one with S3Retriever.persist)")
        args.update(overrides)
        index = S3Index.load(index_dir, model=model, device=device, dtype=dtype)
        return cls(index, callback_manager=callback_manager, **args)

    def __repr__(self) -> str:
        return (f"S3Retriever(index={self._index!r}, similarity_top_k={self._top_k}, "
                f"budget_tokens={self._budget_tokens}, mode={self._mode!r}, "
                f"filters={self._engine_filters!r})")


__all__ = ["S3Retriever", "span_to_node", "to_engine_filters", "RETRIEVER_FILE", "INDEX_FOLDER"]
