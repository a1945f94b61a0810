"""``S3Retriever``: a LangChain retriever over an :class:`~s3_retriever.S3Index`.

Each result is one evidence span as a ``Document``: ``id`` ``"<doc_id>:<start>-<end>"``,
``page_content`` exactly the span, metadata the source's plus ``doc_id``, ``start_index``
and ``end_index`` (in the source's coordinates: a chunk's own ``start_index`` is added), and
with ``include_scores=True`` the scores, so that by default the same span compares equal
across queries (``MultiQueryRetriever``, ``EnsembleRetriever`` dedup).

Example:
    >>> from langchain_s3 import S3Retriever
    >>> retriever = S3Retriever.from_texts(
    ...     ["Marie Curie was born in Warsaw. She won two Nobel Prizes."],
    ...     metadatas=[{"source": "wiki"}], ids=["curie"], k=2)
    >>> docs = retriever.invoke("Where was Marie Curie born?", k=1)
    >>> docs[0].page_content, docs[0].metadata["doc_id"]
    ('Marie Curie was born in Warsaw. She won two Nobel Prizes.', 'curie')
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field, InstanceOf, StrictInt, model_validator

from s3_retriever import (
    DEFAULT_K,
    DEFAULT_MODEL,
    FUSIONS,
    MODES,
    EmptyIndexError,
    LoadedModel,
    S3Index,
    Span,
    check_filters,
)
from s3_retriever.adapters import (
    load_index,
    open_retriever,
    save_retriever,
    source_offset,
    split_settings,
)
from s3_retriever.distributed.shards import ShardedIndex

PositiveInt = Annotated[StrictInt, Field(gt=0)]

_UNSET: Any = object()
_CALL_KWARGS = ("k", "budget_tokens", "mode", "filter", "doc_ids")
_FUSION_FIELDS = ("fusion", "fusion_weight", "rrf_k")
# keys LangChain's own invoke() may leave in the keyword arguments it forwards
_IGNORED_KWARGS = frozenset({"verbose"})
_ADAPTER = "langchain"
_SAVED_FIELDS = ("k", "budget_tokens", "mode", "filter", "fusion", "fusion_weight", "rrf_k",
                 "include_scores", "search_kwargs")


def span_to_document(span: Span, *, include_scores: bool = False) -> Document:
    """A LangChain ``Document`` for one evidence span.

    When the indexed text was itself a chunk with an integer ``start_index`` in its
    metadata (``RecursiveCharacterTextSplitter(add_start_index=True)``), the span's
    ``start_index`` / ``end_index`` are in the original document's coordinates.
    ``doc_id`` is the indexed document's id unless its metadata already has a ``doc_id``
    (the source id a pipeline put there, kept as is).

    Example:
        >>> d = span_to_document(Span("c1", 4, 35, "Marie Curie was born in Warsaw.", 0.9,
        ...                           metadata={"source": "wiki", "start_index": 519}))
        >>> d.id, d.metadata["start_index"], d.metadata["end_index"], d.metadata["source"]
        ('c1:4-35', 523, 554, 'wiki')
        >>> "score" in d.metadata, span_to_document(Span("c", 0, 1, "x", 0.5),
        ...                                         include_scores=True).metadata["score"]
        (False, 0.5)
    """
    metadata = dict(span.metadata)
    base = source_offset(metadata, "start_index")
    metadata.setdefault("doc_id", span.doc_id)  # the caller's own doc_id key wins
    metadata.update(start_index=base + span.start_char, end_index=base + span.end_char)
    if include_scores:
        metadata.update(score=float(span.score), s3_score=span.s3_score,
                        bm25_score=span.bm25_score)
    return Document(id=span.id, page_content=span.text, metadata=metadata)


def format_documents(documents: Sequence[Document]) -> str:
    """Number retrieved documents one per line, ready for a RAG prompt's context slot.

    Whitespace inside each document is collapsed, as in the core's own answer prompt.

    Example:
        >>> print(format_documents([Document("Paris is\\nbig."), Document("Rome too.")]))
        [1] Paris is big.
        [2] Rome too.
    """
    return "\n".join(f"[{i}] {' '.join(d.page_content.split())}"
                     for i, d in enumerate(documents, 1))


class S3Retriever(BaseRetriever):
    """LangChain retriever returning S3-Attention evidence spans as ``Document`` objects.

    Every search setting can be given at construction (the retriever's default) and ``k``,
    ``budget_tokens``, ``mode``, ``filter`` and ``doc_ids`` again per call:
    ``retriever.invoke(q, k=3, filter={"topic": "music"})``; ``ainvoke`` takes the same
    keywords and runs the search in a worker thread, so the event loop is never blocked.

    Attributes:
        index: the :class:`~s3_retriever.S3Index` searched (excluded from serialisation).
        k: how many spans to return (None: as many as fit ``budget_tokens``).
        budget_tokens: stop when the spans fill this many tokens (None: no budget).
        mode: ``"hybrid"``, ``"s3"`` or ``"bm25"``; None uses the index's setting.
        filter: metadata conditions: ``{"key": value}``, ``{"key": [v1, v2]}`` or
            ``{"key": {"$gt": 2000}}``, nested ``$and`` / ``$or`` / ``$not`` (Chroma and
            PGVector syntax; see ``docs/filters.md``); documents that do not match are
            excluded before ranking.
        fusion, fusion_weight, rrf_k: hybrid fusion overrides (None: the index's settings).
        include_scores: add ``score``, ``s3_score`` and ``bm25_score`` to each result's
            metadata (off by default, so the same span compares equal across queries).
        search_kwargs: per-call options applied to every call (``{"k": 3, "filter": ...}``,
            the vector-store retriever habit); explicit call keywords still win.

    Example:
        >>> retriever = S3Retriever.from_texts(["The secret code word is Zanzibar."],
        ...                                    k=1)
        >>> retriever.invoke("What is the code word?")[0].page_content
        'The secret code word is Zanzibar.'
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    index: InstanceOf[S3Index] | InstanceOf[ShardedIndex] = Field(exclude=True, repr=False)
    k: PositiveInt | None = DEFAULT_K
    budget_tokens: PositiveInt | None = None
    mode: Literal[MODES] | None = None  # type: ignore[valid-type]  (one definition)
    filter: dict[str, Any] | None = None
    fusion: Literal[FUSIONS] | None = None  # type: ignore[valid-type]
    fusion_weight: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    rrf_k: PositiveInt | None = None
    include_scores: bool = False
    search_kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_limits(self) -> S3Retriever:
        if self.k is None and self.budget_tokens is None:
            raise ValueError("give k, budget_tokens or both")
        self._call_options(dict(self.search_kwargs))  # unknown keys fail at construction
        if self.filter is not None:
            check_filters(self.filter, "filter")  # a filter the engine would refuse fails here, not later
        return self

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_model(cls, model: str | LoadedModel = DEFAULT_MODEL,
                   texts: Iterable[str] | None = None,
                   documents: Iterable[Any] | None = None, *,
                   metadatas: Sequence[Mapping[str, Any]] | None = None,
                   ids: Sequence[str] | None = None, saes: Any = None,
                   device: str | None = None, dtype: str | None = None,
                   show_progress: bool = True, **kwargs: Any) -> S3Retriever:
        """A retriever over a new index built with ``model``, optionally filled at once.

        Args:
            model: a model name/path for :func:`~s3_retriever.load_model` or a loaded model
                (share one :class:`~s3_retriever.LoadedModel` between indexes to save memory).
            texts: texts to index (with ``metadatas`` and ``ids``).
            documents: LangChain documents to index (``page_content``, ``metadata``, ``id``).
            saes: SAEs for the index (default: those shipped for the model).
            **kwargs: retriever fields (``k``, ``budget_tokens``, ``filter``, ``tags``, ...)
                and :class:`~s3_retriever.S3Settings` fields (``mode``, ``fusion``,
                ``fusion_weight``, ``span_tokens``, ``chunk_tokens``, ...). Settings go to
                the new index, so they are saved with it.

        Example:
            >>> r = S3Retriever.from_model("smollm2-135m", texts=["Bach lived in Leipzig."],
            ...                            k=2, span_tokens=64)
        """
        settings, kwargs = split_settings(kwargs, set(cls.model_fields) - {"index"})
        index = S3Index.from_model(model, saes=saes, device=device, dtype=dtype, **settings)
        retriever = cls(index=index, **kwargs)
        if texts is not None:
            retriever.add_texts(texts, metadatas, ids, show_progress=show_progress)
        elif metadatas is not None or ids is not None:
            raise ValueError("metadatas and ids go with texts")
        if documents is not None:
            retriever.add_documents(documents, show_progress=show_progress)
        return retriever

    @classmethod
    def from_texts(cls, texts: Iterable[str],
                   metadatas: Sequence[Mapping[str, Any]] | None = None,
                   ids: Sequence[str] | None = None, *,
                   model: str | LoadedModel = DEFAULT_MODEL, **kwargs: Any) -> S3Retriever:
        """A retriever over a new index of ``texts`` (see :meth:`from_model` for ``kwargs``).

        Example:
            >>> r = S3Retriever.from_texts(["Bach lived in Leipzig."], ids=["bach"],
            ...                            metadatas=[{"topic": "music"}])
        """
        return cls.from_model(model, texts=texts, metadatas=metadatas, ids=ids, **kwargs)

    @classmethod
    def from_documents(cls, documents: Iterable[Any], *,
                       model: str | LoadedModel = DEFAULT_MODEL, **kwargs: Any) -> S3Retriever:
        """A retriever over a new index of LangChain documents (ids kept when set).

        Example:
            >>> from langchain_core.documents import Document
            >>> r = S3Retriever.from_documents(
            ...     [Document("Bach lived in Leipzig.", id="bach")])
        """
        return cls.from_model(model, documents=documents, **kwargs)

    @classmethod
    def from_index(cls, index: S3Index | ShardedIndex, **kwargs: Any) -> S3Retriever:
        """A retriever over an existing index (shared, not copied): an ``S3Index`` or a
        read-only ``ShardedIndex`` (in-process or served by Ray actors).

        Example:
            >>> from s3_retriever import S3Index
            >>> r = S3Retriever.from_index(S3Index.from_model("smollm2-135m"), k=3)
        """
        return cls(index=index, **kwargs)

    @classmethod
    def load(cls, path: str | os.PathLike, *, model: str | LoadedModel | None = None,
             device: str | None = None, dtype: str | None = None,
             **kwargs: Any) -> S3Retriever:
        """Open a retriever saved with :meth:`save` (the index verified), its fields as
        they were saved; ``path`` may also be a bare index folder (``S3Index.save``, the
        CLI), which gets default fields.

        Args:
            path: the folder given to :meth:`save`, or an index folder.
            model: the model to use (default: the one named in the index); it must be the
                model the index was built with.
            **kwargs: retriever fields (``k``, ``mode``, ``filter``, ...) that replace the
                saved ones.

        Raises:
            FileNotFoundError: nothing saved at ``path``.
            s3_retriever.IndexFormatError: a corrupt index or a different model.

        Example:
            >>> S3Retriever.from_texts(["Bach lived in Leipzig."]).save("book.s3")
            PosixPath('book.s3')
            >>> r = S3Retriever.load("book.s3", k=3)
            >>> r.invoke("Where did Bach live?")[0].page_content
            'Bach lived in Leipzig.'
        """
        index_dir, fields = open_retriever(path, adapter=_ADAPTER)
        index = load_index(index_dir, model=model, device=device, dtype=dtype)
        return cls(index=index, **{**fields, **kwargs})

    # ------------------------------------------------------------------ index upkeep
    def add_texts(self, texts: Iterable[str],
                  metadatas: Sequence[Mapping[str, Any]] | None = None,
                  ids: Sequence[str] | None = None, *, show_progress: bool = True) -> list[str]:
        """Scan and index ``texts``; returns their ids (see :meth:`S3Index.add_texts`).

        Example:
            >>> retriever = S3Retriever.from_texts(["Marie Curie was born in Warsaw."])
            >>> retriever.add_texts(["Bach lived in Leipzig."], ids=["bach"])
            ['bach']
        """
        return self.index.add_texts(texts, metadatas, ids, show_progress=show_progress)

    def add_documents(self, documents: Iterable[Any], ids: Sequence[str] | None = None, *,
                      show_progress: bool = True) -> list[str]:
        """Index LangChain documents; ``ids`` (else each document's ``id``, else an id made
        from its text and metadata, the same on every run) name them for :meth:`delete` and
        in results' ``doc_id``. Pre-chunked documents keep their metadata, and a chunk's
        ``start_index`` shifts its results' offsets into the original document.

        Example:
            >>> from langchain_core.documents import Document
            >>> retriever = S3Retriever.from_texts(["Marie Curie was born in Warsaw."])
            >>> retriever.add_documents([Document("Bach lived in Leipzig.",
            ...                                   metadata={"topic": "music"})],
            ...                         ids=["bach"])
            ['bach']
        """
        documents = list(documents)
        if ids is not None and len(ids) != len(documents):
            raise ValueError(f"{len(ids)} ids for {len(documents)} documents")
        given = list(ids) if ids is not None else [getattr(d, "id", None) if not
                                                    isinstance(d, Mapping) else d.get("id")
                                                    for d in documents]
        documents = [{"page_content": _content(d), "metadata": _metadata(d),
                      "id": i if i is not None else _stable_id(_content(d), _metadata(d))}
                     for d, i in zip(documents, given)]
        return self.index.add_documents(documents, show_progress=show_progress)

    async def aadd_documents(self, documents: Iterable[Any], ids: Sequence[str] | None = None,
                             *, show_progress: bool = True) -> list[str]:
        """Async :meth:`add_documents` (the scan runs in a worker thread)."""
        return await run_in_executor(None, lambda: self.add_documents(
            documents, ids, show_progress=show_progress))

    async def aadd_texts(self, texts: Iterable[str],
                         metadatas: Sequence[Mapping[str, Any]] | None = None,
                         ids: Sequence[str] | None = None, *,
                         show_progress: bool = True) -> list[str]:
        """Async :meth:`add_texts` (the scan runs in a worker thread)."""
        return await run_in_executor(None, lambda: self.add_texts(
            texts, metadatas, ids, show_progress=show_progress))

    def delete(self, ids: str | Iterable[str]) -> None:
        """Remove documents by id; an unknown id raises ``KeyError`` and deletes nothing.

        Example:
            >>> retriever = S3Retriever.from_texts(["Bach lived in Leipzig."], ids=["bach"])
            >>> retriever.delete(["bach"])
            >>> len(retriever.index)
            0
        """
        self.index.delete(ids)

    async def adelete(self, ids: str | Iterable[str]) -> None:
        """Async :meth:`delete`."""
        await run_in_executor(None, self.delete, ids)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Save the retriever to the folder ``path``: the index in ``path/s3_index``
        (atomic, see ``S3Index.save``) and the retriever's fields (``k``, ``filter``, ...)
        in ``path/s3_retriever.json``, so :meth:`load` gives it back as it was. Replacing
        a retriever saved there before needs ``overwrite=True``; other files are kept.

        Example:
            >>> retriever = S3Retriever.from_texts(["Marie Curie was born in Warsaw."])
            >>> retriever.save("notes.s3")
            PosixPath('notes.s3')
        """
        fields = self.model_dump(include=set(_SAVED_FIELDS))
        return save_retriever(self.index, path, adapter=_ADAPTER, settings=fields,
                              overwrite=overwrite)

    # ------------------------------------------------------------------ retrieval
    def _call_options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs = {**self.search_kwargs, **kwargs}
        unknown = sorted(set(kwargs) - set(_CALL_KWARGS) - _IGNORED_KWARGS)
        if unknown:
            raise TypeError(f"unknown search arguments {unknown}; per call give "
                            f"{', '.join(_CALL_KWARGS)}")
        return {"k": kwargs.get("k", self.k),
                "budget_tokens": kwargs.get("budget_tokens", self.budget_tokens),
                "mode": kwargs.get("mode", self.mode),
                "filters": kwargs.get("filter", self.filter),
                "doc_ids": kwargs.get("doc_ids")}

    def _search(self, query: str, options: dict[str, Any]) -> list[Document]:
        overrides = {f: getattr(self, f) for f in _FUSION_FIELDS if getattr(self, f) is not None}
        try:
            spans = self.index.search(query, **options, **overrides)
        except EmptyIndexError:
            return []  # as a vector store does (arguments were checked before this)
        return [span_to_document(s, include_scores=self.include_scores) for s in spans]

    def _get_relevant_documents(self, query: str, *,
                                run_manager: CallbackManagerForRetrieverRun,
                                **kwargs: Any) -> list[Document]:
        """Spans for ``query``; keywords ``k``, ``budget_tokens``, ``mode``, ``filter`` and
        ``doc_ids`` override the retriever's fields for this call."""
        return self._search(query, self._call_options(kwargs))

    async def _aget_relevant_documents(self, query: str, *,
                                       run_manager: AsyncCallbackManagerForRetrieverRun,
                                       **kwargs: Any) -> list[Document]:
        """Async :meth:`_get_relevant_documents`: the search runs in a worker thread."""
        options = self._call_options(kwargs)
        return await run_in_executor(None, self._search, query, options)


def _content(doc: Any) -> str:
    get = doc.get if isinstance(doc, Mapping) else lambda k: getattr(doc, k, None)
    text = get("page_content")
    return get("text") if text is None else text


def _stable_id(text: str, metadata: Mapping[str, Any]) -> str:
    """An id for a document without one: a hash of its text and metadata, so the same
    chunk gets the same id on every run."""
    key = json.dumps([text, metadata], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def _metadata(doc: Any) -> dict[str, Any]:
    meta = doc.get("metadata") if isinstance(doc, Mapping) else getattr(doc, "metadata", None)
    return dict(meta or {})


__all__ = ["S3Retriever", "format_documents", "span_to_document"]
