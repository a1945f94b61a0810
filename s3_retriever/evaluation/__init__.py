"""Evaluation: benchmark haystacks with gold evidence, baselines and metrics.

Example:
    >>> from s3_retriever.evaluation import evidence_recall
    >>> evidence_recall([("d", 0, 10)], [("d", 0, 5)])
    1.0
"""

from .baselines import (
    BM25Retriever,
    DenseRetriever,
    Hit,
    OracleRetriever,
    Passage,
    RandomRetriever,
    make_passages,
    minilm_model_dir,
    pack_hits,
    simple_sentences,
    tokenize,
)
from .data import (
    Benchmark,
    Document,
    Evidence,
    Example,
    hotpotqa_benchmark,
    load_squad,
    needle_benchmark,
    squad_benchmark,
)
from .metrics import (
    answer_recall,
    evidence_recall,
    exact_match,
    f1_score,
    first_hit_rank,
    mean_stderr,
    mrr,
    normalize_answer,
    paired_difference,
    summarize,
)

__all__ = [
    "BM25Retriever",
    "Benchmark",
    "DenseRetriever",
    "Document",
    "Evidence",
    "Example",
    "Hit",
    "OracleRetriever",
    "Passage",
    "RandomRetriever",
    "answer_recall",
    "evidence_recall",
    "exact_match",
    "f1_score",
    "first_hit_rank",
    "hotpotqa_benchmark",
    "load_squad",
    "make_passages",
    "mean_stderr",
    "minilm_model_dir",
    "mrr",
    "needle_benchmark",
    "normalize_answer",
    "pack_hits",
    "paired_difference",
    "simple_sentences",
    "squad_benchmark",
    "summarize",
    "tokenize",
]
