"""S3Index end to end on a tiny random model: search contract, modes, filters, updates,
persistence, bad input and concurrency. (The real model is exercised in test_real_model.)"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from s3_retriever import S3Index
from s3_retriever.config import S3Settings, span_tokens_for
from s3_retriever.errors import EmptyIndexError, IndexFormatError
from tests.helpers import TEXTS, generation, tiny_lm, tiny_saes


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
        # a span's score is its seed sentence's, the best of its sentences
        if mode != "hybrid":
            assert s.score == (s.s3_score if mode == "s3" else s.bm25_score)
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
    ({"fusion": "learned"}, r"fusion must be one of \('linear', 'rrf'\)"),
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
    docs = generation(path) / "docs.jsonl"
    docs.write_text(docs.read_text(encoding="utf-8").replace("Warsaw", "Krakow"), encoding="utf-8")
    with pytest.raises(IndexFormatError, match="docs.jsonl"):
        S3Index.load(path, model=index.lm)
    # a truncated codes file
    path = index.save(tmp_path / "idx2")
    victim = sorted((generation(path) / "codes").rglob("*.npy"))[0]
    victim.write_bytes(victim.read_bytes()[:-8])
    with pytest.raises(IndexFormatError, match=victim.name):
        S3Index.load(path, model=index.lm)
    with pytest.raises(FileNotFoundError):
        S3Index.load(tmp_path / "missing", model=index.lm)


def test_save_is_atomic_on_failure(index, tmp_path, monkeypatch):
    path = index.save(tmp_path / "idx")
    listing = sorted(p.name for p in path.rglob("*"))
    monkeypatch.setattr("s3_retriever.storage.write_manifest",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        index.save(path, overwrite=True)
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
    assert len(spans) == 2 and all(s.score == s.s3_score for s in spans)
    assert spans[0].score > 0  # the question shares features with the text


def test_auto_span_size_follows_the_budget(index):
    assert index.settings.span_tokens == "auto"
    q = "Amazon river water"
    # "auto" with k only grows spans to 48 tokens: whole documents of this corpus
    grown = index.search(q, k=10, mode="bm25")
    assert any(s.text.count(". ") >= 1 for s in grown)
    assert all(s.n_tokens <= span_tokens_for("auto", None) for s in grown)
    index.settings.span_tokens = 0
    single = index.search(q, k=10, mode="bm25")
    assert all(s.text.count(". ") == 0 for s in single)  # sentence spans only
    assert len(single) > len(grown)


# ------------------------------------------------------------------ the query-mean term
def _mean_heads(dim=16, seed=1):
    g = np.random.default_rng(seed)
    return [["layers.1", 0, 1.0, g.normal(size=dim).round(4).tolist()],
            ["layers.2", 3, 1.0, g.normal(size=dim).round(4).tolist()],
            ["layers.2", 2, 1.0]]


def test_query_mean_columns_hold_exact_mean_dot_key(tok):
    import torch

    from s3_retriever.model.hooks import QKHooks
    from s3_retriever.retrieval.scan import tokenize_document

    lm = tiny_lm(tok)
    heads = _mean_heads()
    idx = S3Index(lm, tiny_saes(), S3Settings(chunk_tokens=64, context_tokens=4, heads=heads))
    idx.add_texts(TEXTS[:1], ids=["curie"], show_progress=False)
    # head 0 reads kv 0 of layer 1; heads 3 and 2 read kv 1 of layer 2, only 3 has a mean
    assert idx.index.bias_columns == {"layers.1.kv0": 1, "layers.2.kv1": 1}
    assert [h.column for h in idx.heads] == [0, 0, None]
    ids, _ = tokenize_document(tok, TEXTS[0])
    with QKHooks(lm.model, [1, 2], keys=True) as hooks:
        keys = hooks.run(input_ids=lm.input_tensor(ids)).keys
    n = len(lm.sink_ids)
    for (hp, h, _, mean), name in zip(heads[:2], ["layers.1.kv0", "layers.2.kv1"]):
        k = keys[int(hp.split(".")[1])][0, n:, h // 2].float()
        want = (k @ torch.tensor(mean)).numpy()
        got = idx.index.segments[0].bias[name][:, 0].astype(np.float32)
        np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)


def test_query_mean_logits_and_persistence(tok, tmp_path):
    import torch

    from s3_retriever.retrieval.scoring import attention_scores

    heads = _mean_heads()
    idx = S3Index(tiny_lm(tok), tiny_saes(), S3Settings(chunk_tokens=16, context_tokens=4,
                                                        heads=heads))
    idx.add_texts(TEXTS, ids=["curie", "amazon", "bach"], show_progress=False)
    seg = idx.index.segments[0]
    q = {hp: torch.randn(5, 4, 16) for hp in ("layers.1", "layers.2")}
    codes = {nm: (seg.codes[nm].ids, seg.codes[nm].acts) for nm in idx.scanner.names}
    hw = idx.heads[0]  # layers.1 head 0, with a mean
    got = attention_scores(q, codes, idx.saes, [hw], dict(seg.bias))
    mean = torch.tensor(hw.query_mean)
    exact = torch.from_numpy(seg.bias["layers.1.kv0"][:, 0].astype(np.float32))
    sae = idx.saes["layers.1"]
    ids, acts = codes["layers.1.kv0"]
    k_hat = sae.decode(torch.from_numpy(acts.astype(np.float32)),
                       torch.from_numpy(ids.astype(np.int64)), kind="key")
    logits = (k_hat @ (q["layers.1"][:, 0] - mean).T) / 4.0 + exact[:, None] / 4.0
    np.testing.assert_allclose(got, torch.softmax(logits.double(), 0).sum(1).numpy(),
                               rtol=1e-4)
    # without the term the scores differ (the test would pass vacuously otherwise)
    plain = attention_scores(q, codes, idx.saes, [hw], None)
    assert not np.allclose(got, plain)

    before = _key(idx.search("Where was Marie Curie born?", k=3, mode="s3"))
    idx.save(tmp_path / "qm")
    back = S3Index.load(tmp_path / "qm", model=idx.lm)
    assert back.index.bias_columns == idx.index.bias_columns
    assert [h.to_entry() for h in back.heads] == [h.to_entry() for h in idx.heads]
    assert _key(back.search("Where was Marie Curie born?", k=3, mode="s3")) == before
    # deleting and compacting keeps each token's bias with its token
    back.delete(["curie"])
    kept = back.index.live_token_mask(0)
    want = seg.bias["layers.2.kv1"][kept]
    back.index.compact()
    np.testing.assert_array_equal(back.index.segments[0].bias["layers.2.kv1"], want)


def test_query_mean_off_and_bad_means(tok):
    idx = S3Index(tiny_lm(tok), tiny_saes(), S3Settings(chunk_tokens=16, context_tokens=4,
                                                        heads=_mean_heads(), query_mean=False))
    assert idx.index.bias_columns == {} and all(h.column is None for h in idx.heads)
    with pytest.raises(ValueError, match="mean query must be 16 finite floats"):
        S3Index(tiny_lm(tok), tiny_saes(), S3Settings(heads=[["layers.1", 0, 1.0, [0.0] * 3]]))


def test_corrupt_bias_file_is_reported(tok, tmp_path):
    idx = S3Index(tiny_lm(tok), tiny_saes(), S3Settings(chunk_tokens=16, context_tokens=4,
                                                        heads=_mean_heads()))
    idx.add_texts(TEXTS, ids=["curie", "amazon", "bach"], show_progress=False)
    idx.save(tmp_path / "qm")
    f = generation(tmp_path / "qm") / "codes" / "seg000000" / "layers.1.kv0.bias.npy"
    f.write_bytes(f.read_bytes()[:-4])
    with pytest.raises(IndexFormatError, match="bias"):
        S3Index.load(tmp_path / "qm", model=idx.lm)


def test_unit_scores_align_with_search(index):
    q = "Where was Marie Curie born?"
    us = index.unit_scores(q)
    n = len(us["doc_id"])
    assert us["head"].shape == (len(index.heads), n) and us["s3"].shape == (n,)
    assert us["bm25"].shape == (n,) and us["bounds"].shape == (n, 2)
    # "s3" is what a search ranks by; "head" holds one row per named head
    assert us["heads"] == [h.name for h in index.heads] == [
        f"layers.{layer}/{h}" for layer in (1, 2) for h in range(4)]
    w = np.array([h.weight for h in index.heads])
    rows = index._rows(None, None)
    plain = index._s3_units(q, rows, per_head=False)[1]
    np.testing.assert_allclose(us["s3"], plain)
    # per-head rows are per-sentence maxima of each head's smoothed scores: their weighted
    # sum bounds the sentence score of the weighted sum from above
    assert (w @ us["head"] >= us["s3"] - 1e-9).all()
    assert us["doc_id"] == ["curie"] * 3 + ["amazon"] * 3 + ["bach"] * 3
    assert int(us["tokens"].sum()) == index.index.n_tokens  # every token in one unit
    for d, (a, b) in zip(us["doc_id"], us["bounds"]):
        assert index.get_document(d).text[a:b].strip()
    # a restriction ranks only its documents' units; BM25 statistics stay those of the index
    for only in (index.unit_scores(q, doc_ids=["bach"]),
                 index.unit_scores(q, filters={"topic": "music"})):
        assert only["doc_id"] == ["bach"] * 3 and only["head"].shape == (len(index.heads), 3)
        np.testing.assert_allclose(only["bm25"], us["bm25"][6:])
        np.testing.assert_array_equal(only["bounds"], us["bounds"][6:])
    index.settings.span_tokens = 0
    top = index.search(q, k=1, mode="s3")[0]
    best = int(np.argmax(us["s3"]))
    assert (top.doc_id, top.start_char, top.end_char) == \
        (us["doc_id"][best], *map(int, us["bounds"][best]))


def test_spans_stop_at_paragraph_breaks_unless_asked(tok):
    text = ("Marie Curie was born in Warsaw. She studied there.\n\n"
            "The Amazon flows through Brazil. It is a long river.")
    for cross in (False, True):
        idx = S3Index(tiny_lm(tok), tiny_saes(),
                      S3Settings(chunk_tokens=16, context_tokens=4, span_tokens=200,
                                 cross_paragraphs=cross))
        idx.add_texts([text], ids=["d"], show_progress=False)
        spans = idx.search("Where was Marie Curie born?", k=4, mode="bm25")
        assert all(s.text == text[s.start_char:s.end_char] for s in spans)
        assert any("\n\n" in s.text for s in spans) == cross
