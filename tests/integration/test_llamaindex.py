"""The LlamaIndex integration (``llama_index.retrievers.s3``) end to end on the real model."""

# The LlamaIndex integration: ``llama_index.retrievers.s3`` (S3Retriever, S3LocalLLM).
#
# Everything runs offline on the real embedded model (loaded once per session). The index
# uses the SAEs shipped for the model when they exist, else random SAEs at the shipped
# layers: the tests then check the contract (offsets, scores, filters, persistence, errors),
# and ranking assertions lean on the lexical (BM25) part, which is exact either way.

from __future__ import annotations

import asyncio
import runpy
from pathlib import Path

import pytest
from llama_index.core import Document, Settings, SummaryIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.retrievers import BaseRetriever, QueryFusionRetriever
from llama_index.core.schema import MetadataMode, NodeRelationship, QueryBundle, TextNode
from llama_index.core.vector_stores.types import (
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from s3_retriever import OutputExistsError, S3Index
from tests.helpers import assert_grounded

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "llamaindex_quickstart.py"

DOCS = {
    "secret": ("The secret code word is Zanzibar. Only the captain of the ship knows it. "
               "She never writes it down.", {"kind": "memo", "year": 2024}),
    "curie": ("Marie Curie was born in Warsaw in 1867. She moved to Paris to study physics. "
              "She won the Nobel Prize twice.", {"kind": "bio", "year": 1867}),
    "amazon": ("The Amazon river flows through Brazil. It carries more water than any other "
               "river. Its basin is home to a vast rainforest.", {"kind": "geo", "year": 2020}),
    "bach": ("Johann Sebastian Bach composed the Brandenburg Concertos. He worked in Leipzig "
             "for many years. His music is still played today.", {"kind": "bio", "year": 1721}),
}
QUESTION = "What is the secret code word?"


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def s3index(lm, saes):
    """One index over DOCS, shared (read-only) by the tests."""
    index = S3Index.from_model(lm, saes=saes)
    index.add_texts([t for t, _ in DOCS.values()], [m for _, m in DOCS.values()], list(DOCS),
                    show_progress=False)
    return index


@pytest.fixture(scope="module")
def llm(lm):
    from llama_index.retrievers.s3 import S3LocalLLM

    return S3LocalLLM(lm, max_new_tokens=16)


@pytest.fixture(scope="module", autouse=True)
def offline_settings(lm):
    """Nothing may reach for OpenAI: the global LLM is the local one, embeddings are mocks."""
    from llama_index.retrievers.s3 import S3LocalLLM

    old = Settings._llm, Settings._embed_model
    Settings.llm = S3LocalLLM(lm, max_new_tokens=16)
    Settings.embed_model = MockEmbedding(embed_dim=8)
    yield
    Settings._llm, Settings._embed_model = old


@pytest.fixture()
def retriever(s3index):
    from llama_index.retrievers.s3 import S3Retriever

    return S3Retriever(s3index, similarity_top_k=3)


def check_nodes(hits, index: S3Index, scores_in_metadata: bool = False):
    """The node contract: ids, exact offsets, SOURCE, metadata, ordered finite scores."""
    assert hits
    scores = [h.score for h in hits]
    assert all(isinstance(s, float) for s in scores)
    assert scores == sorted(scores, reverse=True)
    for h in hits:
        node = h.node
        assert isinstance(node, TextNode)
        doc_id = node.source_node.node_id
        text, meta = DOCS[doc_id]
        assert node.node_id == f"{doc_id}:{node.start_char_idx}-{node.end_char_idx}"
        assert node.text == text[node.start_char_idx:node.end_char_idx]
        assert node.text.strip()
        assert node.relationships[NodeRelationship.SOURCE].metadata == meta
        for key, value in meta.items():
            assert node.metadata[key] == value
        assert ({"s3_score", "bm25_score"} <= set(node.metadata)) == scores_in_metadata
        assert not {"s3_score", "bm25_score"} & set(node.source_node.metadata)
        for mode in (MetadataMode.LLM, MetadataMode.EMBED):
            content = node.get_content(metadata_mode=mode)
            assert "s3_score" not in content and "bm25_score" not in content
            assert f"kind: {meta['kind']}" in content


# --------------------------------------------------------------------------- retrieval
def test_exports():
    import llama_index.retrievers.s3 as pkg
    from llama_index.core.llms import CustomLLM

    assert issubclass(pkg.S3Retriever, BaseRetriever)
    assert issubclass(pkg.S3LocalLLM, CustomLLM)
    assert {"S3Retriever", "S3LocalLLM"} <= set(pkg.__all__)


def test_retrieve_str_and_query_bundle(retriever, s3index):
    hits = retriever.retrieve(QUESTION)
    check_nodes(hits, s3index)
    assert len(hits) == 3
    assert hits[0].node.source_node.node_id == "secret"
    assert "Zanzibar" in hits[0].node.text
    again = retriever.retrieve(QueryBundle(query_str=QUESTION))
    assert [(h.node.node_id, h.score) for h in again] == [(h.node.node_id, h.score) for h in hits]


def test_similarity_top_k_per_instance(retriever):
    from llama_index.retrievers.s3 import S3Retriever

    assert len(retriever.retrieve("Where was Marie Curie born?")) == 3
    retriever.similarity_top_k = 1
    assert len(retriever.retrieve("Where was Marie Curie born?")) == 1
    for bad in (0, -2, 1.5, True, None):
        with pytest.raises(ValueError, match="similarity_top_k"):
            retriever.similarity_top_k = bad
        with pytest.raises(ValueError, match="similarity_top_k"):
            S3Retriever(retriever.index, similarity_top_k=bad)
    assert retriever.similarity_top_k == 1


def test_budget_and_modes(s3index):
    from llama_index.retrievers.s3 import S3Retriever

    r = S3Retriever(s3index, similarity_top_k=None, budget_tokens=40)
    hits = r.retrieve("Who composed the Brandenburg Concertos?")
    assert hits and sum(h.node.end_char_idx - h.node.start_char_idx for h in hits) < 400
    r.budget_tokens = 1
    with pytest.raises(ValueError, match="budget"):
        r.retrieve("Who composed the Brandenburg Concertos?")
    with pytest.raises(ValueError, match="budget_tokens"):
        r.budget_tokens = None  # top k is None: a budget is required

    bm25 = S3Retriever(s3index, similarity_top_k=2, mode="bm25",
                       include_scores=True).retrieve(QUESTION)
    check_nodes(bm25, s3index, scores_in_metadata=True)
    assert bm25[0].node.metadata["s3_score"] is None
    assert bm25[0].node.metadata["bm25_score"] > 0
    s3 = S3Retriever(s3index, similarity_top_k=2, mode="s3",
                     include_scores=True).retrieve(QUESTION)
    assert s3[0].node.metadata["bm25_score"] is None
    assert s3[0].node.metadata["s3_score"] is not None
    reranked = S3Retriever(s3index, similarity_top_k=None, budget_tokens=60, mode="rerank",
                           include_scores=True).retrieve(QUESTION)
    check_nodes(reranked, s3index, scores_in_metadata=True)
    assert reranked[0].node.metadata["s3_score"] is None  # the attention score alone
    with pytest.raises(ValueError, match="smaller than the smallest"):
        S3Retriever(s3index, similarity_top_k=None, budget_tokens=1,
                    mode="rerank").retrieve(QUESTION)
    with pytest.raises(ValueError, match="mode"):
        S3Retriever(s3index, mode="dense")


@pytest.mark.asyncio
async def test_async_matches_sync_and_does_not_block(retriever):
    sync = retriever.retrieve(QUESTION)
    ticks = 0
    done = asyncio.Event()

    async def ticker():
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    async def query():
        try:
            return await retriever.aretrieve(QUESTION)
        finally:
            done.set()

    hits, _ = await asyncio.gather(query(), ticker())
    assert [(h.node.node_id, h.score) for h in hits] == [(h.node.node_id, h.score) for h in sync]
    assert ticks > 3  # the event loop kept running while the model searched
    both = await asyncio.gather(retriever.aretrieve(QUESTION),
                                retriever.aretrieve(QueryBundle(query_str=QUESTION)))
    assert [h.node.node_id for h in both[0]] == [h.node.node_id for h in both[1]]


def test_bad_input(retriever, lm, saes):
    from llama_index.retrievers.s3 import S3Retriever

    for q in ("", "   "):
        with pytest.raises(ValueError, match="empty"):
            retriever.retrieve(q)
    with pytest.raises(TypeError, match="S3Index"):
        S3Retriever("not an index")
    with pytest.raises(ValueError, match="budget_tokens"):
        S3Retriever(retriever.index, budget_tokens=0)
    empty = S3Retriever.from_model(lm, saes=saes)
    assert empty.retrieve(QUESTION) == []  # as a vector store: nothing indexed, nothing found
    assert asyncio.run(empty.aretrieve(QUESTION)) == []
    with pytest.raises(ValueError, match="empty"):  # the arguments are still checked
        empty.retrieve(" ")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        empty.retrieve(QUESTION, similarity_top_k=0)
    with pytest.raises(TypeError, match=r"unknown retrieve arguments \['k'\]"):
        retriever.retrieve(QUESTION, k=2)
    with pytest.raises(ValueError, match="fusion"):
        S3Retriever(retriever.index, fusion="learned")
    with pytest.raises(ValueError, match="include_scores"):
        S3Retriever(retriever.index, include_scores="yes")


# --------------------------------------------------------------------------- filters
def _docs_of(hits):
    return {h.node.source_node.node_id for h in hits}


@pytest.mark.parametrize(("filters", "allowed"), [
    (MetadataFilters(filters=[MetadataFilter(key="kind", value="bio")]), {"curie", "bach"}),
    (MetadataFilters(filters=[MetadataFilter(key="kind", value=["geo", "memo"],
                                             operator=FilterOperator.IN)]),
     {"amazon", "secret"}),
    (MetadataFilters(filters=[MetadataFilter(key="kind", value="memo",
                                             operator=FilterOperator.NE)]),
     {"curie", "amazon", "bach"}),
    (MetadataFilters(filters=[MetadataFilter(key="year", value=[2024, 1867],
                                             operator=FilterOperator.NIN)]), {"amazon", "bach"}),
    (MetadataFilters(filters=[  # AND, and a nested AND group
        MetadataFilter(key="kind", value="bio"),
        MetadataFilters(filters=[MetadataFilter(key="year", value=1721)])]), {"bach"}),
    ({"kind": {"$in": ["memo"]}}, {"secret"}),  # engine filters pass through
])
def test_filters_exclude_before_ranking(s3index, filters, allowed):
    from llama_index.retrievers.s3 import S3Retriever

    r = S3Retriever(s3index, similarity_top_k=10, filters=filters)
    # The question targets the secret memo: excluded documents must still never leak.
    hits = r.retrieve(QUESTION)
    assert hits and _docs_of(hits) <= allowed
    check_nodes(hits, s3index)
    assert _docs_of(r.retrieve("Tell me about rivers, music, physics and secrets.")) == allowed


def test_filters_that_match_nothing_and_unsupported(s3index):
    from llama_index.retrievers.s3 import S3Retriever

    none = MetadataFilters(filters=[MetadataFilter(key="kind", value="bio"),
                                    MetadataFilter(key="kind", value="geo")])
    assert S3Retriever(s3index, filters=none).retrieve(QUESTION) == []
    with pytest.raises(ValueError, match="one value"):
        S3Retriever(s3index, filters=MetadataFilters(filters=[
            MetadataFilter(key="kind", value=["bio"], operator=FilterOperator.CONTAINS)]))
    with pytest.raises(ValueError, match="list"):
        S3Retriever(s3index, filters=MetadataFilters(filters=[
            MetadataFilter(key="kind", value="bio", operator=FilterOperator.IN)]))


# --------------------------------------------------------------------------- building
def test_from_defaults_nodes_documents_and_llamaindex_index(lm, saes, s3index):
    from llama_index.retrievers.s3 import S3Retriever

    nodes = [TextNode(text="Penguins live in Antarctica. They cannot fly.", id_="penguin",
                      metadata={"kind": "zoo"})]
    documents = [Document(text="The Eiffel Tower stands in Paris. It was built in 1889.",
                          id_="eiffel", metadata={"kind": "city"})]
    r = S3Retriever.from_defaults(nodes=nodes, documents=documents, model=lm, saes=saes,
                                  similarity_top_k=1, mode="bm25", span_tokens=0)
    assert len(r.index) == 2 and r.index.settings.span_tokens == 0
    hit = r.retrieve("Where do penguins live?")[0]
    assert hit.node.source_node.node_id == "penguin"
    assert hit.node.metadata["kind"] == "zoo"
    assert hit.node.text == "Penguins live in Antarctica."

    # A LlamaIndex index (no embeddings needed): its docstore nodes are indexed.
    summary = SummaryIndex(nodes=[TextNode(text="Owls hunt at night.", id_="owl")])
    r2 = S3Retriever.from_defaults(index=summary, model=lm, saes=saes, mode="bm25")
    assert r2.retrieve("When do owls hunt?")[0].node.node_id == "owl:0-19"
    r2.delete(["owl"])
    with pytest.raises(KeyError):
        r2.delete(["owl"])

    # An existing S3Index is wrapped as it is, never rebuilt.
    wrapped = S3Retriever.from_defaults(index=s3index, similarity_top_k=2)
    assert wrapped.index is s3index
    with pytest.raises(TypeError, match="existing S3Index"):
        S3Retriever.from_defaults(index=s3index, span_tokens=8)


# --------------------------------------------------------------------------- persistence
def test_persistence_round_trip(s3index, lm, tmp_path):
    from llama_index.retrievers.s3 import S3Retriever

    filters = MetadataFilters(filters=[MetadataFilter(key="kind", value="memo",
                                                      operator=FilterOperator.NE)])
    r = S3Retriever(s3index, similarity_top_k=2, budget_tokens=200, mode="hybrid",
                    filters=filters)
    before = r.retrieve("Where was Marie Curie born?")
    store = tmp_path / "storage"
    store.mkdir()
    (store / "docstore.json").write_text("{}")  # another component's file survives
    r.persist(store)
    r.persist(store)  # persisting again replaces the index atomically
    assert (store / "docstore.json").read_text() == "{}"
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "s3_retriever.json").write_text('{"mine": true}')
    (theirs / "s3_index").mkdir()
    (theirs / "s3_index" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not a retriever settings file"):
        r.persist(theirs)
    (theirs / "s3_retriever.json").unlink()
    with pytest.raises(OutputExistsError, match="folder of other files"):
        r.persist(theirs)
    assert (theirs / "s3_index" / "notes.txt").read_text() == "mine"

    loaded = S3Retriever.from_persist_dir(store, model=lm)
    assert (loaded.similarity_top_k, loaded.budget_tokens, loaded.mode) == (2, 200, "hybrid")
    assert loaded.filters == filters
    after = loaded.retrieve("Where was Marie Curie born?")
    assert [(h.node.node_id, h.node.text, h.score, h.node.metadata) for h in after] == \
        [(h.node.node_id, h.node.text, h.score, h.node.metadata) for h in before]
    assert "secret" not in _docs_of(loaded.retrieve(QUESTION))

    over = S3Retriever.from_persist_dir(store, model=lm, similarity_top_k=1, filters=None)
    assert over.similarity_top_k == 1 and over.filters is None
    assert len(over.retrieve(QUESTION)) == 1
    with pytest.raises(ValueError, match="unknown retriever settings"):
        S3Retriever.from_persist_dir(store, model=lm, top_k=3)
    with pytest.raises(FileNotFoundError, match="neither a saved retriever"):
        S3Retriever.from_persist_dir(tmp_path / "missing", model=lm)
    with pytest.raises(FileNotFoundError, match="neither a saved retriever"):
        S3Retriever.from_persist_dir(tmp_path, model=lm)
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        r.save(store)  # save, unlike persist, does not replace unless asked
    # what the LangChain adapter saved is not read as LlamaIndex settings
    from langchain_s3 import S3Retriever as LangChainRetriever

    lc = LangChainRetriever.from_index(s3index, k=2).save(tmp_path / "lc")
    with pytest.raises(ValueError, match="saved by the 'langchain' adapter"):
        S3Retriever.load(lc, model=lm)
    assert len(S3Retriever.load(lc / "s3_index", model=lm).index) == len(DOCS)

    # A bare index folder (S3Index.save / the CLI) opens with default retriever settings.
    bare = S3Retriever.from_persist_dir(store / "s3_index", model=lm)
    assert (bare.similarity_top_k, bare.budget_tokens, bare.mode, bare.filters) == \
        (4, None, None, None)


# --------------------------------------------------------------------------- lineage
BOOK = ("The lighthouse keeper lit the lamp every evening at dusk. The ships passed safely "
        "through the narrow strait.\n\n"
        "In 1902 a storm destroyed the old harbour wall. The town rebuilt it with granite "
        "from the northern quarry.\n\n"
        "The secret code word of the harbour master was Zanzibar. He told it only to his "
        "daughter, who kept it in a locked drawer.\n\n"
        "Fishing boats left before sunrise and came back at noon with cod and herring.")


def test_chunks_from_an_ingestion_pipeline_keep_their_lineage(lm, saes):
    from llama_index.core.ingestion import IngestionPipeline
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.retrievers.s3 import LINEAGE_KEY, S3Retriever

    book = Document(text=BOOK, id_="book-1", metadata={"author": "Ada", "path": "/b.txt"},
                    excluded_llm_metadata_keys=["path"])
    splitter = SentenceSplitter(chunk_size=40, chunk_overlap=0,
                                tokenizer=lambda t: lm.tokenizer.encode(t))
    chunks = IngestionPipeline(transformations=[splitter]).run(documents=[book])
    assert len(chunks) > 2 and all(c.ref_doc_id == "book-1" for c in chunks)
    assert chunks[-1].start_char_idx > 0
    r = S3Retriever.from_documents(chunks, model=lm, saes=saes, similarity_top_k=6,
                                   show_progress=False)
    assert len(r.index) == len(chunks)  # the caller's ids:
    assert [r.index.get_document(c.node_id).doc_id for c in chunks] == [c.node_id for c in chunks]
    hits = r.retrieve("What was the harbour master's secret code word?")
    assert any("Zanzibar" in h.node.text for h in hits)
    later = [h for h in hits if h.node.start_char_idx > 0]
    assert later  # results from later chunks: offsets shifted into the book
    for h in hits:
        node = h.node
        assert node.ref_doc_id == node.source_node.node_id == "book-1"
        assert node.parent_node.node_id in {c.node_id for c in chunks}
        assert BOOK[node.start_char_idx:node.end_char_idx] == node.text
        assert node.metadata == book.metadata and LINEAGE_KEY not in node.metadata
        assert "/b.txt" not in node.get_content(metadata_mode=MetadataMode.LLM)
        assert "Ada" in node.get_content(metadata_mode=MetadataMode.LLM)
        assert "\n\n" not in node.text  # spans stop at paragraph breaks
    with pytest.raises(ValueError, match="reserved"):
        r.add_nodes([TextNode(text="x", metadata={LINEAGE_KEY: 1})])


def test_same_span_is_the_same_node_and_fusion_dedups_it(s3index, llm):
    from llama_index.retrievers.s3 import S3Retriever

    r = S3Retriever(s3index, similarity_top_k=4)
    a = {h.node.node_id: h.node for h in r.retrieve(QUESTION)}
    b = {h.node.node_id: h.node for h in r.retrieve("Which code word does the captain know?")}
    shared = set(a) & set(b)
    assert shared  # the memo's span, found by both phrasings
    for node_id in shared:  # equal nodes, whatever the query: fusion's dedup key agrees
        assert a[node_id].hash == b[node_id].hash
        assert a[node_id].get_content(MetadataMode.ALL) == b[node_id].get_content(MetadataMode.ALL)

    retrievers = [r, S3Retriever(s3index, similarity_top_k=4, mode="bm25")]
    hybrid, bm25 = ({h.node.node_id: h.node for h in x.retrieve(QUESTION)} for x in retrievers)
    overlap = set(hybrid) & set(bm25)
    assert overlap and all(hybrid[i].hash == bm25[i].hash for i in overlap)
    hits = QueryFusionRetriever(retrievers, llm=llm, num_queries=1, mode="simple",
                                similarity_top_k=10, use_async=False).retrieve(QUESTION)
    ids = [h.node.node_id for h in hits]
    assert len(ids) == len(set(ids)) == len(set(hybrid) | set(bm25))  # each span once
    # why scores are not in the metadata by default: they make the same span differ
    with_scores = S3Retriever(s3index, similarity_top_k=4, include_scores=True)
    scored = {h.node.node_id: h.node for h in with_scores.retrieve(QUESTION)}
    assert any(scored[i].hash != hybrid[i].hash for i in overlap)


def test_one_surface_with_the_langchain_adapter(lm, saes):
    """The constructors, per-call options, progress default and async ingestion that the
    LangChain S3Retriever has, under LlamaIndex's names."""
    import inspect

    from langchain_s3 import S3Retriever as LangChainRetriever
    from llama_index.retrievers.s3 import S3Retriever

    for name in ("from_model", "from_texts", "from_documents", "from_index", "load", "save",
                 "add_texts", "add_documents", "aadd_texts", "aadd_documents", "delete",
                 "adelete"):
        assert hasattr(S3Retriever, name) and hasattr(LangChainRetriever, name), name
    for name in ("add_texts", "add_documents", "from_model"):
        for cls in (S3Retriever, LangChainRetriever):
            assert inspect.signature(getattr(cls, name)).parameters[
                "show_progress"].default is True

    texts = [t for t, _ in DOCS.values()]
    r = S3Retriever.from_model(lm, texts=texts[:2], metadatas=[m for _, m in DOCS.values()][:2],
                               ids=list(DOCS)[:2], saes=saes, similarity_top_k=3,
                               fusion="rrf", rrf_k=10, mode="hybrid", show_progress=False)
    assert r.index.settings.fusion == "rrf" and r.index.settings.rrf_k == 10  # index settings
    assert asyncio.run(r.aadd_texts(texts[2:], ids=list(DOCS)[2:], show_progress=False)) == \
        list(DOCS)[2:]
    assert asyncio.run(r.aadd_documents([Document(text="Owls hunt at night.", id_="owl")],
                                        show_progress=False)) == ["owl"]
    asyncio.run(r.adelete(["owl"]))
    assert len(r.index) == len(DOCS)
    # per-call options, as LangChain's invoke(q, k=..., filter=...)
    one = r.retrieve(QUESTION, similarity_top_k=1)
    assert len(one) == 1 and len(r.retrieve(QUESTION)) == 3
    bio = MetadataFilters(filters=[MetadataFilter(key="kind", value="bio")])
    assert _docs_of(r.retrieve(QUESTION, filters=bio)) <= {"curie", "bach"}
    assert _docs_of(asyncio.run(r.aretrieve(QUESTION, doc_ids=["bach"]))) == {"bach"}
    # the fusion overrides change the ranking's scores, not the index
    weighted = S3Retriever.from_index(r.index, fusion="linear", fusion_weight=1.0,
                                      similarity_top_k=3)
    s3_only = S3Retriever.from_index(r.index, mode="s3", similarity_top_k=3)
    assert [h.node.node_id for h in weighted.retrieve(QUESTION)] == \
        [h.node.node_id for h in s3_only.retrieve(QUESTION)]
    with pytest.raises(TypeError, match="unknown arguments"):
        S3Retriever.from_model(lm, saes=saes, k=3)
    with pytest.raises(ValueError, match="metadatas and ids go with texts"):
        S3Retriever.from_model(lm, saes=saes, ids=["a"])


# --------------------------------------------------------------------------- LLM
def test_local_llm(llm, lm):
    from llama_index.core.llms import ChatMessage

    meta = llm.metadata
    assert meta.context_window == lm.max_length
    assert meta.num_output == 16 and meta.is_chat_model and meta.model_name == lm.model_id
    text = llm.complete("What is the capital of France?", max_new_tokens=8).text
    assert text.strip()  # its wording depends on the dtype: never pinned
    chunks = list(llm.stream_complete("What is the capital of France?", max_new_tokens=8))
    assert len(chunks) >= 1 and chunks[-1].text == text
    msgs = [ChatMessage(role="system", content="Reply with one word."),
            ChatMessage(role="user", content="What is the capital of France?")]
    reply = llm.chat(msgs, max_new_tokens=8)
    assert reply.message.role == "assistant" and reply.message.content.strip()
    # (the async path, achat in a worker thread, runs in test_query_engine_answers_offline)


def test_query_engine_answers_offline(s3index, llm):
    from llama_index.retrievers.s3 import S3Retriever

    engine = RetrieverQueryEngine.from_args(S3Retriever(s3index, similarity_top_k=2), llm=llm)
    response = asyncio.run(engine.aquery(QUESTION))
    assert_grounded(str(response), [n.node.text for n in response.source_nodes])
    assert response.source_nodes[0].node.source_node.node_id == "secret"


def test_query_fusion_retriever(s3index, llm):
    from llama_index.retrievers.s3 import S3Retriever

    fusion = QueryFusionRetriever(
        [S3Retriever(s3index, similarity_top_k=3),
         S3Retriever(s3index, similarity_top_k=3, mode="bm25")],
        llm=llm, num_queries=1, mode="reciprocal_rerank", similarity_top_k=3)
    hits = fusion.retrieve(QUESTION)
    assert 1 <= len(hits) <= 3
    assert hits[0].node.source_node.node_id == "secret"
    assert "Zanzibar" in hits[0].node.text
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


# --------------------------------------------------------------------------- example
def test_quickstart_example_runs(lm, saes, capsys):
    example = runpy.run_path(str(EXAMPLE), run_name="llamaindex_quickstart")
    answer = example["main"](model=lm, saes=saes)
    out = capsys.readouterr().out
    assert "Zanzibar" in out  # the retrieved span, printed
    assert_grounded(answer, [out])
    assert "secret:" in out  # the printed spans name their documents
