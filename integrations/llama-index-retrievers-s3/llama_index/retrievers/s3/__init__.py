"""LlamaIndex integration of s3-retriever: ``S3Retriever`` and the local ``S3LocalLLM``.

Example:
    >>> from llama_index.core import Document
    >>> from llama_index.core.query_engine import RetrieverQueryEngine
    >>> from llama_index.retrievers.s3 import S3LocalLLM, S3Retriever
    >>> retriever = S3Retriever.from_defaults(
    ...     documents=[Document(text="The secret code word is Zanzibar.")])
    >>> engine = RetrieverQueryEngine.from_args(
    ...     retriever, llm=S3LocalLLM(retriever.index.lm))
    >>> print(engine.query("What is the secret code word?"))
    The secret code word is Zanzibar.
"""

from llama_index.retrievers.s3.base import S3Retriever, span_to_node, to_engine_filters
from llama_index.retrievers.s3.llm import S3LocalLLM

__all__ = ["S3Retriever", "S3LocalLLM", "span_to_node", "to_engine_filters"]
