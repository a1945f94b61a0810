"""Evaluation: benchmark haystacks with gold evidence, baselines, metrics and the runner.

The runner (:mod:`.run`: :func:`run_eval`, :func:`run_sweep`, :class:`EvalConfig`) and
the report writer (:mod:`.report`: :func:`write_report`) are imported on first use, so
importing this package does not import torch.

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
from .splits import CALIBRATION, DEV, REPORTED, SPLITS

_LAZY = {"EvalConfig": "run", "run_eval": "run", "run_sweep": "run",
         "write_report": "report", "markdown_table": "report", "sweep_markdown": "report"}


def __getattr__(name: str):
    """Lazy exports of the runner and the report writer."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BM25Retriever",
    "CALIBRATION",
    "DEV",
    "EvalConfig",
    "REPORTED",
    "SPLITS",
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
    "markdown_table",
    "make_passages",
    "mean_stderr",
    "minilm_model_dir",
    "mrr",
    "needle_benchmark",
    "normalize_answer",
    "pack_hits",
    "paired_difference",
    "run_eval",
    "run_sweep",
    "squad_benchmark",
    "summarize",
    "sweep_markdown",
    "write_report",
]
