"""Tests for s3_retriever.calibration: budget recall and the head choice, on hand-made arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from s3_retriever.calibration import Calibration, budget_recall


def _recall(scores, lengths, gold, budget):
    return budget_recall(np.asarray(scores, float), np.asarray(lengths),
                         np.asarray(gold, bool), budget)


@pytest.mark.parametrize("scores, lengths, gold, budget, want", [
    # best first: units 0 and 2 fit 20 tokens, the gold unit 2 among them
    ([0.9, 0.1, 0.5], [10, 10, 10], [False, False, True], 20, 1.0),
    ([0.9, 0.1, 0.5], [10, 10, 10], [False, True, False], 20, 0.0),
    # unit 1 (80) does not fit what is left (50): skipped, and the walk goes on to unit 2
    ([0.9, 0.8, 0.1], [50, 80, 40], [False, False, True], 100, 1.0),
    ([0.9, 0.8, 0.1], [50, 80, 40], [False, True, False], 100, 0.0),
    # two gold units, one inside the budget
    ([0.2, 0.9, 0.5, 0.1], [10, 10, 10, 10], [True, True, False, False], 10, 0.5),
    # nothing fits
    ([0.9, 0.5], [30, 40], [True, True], 20, 0.0),
    # a budget for everything
    ([0.1, 0.2, 0.3], [5, 5, 5], [True, False, True], 15, 1.0),
])
def test_budget_recall(scores, lengths, gold, budget, want):
    assert _recall(scores, lengths, gold, budget) == want


def test_budget_recall_order_is_by_score_not_position():
    lengths, gold = [10] * 5, [False, False, False, False, True]
    assert _recall([0.0, 0.1, 0.2, 0.3, 0.4], lengths, gold, 10) == 1.0
    assert _recall([0.4, 0.3, 0.2, 0.1, 0.0], lengths, gold, 40) == 0.0
    assert _recall([0.4, 0.3, 0.2, 0.1, 0.0], lengths, gold, 50) == 1.0


def test_budget_recall_without_gold_is_nan():
    assert math.isnan(_recall([0.9, 0.1], [10, 10], [False, False], 100))
    assert math.isnan(_recall([], [], [], 100))


def _calibration() -> Calibration:
    """Two layers x two heads, two questions of three 10-token units, budget one unit.
    Alone, head (2, 1) finds both gold units, (1, 0) and (1, 1) one each, (2, 0) none."""
    s1 = np.array([[[1.0, 0.0, 0.0], [0.0, 0.9, 0.0]],
                   [[0.0, 0.0, 1.0], [0.6, 0.0, 0.5]]])
    s2 = np.array([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.2]],
                   [[0.0, 1.0, 0.0], [0.0, 0.4, 0.5]]])
    gold = {"q1": np.array([True, False, False]), "q2": np.array([False, False, True])}
    lengths = {q: np.array([10, 10, 10]) for q in gold}
    recall = np.zeros((2, 2))
    for q, sc in (("q1", s1), ("q2", s2)):
        for li in range(2):
            for h in range(2):
                recall[li, h] += budget_recall(sc[li, h], lengths[q], gold[q], 10) / 2
    return Calibration([1, 2], 10, recall, {"q1": s1, "q2": s2}, gold, lengths)


def test_mix_recall_sums_head_scores():
    cal = _calibration()
    np.testing.assert_array_equal(cal.recall, [[0.5, 0.5], [0.0, 1.0]])
    assert cal.mix_recall([(2, 1)]) == 1.0
    assert cal.mix_recall([(2, 0)]) == 0.0
    # summed, (1, 0) and (1, 1) find both gold units though each alone finds one
    assert cal.mix_recall([(1, 0), (1, 1)]) == 1.0
    assert cal.mix_recall([(1, 0), (1, 1)], weights=[1.0, 0.0]) == 0.5
    empty = Calibration([1], 10, np.zeros((1, 2)), {}, {}, {})
    assert math.isnan(empty.mix_recall([(1, 0)]))


def test_choose_heads_keeps_the_best_prefix():
    heads, curve = _calibration().choose_heads(max_heads=3)
    assert len(curve) == 3 and curve[0] == 1.0
    assert heads == [(2, 1)]  # the best single head already finds everything
    heads, curve = _calibration().choose_heads(max_heads=1)
    assert heads == [(2, 1)] and curve == [1.0]
