"""Metrics: answer EM/F1, gold-evidence recall, answer recall, rank of the first hit.

Spans and evidence items may be given as tuples ``(doc_id, start_char, end_char, ...)``
or as any objects with ``doc_id``, ``start_char`` and ``end_char`` attributes
(:class:`~.data.Evidence`, :class:`~.baselines.Hit`, :class:`~.baselines.Passage`...).

Coverage is exact, in characters: a gold item ``[s, e)`` of document ``d`` is *covered*
by a set of spans when one interval of the union of those spans of document ``d``
contains all of ``[s, e)`` (adjacent or overlapping spans merge).

Evidence items with the same non-None ``group`` attribute are alternatives (SQuAD's
several annotated answer spans): the group counts once, covered when any one of its
items is. Items without a group (HotpotQA's supporting sentences) each count on their
own.

Example:
    >>> round(f1_score("the Eiffel Tower", ["Eiffel tower in Paris"]), 3)
    0.667
    >>> evidence_recall([("d", 0, 10)], [("d", 2, 8), ("d", 8, 20)])
    0.5
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "answer_recall",
    "evidence_recall",
    "exact_match",
    "f1_score",
    "first_hit_rank",
    "mean_stderr",
    "mrr",
    "normalize_answer",
    "paired_difference",
    "summarize",
]

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SPECIAL = ("yes", "no", "noanswer")


def normalize_answer(s: str) -> str:
    """The official SQuAD / HotpotQA normalisation.

    Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace.

    Example:
        >>> normalize_answer("  The  Eiffel-Tower, Paris! ")
        'eiffeltower paris'
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _as_list(golds: str | Iterable[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else list(golds)


def exact_match(prediction: str, golds: str | Iterable[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0.

    Example:
        >>> exact_match("The Beatles", ["beatles", "the fab four"])
        1.0
        >>> exact_match("yes", "no")
        0.0
    """
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(g) for g in _as_list(golds)))


def _f1_one(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction), normalize_answer(gold)
    if (p in _SPECIAL or g in _SPECIAL) and p != g:
        return 0.0
    p_tok, g_tok = p.split(), g.split()
    common = Counter(p_tok) & Counter(g_tok)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(p_tok)
    recall = same / len(g_tok)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, golds: str | Iterable[str]) -> float:
    """Token F1 between normalised prediction and gold, maximised over the golds.

    HotpotQA's special case: if either side normalises to ``yes``, ``no`` or
    ``noanswer`` and the two differ, F1 is 0.

    Example:
        >>> f1_score("yes it is", ["yes"])
        0.0
        >>> round(f1_score("Barack Obama", ["President Barack Obama"]), 3)
        0.8
    """
    golds = _as_list(golds)
    if not golds:
        return 0.0
    return max(_f1_one(prediction, g) for g in golds)


# --------------------------------------------------------------------------- spans


def _span(obj: Any) -> tuple[str, int, int]:
    """``(doc_id, start, end)`` from a tuple or an object with those attributes."""
    if isinstance(obj, tuple | list):
        return str(obj[0]), int(obj[1]), int(obj[2])
    return str(obj.doc_id), int(obj.start_char), int(obj.end_char)


def _group(obj: Any) -> Any:
    if isinstance(obj, tuple | list):
        return obj[3] if len(obj) > 3 else None
    return getattr(obj, "group", None)


class _Coverage:
    """Incrementally maintained union of intervals, per document."""

    def __init__(self) -> None:
        self.by_doc: dict[str, list[list[int]]] = {}

    def add(self, doc_id: str, start: int, end: int) -> None:
        if end <= start:
            return
        ivs = self.by_doc.setdefault(doc_id, [])
        ivs.append([start, end])
        ivs.sort()
        merged: list[list[int]] = []
        for a, b in ivs:
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.by_doc[doc_id] = merged

    def covers(self, doc_id: str, start: int, end: int) -> bool:
        return any(a <= start and end <= b for a, b in self.by_doc.get(doc_id, ()))


def _units(evidence: Iterable[Any]) -> list[list[tuple[str, int, int]]]:
    """Evidence grouped into scoring units (a group of alternatives, or a single item)."""
    units: list[list[tuple[str, int, int]]] = []
    groups: dict[Any, int] = {}
    for ev in evidence:
        g = _group(ev)
        if g is None:
            units.append([_span(ev)])
        elif g in groups:
            units[groups[g]].append(_span(ev))
        else:
            groups[g] = len(units)
            units.append([_span(ev)])
    return units


def evidence_recall(spans: Iterable[Any], evidence: Iterable[Any]) -> float | None:
    """Fraction of gold evidence units fully covered by the union of the retrieved spans.

    Returns None when there is no gold evidence (nothing to score).

    Example:
        >>> evidence_recall([("a", 0, 5), ("a", 5, 12)], [("a", 1, 11), ("b", 0, 3)])
        0.5
        >>> evidence_recall([("a", 0, 4)], [("a", 0, 3, 0), ("a", 10, 13, 0)])  # alternatives
        1.0
        >>> evidence_recall([], []) is None
        True
    """
    units = _units(evidence)
    if not units:
        return None
    cov = _Coverage()
    for s in spans:
        cov.add(*_span(s))
    hit = sum(any(cov.covers(*ev) for ev in unit) for unit in units)
    return hit / len(units)


def joint_recall(spans: Iterable[Any], evidence: Iterable[Any]) -> float | None:
    """1.0 when the spans cover every gold evidence unit (for HotpotQA: both supporting
    facts, what a bridge question needs), else 0.0; None without gold evidence.

    Example:
        >>> joint_recall([("a", 0, 12)], [("a", 1, 11), ("b", 0, 3)])
        0.0
    """
    r = evidence_recall(spans, evidence)
    return None if r is None else float(r == 1.0)


def first_hit_rank(spans: Sequence[Any], evidence: Iterable[Any]) -> int | None:
    """1-based rank ``r`` of the first hit, or None if no prefix of the ranking hits.

    A *hit* at rank ``r``: the union of the top ``r`` spans fully covers at least one
    gold evidence item (for a gold item that lies inside one span this is simply the
    first span that contains it; the union also credits an item split across spans).

    Example:
        >>> first_hit_rank([("x", 0, 9), ("a", 0, 4), ("a", 4, 9)], [("a", 2, 7)])
        3
        >>> first_hit_rank([("x", 0, 9)], [("a", 2, 7)]) is None
        True
    """
    items = [_span(ev) for ev in evidence]
    if not items:
        return None
    cov = _Coverage()
    for r, s in enumerate(spans, start=1):
        cov.add(*_span(s))
        if any(cov.covers(*ev) for ev in items):
            return r
    return None


def mrr(spans: Sequence[Any], evidence: Iterable[Any]) -> float | None:
    """Reciprocal rank of the first hit (see :func:`first_hit_rank`); 0.0 if none.

    None when there is no gold evidence. Average over questions with :func:`summarize`.

    Example:
        >>> mrr([("x", 0, 9), ("a", 0, 9)], [("a", 2, 7)])
        0.5
    """
    items = list(evidence)
    if not items:
        return None
    r = first_hit_rank(spans, items)
    return 0.0 if r is None else 1.0 / r


def answer_recall(texts: Iterable[str], answers: Iterable[str]) -> float | None:
    """1.0 if any normalised gold answer occurs in the normalised retrieved text.

    The retrieved texts are joined with spaces; a match must start and end on word
    boundaries (so ``"1"`` is not found in ``"1994"``). Answers that normalise to
    ``yes``/``no``/``noanswer`` or to nothing cannot be found in text and are skipped;
    if no gold answer remains, the result is None (not scored: HotpotQA comparison
    questions answered yes/no are left out of the answer-recall mean).

    Example:
        >>> answer_recall(["He was born in Paris, France."], ["paris"])
        1.0
        >>> answer_recall(["Founded in 1994."], ["1"])
        0.0
        >>> answer_recall(["anything"], ["yes"]) is None
        True
    """
    golds = [g for g in (normalize_answer(a) for a in answers) if g and g not in _SPECIAL]
    if not golds:
        return None
    hay = f" {normalize_answer(' '.join(texts))} "
    return float(any(f" {g} " in hay for g in golds))


# --------------------------------------------------------------------------- statistics


def _clean(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


def mean_stderr(values: Iterable[float | None]) -> dict[str, float]:
    """Mean, standard error of the mean (sample sd / sqrt n) and n; None/NaN skipped.

    Example:
        >>> r = mean_stderr([1.0, 0.0, 1.0, 0.0, None])
        >>> r["mean"], round(r["stderr"], 4), r["n"]
        (0.5, 0.2887, 4)
    """
    xs = _clean(values)
    n = len(xs)
    if n == 0:
        return {"mean": float("nan"), "stderr": float("nan"), "n": 0}
    mean = sum(xs) / n
    if n == 1:
        return {"mean": mean, "stderr": float("nan"), "n": 1}
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return {"mean": mean, "stderr": math.sqrt(var / n), "n": n}


def paired_difference(a: Sequence[float | None], b: Sequence[float | None]) -> dict[str, float]:
    """Mean and standard error of ``a[i] - b[i]`` over pairs where both are scored.

    Example:
        >>> paired_difference([1.0, 1.0, 0.0], [0.0, 1.0, None])
        {'mean': 0.5, 'stderr': 0.5, 'n': 2}
    """
    if len(a) != len(b):
        raise ValueError(f"paired_difference needs equal lengths, got {len(a)} and {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)
             if x is not None and y is not None]
    return mean_stderr(diffs)


def summarize(rows: Iterable[Mapping[str, Any]],
              metrics: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Per-metric mean, standard error and n over rows of per-question results.

    ``metrics``: the keys to summarise (default: every key whose values are numbers or
    None). None values (unscored questions) are skipped.

    Example:
        >>> summarize([{"qid": "a", "recall": 1.0}, {"qid": "b", "recall": 0.5}])
        {'recall': {'mean': 0.75, 'stderr': 0.25, 'n': 2}}
    """
    rows = list(rows)
    if metrics is None:
        keys: list[str] = []
        for row in rows:
            for k, v in row.items():
                if k not in keys and (v is None or (isinstance(v, int | float)
                                                    and not isinstance(v, bool))):
                    keys.append(k)
        metrics = [k for k in keys
                   if all(r.get(k) is None or (isinstance(r.get(k), int | float)
                                               and not isinstance(r.get(k), bool))
                          for r in rows)
                   and any(r.get(k) is not None for r in rows)]
    return {k: mean_stderr(r.get(k) for r in rows) for k in metrics}
