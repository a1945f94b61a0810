"""LlamaIndex quickstart: retrieve evidence spans and answer with the local model, offline.

Run it with ``python docs/examples/llamaindex_quickstart.py``. Nothing leaves the machine:
the retriever and the LLM are the embedded SmolLM2-135M-Instruct model.
"""

from __future__ import annotations

from typing import Any

from llama_index.core import Document
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.retrievers.s3 import S3LocalLLM, S3Retriever

DOCUMENTS = [
    Document(text="The secret code word is Zanzibar. Only the captain of the ship knows it.",
             id_="secret", metadata={"kind": "memo"}),
    Document(text="Marie Curie was born in Warsaw in 1867. She won the Nobel Prize twice.",
             id_="curie", metadata={"kind": "bio"}),
    Document(text="The Amazon river flows through Brazil. Its basin is a vast rainforest.",
             id_="amazon", metadata={"kind": "geo"}),
]
QUESTION = "What is the secret code word?"


def main(model: Any = "smollm2-135m", saes: Any = None) -> str:
    """Index the documents, print the retrieved spans and the answer; return the answer."""
    retriever = S3Retriever.from_defaults(documents=DOCUMENTS, model=model, saes=saes,
                                          similarity_top_k=2)
    for hit in retriever.retrieve(QUESTION):
        node = hit.node
        print(f"{hit.score:.3f}  {node.node_id}  {node.text!r}")

    # The same local model answers; pass llm= so LlamaIndex never reaches for a remote LLM.
    # A 135M model answers best from one focused span, so the engine takes the top one.
    retriever.similarity_top_k = 1
    llm = S3LocalLLM(retriever.index.lm, max_new_tokens=24)
    engine = RetrieverQueryEngine.from_args(retriever, llm=llm)
    answer = str(engine.query(QUESTION))
    print(f"Q: {QUESTION}\nA: {answer}")
    return answer


if __name__ == "__main__":
    main()
