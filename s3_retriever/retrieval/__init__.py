"""Retrieval, in the order data flows: the scan (text -> codes), scoring (question ->
token scores), units (token -> sentence scores), fusion with BM25, span growth, packing
into ``k`` or a budget, and metadata filters."""
