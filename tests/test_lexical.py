"""Tests for s3_retriever.lexical: tokenizer, BM25 index, normalisation, fusion."""

from __future__ import annotations

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from s3_retriever.lexical import STOPWORDS, BM25Index, fuse, normalize, tokenize

CORPUS = [
    "Paris is the capital and largest city of France.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
    "Berlin is the capital of Germany; Germany borders France.",
    "Bananas are yellow fruits grown in tropical countries.",
    "The Louvre museum in Paris holds the Mona Lisa.",
    "Rome was founded, according to legend, in 753 BC.",
    "France won the football World Cup in 2018 and in 1998.",
    "Tropical fruits include mangoes, bananas and papayas.",
]


def test_tokenize():
    assert tokenize("The Cats of ROME, in the 1990s: 42 dogs!") == ["cat", "rome", "1990", "42", "dog"]
    assert tokenize("glass virus analysis bus news") == ["glass", "virus", "analysis", "bus", "new"]
    assert tokenize("cats", stem=False) == ["cats"]
    assert tokenize("Éclairs naïve café") == ["éclair", "naïve", "café"]
    assert tokenize("") == [] and tokenize("the of and is was") == []
    assert 30 <= len(STOPWORDS) <= 100


@pytest.mark.parametrize("k1,b", [(1.5, 0.75), (1.2, 0.3)])
def test_bm25_parity_with_rank_bm25(k1, b):
    okapi = BM25Okapi([tokenize(p) for p in CORPUS], k1=k1, b=b)
    bm = BM25Index(CORPUS, k1=k1, b=b)
    assert len(bm) == len(CORPUS)
    assert okapi.average_idf > 0  # the regime where the idf floor is rank_bm25's own
    for q in ["capital of France", "Paris Paris tower", "tropical bananas", "1998 2018",
              "unknownword", "france germany capital city paris"]:
        ref = okapi.get_scores(tokenize(q))
        assert np.allclose(bm.scores(q), ref, rtol=1e-12, atol=1e-12), q
    # a term in more than half the passages gets rank_bm25's positive epsilon floor
    many = ["x a", "x b", "x c", "y d", "x e"]
    ok2 = BM25Okapi([tokenize(p) for p in many])
    assert np.allclose(BM25Index(many).scores("x d"), ok2.get_scores(["x", "d"]))


def test_bm25_add_rebuilds_like_a_fresh_index():
    bm = BM25Index(CORPUS[:3])
    bm.add(CORPUS[3:])
    fresh = BM25Index(CORPUS)
    assert len(bm) == len(CORPUS)
    for q in ["capital of France", "bananas mangoes", "Rome legend"]:
        assert np.allclose(bm.scores(q), fresh.scores(q))
    with pytest.raises(TypeError):
        bm.add("one string")
    with pytest.raises(TypeError):
        bm.add(["ok", 3])  # type: ignore[list-item]
    assert len(bm) == len(CORPUS)  # nothing lost after a failed add
    assert np.allclose(bm.scores("Rome legend"), fresh.scores("Rome legend"))


def test_bm25_mask_and_top():
    bm = BM25Index(CORPUS)
    full = bm.scores("Paris")
    mask = np.ones(len(CORPUS), dtype=bool)
    mask[[0, 4]] = False
    masked = bm.scores("Paris", mask)
    assert np.isneginf(masked[~mask]).all()
    assert np.array_equal(masked[mask], full[mask])  # IDF from the whole index
    top = bm.top("Paris", 2)
    assert [i for i, _ in top] == [0, 4] or [i for i, _ in top] == [4, 0]
    assert top[0][1] >= top[1][1] > 0
    assert [i for i, _ in bm.top("Paris", 2, mask)][0] == 1
    # zero-score passages fill up in index order; masked ones never appear
    assert [i for i, _ in bm.top("Paris", 4, mask)] == [1, 2, 3, 5]
    assert len(bm.top("Paris", 100)) == len(CORPUS)
    with pytest.raises(ValueError):
        bm.top("Paris", 0)
    with pytest.raises(ValueError):
        bm.scores("Paris", np.ones(3, dtype=bool))
    with pytest.raises(ValueError):
        bm.scores("Paris", np.ones(len(CORPUS)))


def test_bm25_empty_query_and_tiny_corpora():
    bm = BM25Index(CORPUS)
    assert bm.scores("").tolist() == [0.0] * len(CORPUS)
    assert bm.scores("the of and").tolist() == [0.0] * len(CORPUS)
    empty = BM25Index()
    assert len(empty) == 0 and empty.scores("paris").shape == (0,) and empty.top("paris", 3) == []
    assert BM25Index([]).scores("x").shape == (0,)
    # corpora where rank_bm25 would divide by zero
    assert BM25Index(["", "the of"]).scores("paris").tolist() == [0.0, 0.0]
    # 1 and 2 passages: rank_bm25's floor would be negative; clamped, scores are >= 0
    one = BM25Index(["paris france"])
    assert one.scores("paris").tolist() == [0.0]
    two = BM25Index(["paris france", "paris rome"])
    assert (two.scores("paris rome") >= 0).all()
    # later adds make the index informative
    one.add(["berlin", "rome", "madrid"])
    assert int(np.argmax(one.scores("paris"))) == 0 and one.scores("paris")[0] > 0


def test_normalize():
    x = np.array([2.0, 4.0, -np.inf, 3.0])
    assert normalize(x).tolist() == [0.0, 1.0, 0.0, 0.5]
    m = np.array([True, False, True, True])
    assert normalize(x, m).tolist() == [0.0, 0.0, 0.0, 1.0]
    assert normalize(np.full(3, 7.0)).tolist() == [0.0, 0.0, 0.0]
    z = normalize(np.array([1.0, 2.0, 3.0]), method="zscore")
    assert np.isclose(z.mean(), 0) and np.isclose(z.std(), 1)
    with pytest.raises(ValueError, match="minmax"):
        normalize(x, method="softmax")


def order(x: np.ndarray) -> list[int]:
    return np.argsort(-x, kind="stable").tolist()


@pytest.mark.parametrize("method", ["linear", "rrf"])
def test_fuse_extreme_weights_reproduce_single_orders(method):
    rng = np.random.default_rng(3)
    s3 = rng.normal(size=50)
    bm = rng.gamma(1.0, size=50)
    assert order(fuse(s3, bm, method=method, weight=1.0)) == order(s3)
    assert order(fuse(s3, bm, method=method, weight=0.0)) == order(bm)


@pytest.mark.parametrize("method", ["linear", "rrf"])
def test_fuse_intermediate_weight_changes_top(method):
    s3 = np.array([1.0, 0.8, 0.0, 0.1])
    bm = np.array([0.0, 0.8, 1.0, 0.1])
    assert int(np.argmax(fuse(s3, bm, method=method, weight=1.0))) == 0
    assert int(np.argmax(fuse(s3, bm, method=method, weight=0.0))) == 2
    assert int(np.argmax(fuse(s3, bm, method=method, weight=0.5))) == 1


def test_fuse_values_mask_and_ties():
    s3 = np.array([3.0, 1.0, 2.0, 2.0])
    bm = np.array([0.0, 10.0, 5.0, 99.0])
    lin = fuse(s3, bm, weight=0.25)
    assert np.allclose(lin, [0.25 * 1.0, 0.75 * 10 / 99, 0.25 * 0.5 + 0.75 * 5 / 99, 0.25 * 0.5 + 0.75])
    rrf = fuse(s3, bm, method="rrf", weight=0.5, rrf_k=0)
    # s3 ranks: 1, 4, 2, 2 (tie shares the best rank); bm ranks: 4, 2, 3, 1
    assert np.allclose(rrf, [0.5 / 1 + 0.5 / 4, 0.5 / 4 + 0.5 / 2, 0.5 / 2 + 0.5 / 3, 0.5 / 2 + 0.5])
    m = np.array([True, True, False, True])
    fm = fuse(s3, bm, weight=0.5, mask=m)
    assert np.isneginf(fm[2]) and np.isfinite(fm[m]).all()
    # normalisation runs over the masked entries only: bm max is 99 either way, s3 min 1
    assert np.isclose(fm[0], 0.5 * 1.0 + 0.5 * 0.0)
    assert np.isneginf(fuse(s3, bm, mask=np.zeros(4, dtype=bool))).all()
    # -inf s3 (a sentence without tokens) stays usable through BM25
    f = fuse(np.array([-np.inf, 1.0, 0.0]), np.array([1.0, 0.0, 0.0]), weight=0.5)
    assert np.isfinite(f).all() and f[0] == 0.5


def test_fuse_errors():
    a = np.array([1.0, 2.0])
    with pytest.raises(ValueError, match="linear, rrf"):
        fuse(a, a, method="max")
    for w in (-0.1, 1.5):
        with pytest.raises(ValueError, match="weight"):
            fuse(a, a, weight=w)
    with pytest.raises(ValueError):
        fuse(a, np.array([1.0]))
    with pytest.raises(ValueError, match="NaN"):
        fuse(np.array([np.nan, 1.0]), a)
    with pytest.raises(ValueError):
        fuse(a, a, rrf_k=-1)
