"""The index: the per-token code store, postings, the document table, segments, and saved
folders (data flows: scan -> codes -> segments -> persistence)."""

from s3_retriever.index.codes import Codes
from s3_retriever.index.documents import DocRecord
from s3_retriever.index.postings import Postings
from s3_retriever.index.segments import InvertedIndex, Segment

__all__ = ["Codes", "DocRecord", "InvertedIndex", "Postings", "Segment"]
