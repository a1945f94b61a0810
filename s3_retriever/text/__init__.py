"""Text units: sentence bounds (:mod:`.sentences`) and BM25 over units (:mod:`.bm25`)."""
