"""The LangChain integration (``langchain_s3``) end to end on the real embedded model."""

# The LangChain integration (``langchain_s3``) on the real embedded model: the standard
# retriever suite, the Document contract, per-call options (sync and async), filters,
# persistence, errors, the chat model in an LCEL RAG chain, and the quickstart example.

from __future__ import annotations

import asyncio
import runpy
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableParallel, RunnablePassthrough
from langchain_s3 import ChatS3, S3Retriever, format_documents
from langchain_tests.integration_tests import RetrieversIntegrationTests

import s3_retriever.engine as engine
from s3_retriever import OutputExistsError, S3Index
from s3_retriever.generate import SYSTEM_PROMPT
from s3_retriever.sae.io import save_saes
from tests.helpers import TEXTS, assert_grounded

pytestmark = pytest.mark.model

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "langchain_quickstart.py"
SECRET = "The secret code word is Zanzibar. It opens the old library door. Nobody else knows it."
CORPUS = {
    "curie": (TEXTS[0], {"topic": "science", "year": 1867}),
    "amazon": (TEXTS[1], {"topic": "nature"}),
    "bach": (TEXTS[2], {"topic": "music"}),
    "secret": (SECRET, {"topic": "secret", "source": "note"}),
}
QUESTION = "Where was Marie Curie born?"


@pytest.fixture(scope="session")
def make_index(lm, saes):
    """Build an empty index on the session's model (cheap: no model load)."""
    def make(**settings) -> S3Index:
        return S3Index.from_model(lm, saes=saes, **settings)
    return make


@pytest.fixture(scope="session")
def corpus_index(make_index):
    """The shared, read-only index of ``CORPUS`` (tests that modify an index build their own)."""
    index = make_index()
    index.add_texts([t for t, _ in CORPUS.values()], [m for _, m in CORPUS.values()],
                    list(CORPUS), show_progress=False)
    return index


@pytest.fixture()
def retriever(corpus_index):
    return S3Retriever.from_index(corpus_index, k=3, include_scores=True)


def _key(docs):
    return [(d.id, round(d.metadata["score"], 9)) for d in docs]


# ---------------------------------------------------------------- the standard suite
class TestS3RetrieverStandard(RetrieversIntegrationTests):
    """langchain-tests' retriever suite, on the real model."""

    # pytest-asyncio runs in strict mode here: mark the suite's async test, and silence the
    # notice that the same class-wide mark is a no-op on its sync tests.
    pytestmark = [pytest.mark.asyncio,
                  pytest.mark.filterwarnings("ignore:The test <Function test_.*is marked with "
                                             "'@pytest.mark.asyncio':pytest.PytestWarning")]
    _index: S3Index | None = None

    @pytest.fixture(autouse=True)
    def _shared_index(self, corpus_index):
        type(self)._index = corpus_index

    @property
    def retriever_constructor(self) -> type[S3Retriever]:
        return S3Retriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"index": self._index}

    @property
    def retriever_query_example(self) -> str:
        return QUESTION


# ---------------------------------------------------------------- the Document contract
@pytest.mark.parametrize("mode", ["hybrid", "s3", "bm25", "rerank"])
def test_documents_are_exact_spans_with_metadata_and_ordered_scores(retriever, corpus_index,
                                                                    mode):
    docs = retriever.invoke(QUESTION, mode=mode)
    assert 1 <= len(docs) <= 3
    for d in docs:
        m = d.metadata
        source_text, source_meta = CORPUS[m["doc_id"]]
        assert d.page_content == source_text[m["start_index"]:m["end_index"]]
        assert d.id == f"{m['doc_id']}:{m['start_index']}-{m['end_index']}"
        assert {k: m[k] for k in source_meta} == source_meta
        assert isinstance(m["score"], float)
        # a reranked span's score is its attention score alone
        assert (m["s3_score"] is None) == (mode in ("bm25", "rerank"))
        assert (m["bm25_score"] is None) == (mode in ("s3", "rerank"))
    scores = [d.metadata["score"] for d in docs]
    assert scores == sorted(scores, reverse=True)
    spans = corpus_index.search(QUESTION, k=3, mode=mode)
    assert [d.id for d in docs] == [s.id for s in spans]


def test_lexical_question_finds_its_document(retriever):
    top = retriever.invoke("Who composed the Brandenburg Concertos?", k=1, mode="bm25")[0]
    assert top.metadata["doc_id"] == "bach" and "Brandenburg" in top.page_content
    assert top.metadata["topic"] == "music"


def test_format_documents():
    docs = [Document("Paris  is\nbig."), Document("Rome too.")]
    assert format_documents(docs) == "[1] Paris is big.\n[2] Rome too."


# ---------------------------------------------------------------- per-call options, async
def test_k_and_budget_per_call(retriever):
    assert len(retriever.invoke(QUESTION)) == 3
    assert len(retriever.invoke(QUESTION, k=1)) == 1
    available = len(retriever.index.search(QUESTION, k=100))
    assert available > 3
    assert len(retriever.invoke(QUESTION, k=available)) == available
    small = retriever.invoke(QUESTION, k=None, budget_tokens=60)
    big = retriever.invoke(QUESTION, k=None, budget_tokens=400)
    assert 1 <= len(small) < len(big)
    assert [d.id for d in small] == [s.id for s in retriever.index.search(
        QUESTION, k=None, budget_tokens=60)]
    assert len(retriever.invoke(QUESTION)) == 3  # per-call values do not stick


@pytest.mark.asyncio
async def test_async_matches_sync(retriever):
    for kwargs in ({}, {"k": 1}, {"k": 2, "mode": "bm25"}, {"filter": {"topic": "music"}}):
        assert _key(await retriever.ainvoke(QUESTION, **kwargs)) == \
            _key(retriever.invoke(QUESTION, **kwargs))
    results = await asyncio.gather(*(retriever.ainvoke(QUESTION, k=k) for k in (1, 2, 3)))
    assert [len(r) for r in results] == [1, 2, 3]
    assert len(await retriever.abatch([QUESTION, "Amazon river"], k=1)) == 2


@pytest.mark.asyncio
async def test_async_search_runs_off_the_event_loop(retriever, monkeypatch):
    """The search waits for an event that only the event loop can set: it must not block."""
    started, release = threading.Event(), threading.Event()
    search = retriever.index.search

    def gated_search(*args, **kwargs):
        started.set()
        assert release.wait(10), "the event loop was blocked during the search"
        return search(*args, **kwargs)

    monkeypatch.setattr(retriever.index, "search", gated_search)

    async def releaser():
        while not started.is_set():
            await asyncio.sleep(0.005)
        release.set()

    docs, _ = await asyncio.gather(retriever.ainvoke(QUESTION, k=2), releaser())
    assert len(docs) == 2


# ---------------------------------------------------------------- filters
@pytest.mark.parametrize("flt, allowed", [
    ({"topic": "music"}, {"bach"}),
    ({"topic": ["music", "nature"]}, {"bach", "amazon"}),
    ({"topic": {"$in": ["secret"]}}, {"secret"}),
    ({"topic": {"$nin": ["science"]}}, {"bach", "amazon", "secret"}),
    ({"topic": {"$ne": "science"}, "source": "note"}, {"secret"}),
])
def test_filters_never_leak(corpus_index, flt, allowed):
    per_call = S3Retriever.from_index(corpus_index, k=10, include_scores=True).invoke(QUESTION, filter=flt)
    fixed = S3Retriever.from_index(corpus_index, k=10, filter=flt, include_scores=True).invoke(QUESTION)
    assert _key(per_call) == _key(fixed)
    assert per_call and {d.metadata["doc_id"] for d in per_call} <= allowed
    for d in per_call:
        assert d.metadata["topic"] == CORPUS[d.metadata["doc_id"]][1]["topic"]


def test_filter_without_match_and_per_call_override(corpus_index):
    r = S3Retriever.from_index(corpus_index, k=10, filter={"topic": "music"})
    assert r.invoke(QUESTION, filter={"topic": "nothing"}) == []
    assert {d.metadata["doc_id"] for d in r.invoke(QUESTION, filter=None)} > {"bach"}
    docs = r.invoke(QUESTION, doc_ids=["curie", "amazon"], filter=None)
    assert docs and {d.metadata["doc_id"] for d in docs} <= {"curie", "amazon"}


def test_fusion_fields_override_the_index_settings(corpus_index):
    q = "Nobel Prize physics in Paris"
    before = corpus_index.settings.to_dict()
    def top4(**kw):
        return S3Retriever.from_index(corpus_index, k=4, include_scores=True, **kw).invoke(q)

    only_s3, only_bm = top4(mode="s3"), top4(mode="bm25")
    s3_side, bm_side = top4(fusion_weight=1.0), top4(fusion_weight=0.0)
    assert [d.id for d in s3_side] == [d.id for d in only_s3]
    assert bm_side[0].id == only_bm[0].id
    rrf = top4(fusion="rrf", rrf_k=10)
    assert len(rrf) == 4
    # concurrent searches with different overrides on one index never see each other's
    pair = (S3Retriever.from_index(corpus_index, k=4, include_scores=True),
            S3Retriever.from_index(corpus_index, k=4, include_scores=True, fusion_weight=1.0))
    expected = {id(r): _key(r.invoke(q)) for r in pair}
    with ThreadPoolExecutor(4) as pool:
        futures = [(r, pool.submit(r.invoke, q)) for r in pair * 3]
        assert all(_key(f.result()) == expected[id(r)] for r, f in futures)
    assert corpus_index.settings.to_dict() == before  # the shared index is left as it was


# ---------------------------------------------------------------- building and upkeep
def test_constructors_add_and_delete(lm, saes):
    docs = [Document("The lighthouse keeper's cat is called Biscuit.", id="cat",
                     metadata={"kind": "pet"}),
            Document("The harbour was rebuilt in 1902 after the great storm.",
                     metadata={"kind": "history"})]
    r = S3Retriever.from_documents(docs, model=lm, saes=saes, k=2, span_tokens=32,
                                   fusion="rrf", show_progress=False)
    assert r.k == 2 and r.index.settings.span_tokens == 32 and r.index.settings.fusion == "rrf"
    assert r.index.lm is lm and len(r.index) == 2
    top = r.invoke("What is the cat called?", k=1, mode="bm25")[0]
    assert top.metadata == {**top.metadata, "doc_id": "cat", "kind": "pet"}

    assert r.add_documents([Document("Zebras have black and white stripes.")], ids=["zebra"],
                           show_progress=False) == ["zebra"]
    assert r.add_texts(["Owls hunt at night."], [{"kind": "bird"}], ["owl"],
                       show_progress=False) == ["owl"]
    assert r.invoke("stripes", k=1, mode="bm25")[0].metadata["doc_id"] == "zebra"
    r.delete(["zebra"])
    assert all(d.metadata["doc_id"] != "zebra" for d in r.invoke("stripes", k=10))
    with pytest.raises(KeyError):
        r.delete(["no-such-doc"])

    t = S3Retriever.from_texts(["Owls hunt at night."], [{"kind": "bird"}], ["owl"], model=lm,
                               saes=saes, budget_tokens=64, k=None, show_progress=False)
    assert t.invoke("When do owls hunt?")[0].metadata["kind"] == "bird"
    with pytest.raises(TypeError, match="unknown arguments"):
        S3Retriever.from_model(lm, saes=saes, top_k=3)


def test_persistence_round_trip(lm, corpus_index, tmp_path):
    r = S3Retriever.from_index(corpus_index, k=4, include_scores=True, fusion_weight=0.3,
                               filter={"$not": {"topic": "nature"}},
                               search_kwargs={"budget_tokens": 400}, tags=["not saved"])
    path = r.save(tmp_path / "corpus.s3")
    with pytest.raises(OutputExistsError, match="pass overwrite=True"):
        r.save(path)
    assert r.save(path, overwrite=True) == path
    assert sorted(p.name for p in path.iterdir()) == ["s3_index", "s3_retriever.json"]
    loaded = S3Retriever.load(path, model=lm)  # the fields come back as saved
    saved = ("k", "include_scores", "fusion_weight", "filter", "search_kwargs", "mode")
    assert {f: getattr(loaded, f) for f in saved} == {f: getattr(r, f) for f in saved}
    assert loaded.tags is None  # LangChain's run fields are not the retriever's settings
    assert S3Retriever.load(path, model=lm, k=2).k == 2  # a keyword replaces a saved field
    bare = S3Retriever.load(corpus_index.save(tmp_path / "bare.s3"), model=lm)
    assert (bare.k, bare.filter, bare.include_scores) == (4, None, False)  # the defaults
    for kwargs in ({}, {"mode": "s3"}, {"mode": "bm25"}, {"filter": {"topic": "music"}}):
        a, b = r.invoke(QUESTION, **kwargs), loaded.invoke(QUESTION, **kwargs)
        assert _key(a) == _key(b)
        assert [d.metadata for d in a] == [d.metadata for d in b]
        assert [d.page_content for d in a] == [d.page_content for d in b]


# ---------------------------------------------------------------- errors
def test_clear_errors(retriever, make_index, tmp_path, lm):
    with pytest.raises(ValueError, match="empty"):
        retriever.invoke("   ")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        retriever.invoke(QUESTION, k=0)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        asyncio.run(retriever.ainvoke(QUESTION, k=-1))
    with pytest.raises(ValueError, match="mode"):
        retriever.invoke(QUESTION, mode="dense")
    with pytest.raises(ValueError, match="budget"):
        retriever.invoke(QUESTION, budget_tokens=1)
    with pytest.raises(TypeError, match="unknown search arguments"):
        retriever.invoke(QUESTION, top_k=2)
    with pytest.raises(ValueError):
        S3Retriever(index=retriever.index, k=0)
    with pytest.raises(ValueError):
        S3Retriever(index=retriever.index, mode="dense")
    with pytest.raises(ValueError, match="k, budget_tokens"):
        S3Retriever(index=retriever.index, k=None)
    with pytest.raises(ValueError):
        S3Retriever(index=retriever.index, fusion_weight=2.0)
    with pytest.raises(ValueError):
        S3Retriever(index=retriever.index, unknown_field=1)
    with pytest.raises(FileNotFoundError):
        S3Retriever.load(tmp_path / "missing.s3", model=lm)
    # an empty index answers [] as a vector store does; bad arguments still raise
    assert S3Retriever.from_index(make_index()).invoke(QUESTION) == []
    with pytest.raises(ValueError, match="k must be a positive integer"):
        S3Retriever.from_index(make_index()).invoke(QUESTION, k=0)
    with pytest.raises(TypeError, match="unknown search arguments"):
        S3Retriever(index=retriever.index, search_kwargs={"top_k": 3})


# ---------------------------------------------------------------- the chat model, RAG chain
def test_chat_model_basics(corpus_index, retriever):
    llm = ChatS3.from_index(retriever, max_new_tokens=8)
    assert llm.lm is corpus_index.lm and llm.model == "smollm2-135m"
    assert ChatS3.from_index(corpus_index).lm is corpus_index.lm
    assert llm._llm_type == "s3-retriever-chat"
    with pytest.raises(ValueError):
        ChatS3(model=corpus_index.lm, max_new_tokens=0)
    with pytest.raises(TypeError):
        ChatS3.from_index(object())
    with pytest.raises(ValueError, match="ToolMessage"):
        from langchain_core.messages import ToolMessage
        llm.invoke([ToolMessage("x", tool_call_id="1")])


def test_chat_model_generation_options(corpus_index):
    llm = ChatS3.from_index(corpus_index, max_new_tokens=3)
    msgs = [("system", "Reply in French."), ("human", "Say hello to my friend Paul.")]
    msg = llm.invoke(msgs)
    assert msg.content and msg.usage_metadata["output_tokens"] == 3
    assert msg.usage_metadata["input_tokens"] > 5
    assert msg.response_metadata["finish_reason"] == "length"
    again = asyncio.run(llm.ainvoke(msgs))
    assert again.content == msg.content  # greedy: async gives the same reply
    shorter = llm.invoke(msgs, max_new_tokens=1)
    assert shorter.usage_metadata["output_tokens"] == 1
    cut = llm.invoke(msgs, stop=[msg.content[1:]])
    assert cut.content == msg.content[:1] and cut.response_metadata["finish_reason"] == "stop"
    assert llm.invoke(msgs, temperature=0).content == msg.content  # a standard option: greedy
    with pytest.raises(TypeError, match=r"unknown generation arguments \['top_k'\]"):
        llm.invoke(msgs, top_k=5)


def test_lcel_rag_chain_answers_from_retrieved_text(retriever):
    """retriever | format | prompt | llm, offline end to end; the answer cites the context."""
    llm = ChatS3.from_index(retriever, max_new_tokens=16)
    prompt = ChatPromptTemplate.from_messages([
        ("system", SYSTEM_PROMPT),
        ("human", "Context:\n{context}\n\nQuestion: {question}"),
    ])
    answer = ({"context": lambda x: format_documents(x["docs"]),
               "question": lambda x: x["question"]} | prompt | llm | StrOutputParser())
    chain = RunnableParallel(docs=retriever, question=RunnablePassthrough()).assign(
        answer=answer)
    out = chain.invoke("What is the secret code word?")
    assert any("Zanzibar" in d.page_content for d in out["docs"])
    assert_grounded(out["answer"], [d.page_content for d in out["docs"]])
    assert out["docs"][0].metadata["doc_id"] == "secret"


# ---------------------------------------------------------------- the quickstart example
def test_quickstart_example_runs(lm, saes, monkeypatch, tmp_path, capsys):
    """Run docs/examples/langchain_quickstart.py as a script, on the session's model (and
    the test SAEs when none are shipped yet)."""
    monkeypatch.setattr(engine, "load_model", lambda *a, **kw: lm)
    if saes is not None:
        folder = save_saes(saes, tmp_path / "saes")
        monkeypatch.setattr(engine, "shipped_sae_dir", lambda model_id: folder)
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    assert "Warsaw" in out and "Zanzibar" in out


# ---------------------------------------------------------------- lineage and combinators
def test_prechunked_documents_keep_their_lineage(make_index):
    """Chunks from RecursiveCharacterTextSplitter(add_start_index=True) come back with the
    caller's metadata, offsets in the original document and the same id on every run."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    book = ("The harbour master kept a diary for forty years.\n\n"
            "On 3 May 1902 a letter arrived from the mainland. It was written by Jonas Lind, "
            "the lighthouse keeper's brother.\n\n"
            "He asked for a boat before the winter storms. The boat never came.")
    splitter = RecursiveCharacterTextSplitter(chunk_size=120, chunk_overlap=0,
                                              add_start_index=True)
    chunks = splitter.create_documents([book], metadatas=[{"source": "diary.txt"}])
    assert len(chunks) >= 2 and chunks[-1].metadata["start_index"] > 0
    ids = []
    for _ in range(2):
        r = S3Retriever.from_index(make_index(), k=4, mode="bm25")
        ids.append(r.add_documents(chunks, show_progress=False))
        docs = r.invoke("Who wrote the letter?")
        assert docs and all(d.metadata["source"] == "diary.txt" for d in docs)
        for d in docs:
            m = d.metadata
            assert book[m["start_index"]:m["end_index"]] == d.page_content  # source coords
        assert any(d.metadata["start_index"] > 0 for d in docs)
    assert ids[0] == ids[1] and len(set(ids[0])) == len(chunks)  # stable, distinct ids


def test_same_span_compares_equal_across_queries(corpus_index):
    """Without per-query scores in the metadata, MultiQueryRetriever's dedup and
    EnsembleRetriever(id_key=...) see one document per span."""
    from langchain_classic.retrievers import EnsembleRetriever

    r = S3Retriever.from_index(corpus_index, k=2, mode="bm25")
    a = r.invoke("Who composed the Brandenburg Concertos?")
    b = r.invoke("Which composer wrote the Brandenburg Concertos?")
    assert a[0].id == b[0].id and a[0] == b[0]
    assert "score" not in a[0].metadata
    ensemble = EnsembleRetriever(retrievers=[r, S3Retriever.from_index(corpus_index, k=2)],
                                 weights=[0.5, 0.5], id_key="doc_id")
    docs = ensemble.invoke("Who composed the Brandenburg Concertos?")
    assert len({d.metadata["doc_id"] for d in docs}) == len(docs)


def test_multi_query_and_ensemble_beside_a_vector_store(make_index):
    """MultiQueryRetriever counts a span found by two phrasings once; an EnsembleRetriever
    keyed on the caller's doc_id merges our spans with a vector store's chunks."""
    from langchain_classic.retrievers import EnsembleRetriever, MultiQueryRetriever
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.language_models.fake import FakeListLLM
    from langchain_core.vectorstores import InMemoryVectorStore

    chunks = [Document("Johann Sebastian Bach composed the Brandenburg Concertos.",
                       id="c1", metadata={"doc_id": "bach-bio"}),
              Document("He worked in Leipzig for many years.", id="c2",
                       metadata={"doc_id": "bach-bio"}),
              Document("The Amazon river flows through Brazil.", id="c3",
                       metadata={"doc_id": "amazon"})]
    r = S3Retriever.from_index(make_index(), k=2, mode="bm25")
    r.add_documents(chunks, show_progress=False)
    phrasings = FakeListLLM(responses=["Who composed the Brandenburg Concertos?\n"
                                       "Which composer wrote the Brandenburg Concertos?"])
    multi = MultiQueryRetriever.from_llm(retriever=r, llm=phrasings)
    docs = multi.invoke("Brandenburg Concertos composer")
    one = r.invoke("Who composed the Brandenburg Concertos?")
    two = r.invoke("Which composer wrote the Brandenburg Concertos?")
    assert one[0] == two[0] and one[0] in docs
    assert len(docs) == len({d.id for d in one + two})  # each span once

    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=16))
    store.add_documents(chunks)
    ensemble = EnsembleRetriever(retrievers=[r, store.as_retriever(search_kwargs={"k": 2})],
                                 weights=[0.5, 0.5], id_key="doc_id")
    merged = ensemble.invoke("Who composed the Brandenburg Concertos?")
    assert merged and all(d.metadata["doc_id"] in {"bach-bio", "amazon"} for d in merged)
    assert len({d.metadata["doc_id"] for d in merged}) == len(merged)
    assert [d.metadata["doc_id"] for d in r.invoke("Where did Bach work?")][:1] == ["bach-bio"]


def test_search_kwargs_and_async_ingestion(make_index):
    r = S3Retriever.from_index(make_index(), search_kwargs={"k": 1, "mode": "bm25"})
    asyncio.run(r.aadd_texts(["Bach lived in Leipzig.", "Kiwis are green."], ids=["b", "k"],
                             show_progress=False))
    assert [d.metadata["doc_id"] for d in r.invoke("Where did Bach live?")] == ["b"]
    assert len(r.invoke("Where did Bach live?", k=2)) == 2  # a call keyword still wins
    asyncio.run(r.adelete(["b"]))
    assert [d.metadata["doc_id"] for d in r.invoke("Where did Bach live?")] == ["k"]
