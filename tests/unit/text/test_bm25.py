"""BM25 over text units: the tokenizer and BM25Index (parity with rank_bm25, add, mask, top)."""

from __future__ import annotations

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from s3_retriever.text.bm25 import STOPWORDS, BM25Index, tokenize

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
    assert all(tokenize(w) == [] for w in STOPWORDS)  # every stopword is dropped
    assert tokenize("what the cat saw") == ["cat", "saw"]


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
    assert BM25Okapi([["paris", "france"], ["paris", "rome"]]).get_scores(
        ["paris", "rome"]).min() < 0  # what the clamp prevents
    assert two.scores("paris rome").tolist() == [0.0, 0.0]
    # later adds make the index informative
    one.add(["berlin", "rome", "madrid"])
    assert int(np.argmax(one.scores("paris"))) == 0 and one.scores("paris")[0] > 0


def test_bm25_top_breaks_ties_by_index_and_custom_tokenizer():
    bm = BM25Index(["red car", "blue sky", "red car", "green pear", "old tree"])
    hits = bm.top("red", 3)
    assert [i for i, _ in hits] == [0, 2, 1] and hits[0][1] == hits[1][1] > 0 == hits[2][1]
    upper = BM25Index(["A b", "a B", "c d", "e f"], tokenizer=str.split)  # case-sensitive
    assert upper.scores("A").tolist()[1:] == [0.0, 0.0, 0.0] and upper.scores("A")[0] > 0


@pytest.mark.parametrize("kw", [{"k1": -1.0}, {"b": 1.5}, {"b": -0.1}])
def test_bm25_bad_parameters(kw):
    with pytest.raises(ValueError, match="k1"):
        BM25Index(CORPUS, **kw)
