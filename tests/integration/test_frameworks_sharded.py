"""Both framework adapters over a sharded index: the same results as over one index, opened
from a saved sharded folder, and read-only with a clear error."""

from __future__ import annotations

import pytest
from langchain_s3 import ChatS3
from langchain_s3 import S3Retriever as LangChainRetriever
from llama_index.retrievers.s3 import S3Retriever as LlamaRetriever

from s3_retriever import S3Index
from s3_retriever.distributed.shards import ShardedIndex, save_sharded, split_index

pytestmark = pytest.mark.model

DOCS = {
    "secret": ("The secret code word is Zanzibar. Only the captain of the ship knows it.",
               {"kind": "memo", "year": 2024}),
    "curie": ("Marie Curie was born in Warsaw in 1867. She moved to Paris to study physics.",
              {"kind": "bio", "year": 1867}),
    "amazon": ("The Amazon river flows through Brazil. Its basin is home to a rainforest.",
               {"kind": "geo", "year": 2020}),
    "bach": ("Johann Sebastian Bach composed the Brandenburg Concertos. He worked in Leipzig.",
             {"kind": "bio", "year": 1721}),
    "harbour": ("In 1902 a storm destroyed the old harbour wall. The town rebuilt it with "
                "granite.", {"kind": "geo", "year": 1902}),
}
QUESTIONS = ["What is the secret code word?", "Where was Marie Curie born?",
             "Who composed the Brandenburg Concertos?", "When was the harbour wall destroyed?"]


@pytest.fixture(scope="module")
def single(lm, saes):
    index = S3Index.from_model(lm, saes=saes)
    index.add_texts([t for t, _ in DOCS.values()], [m for _, m in DOCS.values()], list(DOCS),
                    show_progress=False)
    return index


@pytest.fixture(scope="module")
def sharded_folder(single, tmp_path_factory):
    return save_sharded(split_index(single, 2), tmp_path_factory.mktemp("kb") / "sharded")


def _spans(docs):
    return [(d.id, d.page_content, d.metadata) for d in docs]


def test_langchain_over_shards_equals_one_index(single, sharded_folder, lm):
    one = LangChainRetriever.from_index(single, k=3)
    many = LangChainRetriever.load(sharded_folder, model=lm, k=3)  # a sharded folder opens
    assert isinstance(many.index, ShardedIndex) and len(many.index.shards) == 2
    for q in QUESTIONS:
        for kwargs in ({}, {"mode": "bm25"}, {"filter": {"kind": "bio"}},
                       {"k": 2, "budget_tokens": 40}):
            assert _spans(many.invoke(q, **kwargs)) == _spans(one.invoke(q, **kwargs))
    with pytest.raises(Exception, match="read-only|sharded"):
        many.add_texts(["More text."])
    assert ChatS3.from_index(many).lm is many.index.lm


def test_llamaindex_over_shards_equals_one_index(single, sharded_folder, lm):
    from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters

    one = LlamaRetriever.from_index(single, similarity_top_k=3)
    many = LlamaRetriever.from_index(ShardedIndex.load(sharded_folder, model=lm),
                                     similarity_top_k=3)
    geo = MetadataFilters(filters=[MetadataFilter(key="kind", value="geo")])
    for q in QUESTIONS:
        for kwargs in ({}, {"mode": "s3"}, {"filters": geo}):
            a, b = one.retrieve(q, **kwargs), many.retrieve(q, **kwargs)
            assert [(h.node.node_id, h.node.text) for h in a] == \
                [(h.node.node_id, h.node.text) for h in b]
            assert [h.score for h in b] == pytest.approx([h.score for h in a], rel=1e-6)
    loaded = LlamaRetriever.load(sharded_folder, model=lm)
    assert isinstance(loaded.index, ShardedIndex)
