"""LlamaIndex integration of s3-retriever: ``S3Retriever`` and the local ``S3LocalLLM``.

Example:
    >>> from llama_index.core import Document
    >>> from llama_index.core.query_engine import RetrieverQueryEngine
    >>> from llama_index.retrievers.s3 import S3LocalLLM, S3Retriever
    >>> retriever = S3Retriever.from_defaults(
    ...     documents=[Document(text="The secret code word is Zanzibar.")])
    >>> engine = RetrieverQueryEngine.from_args(
    ...     retriever, llm=S3LocalLLM(retriever.index.lm))
    >>> response = engine.query("What is the secret code word?")
    >>> response.source_nodes[0].node.text  # the evidence (the reply's wording varies)
    'The secret code word is Zanzibar.'
"""

from llama_index.retrievers.s3.base import (
    LINEAGE_KEY,
    S3Retriever,
    span_to_node,
    to_engine_filters,
)
from llama_index.retrievers.s3.llm import S3LocalLLM

__all__ = ["LINEAGE_KEY", "S3LocalLLM", "S3Retriever", "span_to_node", "to_engine_filters"]
