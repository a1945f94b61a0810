"""S3Index end to end on a tiny random model: search contract, modes, filters, updates,
persistence, bad input and concurrency. (The real model is exercised in test_real_model.)"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from s3_retriever import S3Index
from s3_retriever.engine import EmptyIndexError, S3Settings
from s3_retriever.storage import IndexFormatError
from tests.helpers import TEXTS, tiny_lm, tiny_saes


@pytest.fixture(scope="module")
def tok(lm):
    return lm.tokenizer


@pytest.fixture()
def index(tok):
    idx = S3Index(tiny_lm(tok), tiny_saes(), S3Settings(chunk_tokens=16, context_tokens=4))
    idx.add_texts(TEXTS, metadatas=[{"topic": "science", "year": 1867},
                                    {"topic": "nature"}, {"topic": "music"}],
                  ids=["curie", "amazon", "bach"], show_progress=False)
    return idx


def _key(spans):
    return [(s.doc_id, s.start_char, s.end_char, round(s.score, 6)) for s in spans]


@pytest.mark.parametrize("mode", ["hybrid", "s3", "bm25"])
def test_span_contract(index, mode):
    spans = index.search("Where was Marie Curie born?", k=3, mode=mode)
    assert 1 <= len(spans) <= 3
    texts = dict(zip(["curie", "amazon", "bach"], TEXTS))
    for s in spans:
        assert s.text == texts[s.doc_id][s.start_char:s.end_char]
        assert s.text.strip() == s.text and s.text
        assert (s.s3_score is None) == (mode == "bm25")
        assert (s.bm25_score is None) == (mode == "s3")
        assert s.metadata == index.get_document(s.doc_id).metadata
    assert [s.score for s in spans] == sorted((s.score for s in spans), reverse=True)


def test_bm25_finds_the_lexical_match(index):
    top = index.search("Brandenburg Concertos composer", k=1, mode="bm25")[0]
    assert top.doc_id == "bach" and "Brandenburg" in top.text


def test_budget_is_respected(index):
    spans = index.search("river water rainforest", k=None, budget_tokens=40)
    assert spans and sum(s.n_tokens for s in spans) <= 40
    with pytest.raises(ValueError, match="budget"):
        index.search("river", budget_tokens=1)


def test_fusion_weight_moves_between_modes(index, tok):
    q = "Nobel Prize physics in Paris"
    only_s3 = index.search(q, k=5, mode="s3")
    only_bm = index.search(q, k=5, mode="bm25")
    index.settings.fusion_weight = 1.0
    assert [s.id for s in index.search(q, k=5, mode="hybrid")] == [s.id for s in only_s3]
    index.settings.fusion_weight = 0.0
    hyb_bm = index.search(q, k=5, mode="hybrid")
    assert hyb_bm[0].id == only_bm[0].id


def test_filters_exclude_before_ranking(index):
    for f in ({"topic": "music"}, {"topic": ["music", "nature"]},
              {"topic": {"$in": ["music"]}}, {"topic": {"$ne": "science"}}):
        spans = index.search("Where was Marie Curie born?", k=10, filters=f)
        allowed = {"bach"} if "science" not in json.dumps(f) and "nature" not in json.dumps(f) \
            else {"bach", "amazon"}
        assert spans and {s.doc_id for s in spans} <= allowed
    assert index.search("Curie", k=3, filters={"topic": "none"}) == []
    assert {s.doc_id for s in index.search("Curie", k=10, filters={"year": 1867})} == {"curie"}
    with pytest.raises(ValueError, match="operator"):
        index.search("Curie", filters={"topic": {"$regex": "x"}})


def test_add_after_search_and_delete(index):
    before = index.search("Amazon river", k=2)
    index.add_texts(["The Nile is a long river in Africa. It flows north."], ids=["nile"],
                    show_progress=False)
    assert len(index.index.segments) == 2
    assert "nile" in {s.doc_id for s in index.search("Nile river Africa", k=10)}
    index.delete(["nile"])
    assert "nile" not in {s.doc_id for s in index.search("Nile river Africa", k=10)}
    assert _key(index.search("Amazon river", k=2)) == _key(before)
    with pytest.raises(KeyError, match="ghost"):
        index.delete(["curie", "ghost"])
    assert "curie" in index.index and len(index) == 3
    # a deleted id may be reused
    index.add_texts(["The Nile again."], ids=["nile"], show_progress=False)
    assert len(index) == 4


@pytest.mark.parametrize("bad, exc, match", [
    ([""], ValueError, "empty"),
    (["   \n"], ValueError, "empty"),
    ([b"bytes"], TypeError, "bytes"),
    ([42], TypeError, "int"),
    ("a plain string", TypeError, "list"),
])
def test_bad_texts_leave_index_unchanged(index, bad, exc, match):
    snap = _key(index.search("Bach Leipzig", k=3))
    with pytest.raises(exc, match=match):
        index.add_texts(bad, show_progress=False)
    assert len(index) == 3 and _key(index.search("Bach Leipzig", k=3)) == snap


def test_duplicate_ids(index):
    with pytest.raises(ValueError, match="duplicate.*curie"):
        index.add_texts(["Another text."], ids=["curie"], show_progress=False)
    with pytest.raises(ValueError, match="duplicate.*x"):
        index.add_texts(["One.", "Two."], ids=["x", "x"], show_progress=False)
    with pytest.raises(ValueError, match="JSON"):
        index.add_texts(["One."], metadatas=[{"f": object()}], show_progress=False)
    assert len(index) == 3


@pytest.mark.parametrize("kw, match", [
    ({"k": 0}, "k must"), ({"k": -1}, "k must"), ({"k": None}, "give k"),
    ({"mode": "dense"}, "mode"), ({"budget_tokens": 0}, "budget"),
])
def test_bad_search_arguments(index, kw, match):
    with pytest.raises(ValueError, match=match):
        index.search("Curie", **kw)


def test_bad_queries(index):
    with pytest.raises(ValueError, match="empty"):
        index.search("   ")
    with pytest.raises(TypeError):
        index.search(None)
    with pytest.raises(ValueError, match="longer than the model's context"):
        index.search("word " * 5000)


def test_empty_index(tok):
    idx = S3Index(tiny_lm(tok), tiny_saes())
    with pytest.raises(EmptyIndexError, match="empty"):
        idx.search("anything")


def test_persistence_round_trip(index, tmp_path):
    qs = ["Where was Marie Curie born?", "Which river has the most water?"]
    index.delete(["bach"])
    before_del = [_key(index.search(q, k=3)) for q in qs]
    path = index.save(tmp_path / "idx")
    loaded = S3Index.load(path, model=index.lm)
    assert len(loaded) == 2 and "bach" not in loaded.index
    assert [_key(loaded.search(q, k=3)) for q in qs] == before_del
    loaded.add_texts(["Bach again."], ids=["bach"], show_progress=False)
    assert len(loaded) == 3
    assert loaded.settings == index.settings


def test_load_detects_damage(index, tmp_path, tok):
    path = index.save(tmp_path / "idx")
    # another model
    with pytest.raises(IndexFormatError, match="built with model"):
        S3Index.load(path, model=tiny_lm(tok, seed=1))
    # an edited file
    docs = path / "docs.jsonl"
    docs.write_text(docs.read_text(encoding="utf-8").replace("Warsaw", "Krakow"), encoding="utf-8")
    with pytest.raises(IndexFormatError, match="docs.jsonl"):
        S3Index.load(path, model=index.lm)
    # a truncated postings file
    path = index.save(tmp_path / "idx2")
    victim = sorted((path / "postings").rglob("*.npy"))[0]
    victim.write_bytes(victim.read_bytes()[:-8])
    with pytest.raises(IndexFormatError, match=victim.name):
        S3Index.load(path, model=index.lm)
    with pytest.raises(FileNotFoundError):
        S3Index.load(tmp_path / "missing", model=index.lm)


def test_save_is_atomic_on_failure(index, tmp_path, monkeypatch):
    path = index.save(tmp_path / "idx")
    listing = sorted(p.name for p in path.rglob("*"))
    monkeypatch.setattr("s3_retriever.engine.write_manifest",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        index.save(path)
    assert sorted(p.name for p in path.rglob("*")) == listing
    S3Index.load(path, model=index.lm)


def test_concurrent_searches_equal_serial(index):
    qs = ["Marie Curie", "Amazon basin", "Bach Leipzig", "Nobel physics", "rainforest"] * 3
    serial = [_key(index.search(q, k=2)) for q in qs]
    results: dict[int, list] = {}

    def run(i: int) -> None:
        results[i] = _key(index.search(qs[i], k=2))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(qs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(qs))] == serial


def test_scan_chunks_never_cross_documents(index):
    seg = index.index.segments[0]
    rows = np.asarray(seg.token_doc)
    for row, rec in enumerate(index.index.docs[:3]):
        assert (rows[rec.token_start:rec.token_end] == row).all()


def test_coactivation_scorer_runs(tok):
    idx = S3Index(tiny_lm(tok), tiny_saes(), S3Settings(scorer="coactivation",
                                                        max_df_fraction=1.0))
    idx.add_texts(TEXTS, ids=["a", "b", "c"], show_progress=False)
    spans = idx.search("Marie Curie", k=2, mode="s3")
    assert spans and all(s.s3_score is not None for s in spans)


def test_auto_span_size_follows_the_budget(index):
    assert index.settings.span_tokens == "auto"
    assert [index.span_tokens_for(b) for b in (None, 100, 1024, 4096)] == [48, 48, 102, 192]
    index.settings.span_tokens = 0
    assert index.span_tokens_for(4096) == 0
    single = index.search("Amazon river water", k=10, mode="bm25")
    assert all(s.text.count(". ") == 0 for s in single)  # sentence spans only


def test_settings_validation():
    with pytest.raises(ValueError, match="scorer"):
        S3Settings(scorer="magic").validate()
    with pytest.raises(ValueError, match="fusion_weight"):
        S3Settings(fusion_weight=2).validate()
    with pytest.raises(ValueError, match="unknown settings"):
        S3Settings.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="span_tokens"):
        S3Settings(span_tokens="big").validate()
