"""Metrics against hand-computed values."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from s3_retriever.evaluation.data import Evidence
from s3_retriever.evaluation.metrics import (
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


@dataclass
class Span:
    doc_id: str
    start_char: int
    end_char: int


def test_normalize_answer():
    assert normalize_answer("The  Quick, brown FOX!") == "quick brown fox"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words


def test_exact_match():
    assert exact_match("the Beatles.", ["Beatles"]) == 1.0
    assert exact_match("Beatles", "The Rolling Stones") == 0.0
    assert exact_match("yes", ["Yes"]) == 1.0
    assert exact_match("x", []) == 0.0


def test_f1_known_values():
    # pred "new york city" vs gold "new york": P=2/3, R=1 -> F1=0.8
    assert f1_score("New York City", ["New York"]) == pytest.approx(0.8)
    # max over golds
    assert f1_score("New York City", ["Boston", "New York City"]) == 1.0
    # multiplicity: pred "x y y", gold "y y y": common 2 -> P=R=2/3
    assert f1_score("x y y", ["y y y"]) == pytest.approx(2 / 3)
    assert f1_score("cat", ["dog"]) == 0.0


def test_f1_yes_no_special_case():
    assert f1_score("yes", ["no"]) == 0.0
    assert f1_score("yes indeed", ["yes"]) == 0.0  # differs from a yes/no gold
    assert f1_score("no", ["no answer"]) == 0.0  # "no" is special and differs
    assert f1_score("noanswer", ["something"]) == 0.0
    assert f1_score("Yes.", ["yes"]) == 1.0


def test_evidence_recall_partial_coverage():
    evidence = [Evidence("a", 10, 20), Evidence("a", 30, 40), Evidence("b", 0, 5)]
    # first item covered by two touching spans, second only partly, third not at all
    spans = [("a", 5, 15), ("a", 15, 22), ("a", 32, 40)]
    assert evidence_recall(spans, evidence) == pytest.approx(1 / 3)
    assert evidence_recall(spans + [Span("b", 0, 5)], evidence) == pytest.approx(2 / 3)
    assert evidence_recall(spans + [("a", 30, 33), ("b", 0, 9)], evidence) == 1.0
    # a span of another document never counts
    assert evidence_recall([("c", 0, 100)], evidence) == 0.0
    assert evidence_recall([("a", 0, 100)], []) is None


def test_evidence_recall_alternative_groups():
    evidence = [Evidence("a", 0, 5, group=0), Evidence("a", 0, 7, group=0),
                Evidence("a", 50, 60)]
    assert evidence_recall([("a", 0, 5)], evidence) == 0.5
    assert evidence_recall([("a", 0, 7), ("a", 50, 60)], evidence) == 1.0


def test_first_hit_rank_and_mrr():
    evidence = [("a", 10, 20), ("b", 0, 5)]
    ranked = [("c", 0, 50), ("a", 12, 30), ("a", 0, 12), ("b", 0, 5)]
    # rank 2 covers only part of ("a",10,20); the union with rank 3 covers it
    assert first_hit_rank(ranked, evidence) == 3
    assert mrr(ranked, evidence) == pytest.approx(1 / 3)
    assert first_hit_rank([Span("b", 0, 9)], evidence) == 1
    assert mrr([("c", 0, 9)], evidence) == 0.0
    assert first_hit_rank([("c", 0, 9)], evidence) is None
    assert mrr([("c", 0, 9)], []) is None


def test_answer_recall():
    texts = ["Scott Derrickson is an American director.", "Ed Wood was a filmmaker"]
    assert answer_recall(texts, ["american"]) == 1.0
    assert answer_recall(texts, ["The Ed Wood"]) == 1.0
    assert answer_recall(texts, ["British", "director filmmaker"]) == 0.0
    # words must match whole: "wood" inside "woodstock" does not count
    assert answer_recall(["Woodstock festival"], ["wood"]) == 0.0
    # match across the boundary of two retrieved texts counts (texts are concatenated)
    assert answer_recall(["ends with New", "York begins"], ["New York"]) == 1.0
    assert answer_recall(texts, ["yes"]) is None
    assert answer_recall(texts, ["no", "American"]) == 1.0
    assert answer_recall(texts, []) is None


def test_mean_stderr_and_paired_difference():
    r = mean_stderr([1.0, 2.0, 3.0, None, float("nan")])
    assert r["n"] == 3 and r["mean"] == 2.0
    assert r["stderr"] == pytest.approx(1.0 / math.sqrt(3))  # sd 1, n 3
    assert math.isnan(mean_stderr([])["mean"])
    assert math.isnan(mean_stderr([4.0])["stderr"])
    d = paired_difference([1.0, 0.5, 0.0, 1.0], [0.0, 0.5, 0.0, None])
    # diffs 1, 0, 0: mean 1/3, sd = sqrt(((2/3)^2 + 2*(1/3)^2)/2) = sqrt(1/3)
    assert d["n"] == 3 and d["mean"] == pytest.approx(1 / 3)
    assert d["stderr"] == pytest.approx(math.sqrt(1 / 3) / math.sqrt(3))
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0])


def test_summarize():
    rows = [{"qid": "a", "recall": 1.0, "mrr": 0.5, "ok": True},
            {"qid": "b", "recall": 0.0, "mrr": None, "ok": False}]
    s = summarize(rows)
    assert set(s) == {"recall", "mrr"}
    assert s["recall"]["mean"] == 0.5 and s["recall"]["n"] == 2
    assert s["mrr"]["mean"] == 0.5 and s["mrr"]["n"] == 1
    assert set(summarize(rows, metrics=["recall"])) == {"recall"}
