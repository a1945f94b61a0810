"""LangChain integration for s3-retriever: a retriever of evidence spans and a local chat model.

Example:
    >>> from langchain_s3 import ChatS3, S3Retriever, format_documents
    >>> retriever = S3Retriever.from_texts(["The secret code word is Zanzibar."])
    >>> retriever.invoke("What is the secret code word?", k=1)[0].page_content
    'The secret code word is Zanzibar.'
    >>> llm = ChatS3.from_index(retriever)  # shares the retriever's model
"""

from langchain_s3.chat_models import ChatS3, to_chat_messages
from langchain_s3.retrievers import S3Retriever, format_documents, span_to_document

__all__ = ["ChatS3", "S3Retriever", "format_documents", "span_to_document", "to_chat_messages"]
