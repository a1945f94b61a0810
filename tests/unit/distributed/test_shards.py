"""Exact sharded search: a ShardedIndex over shards split from one index returns what the
index returns (same spans in the same order, scores within float rounding), for every mode,
fusion, filter, doc_ids, k and budget; errors as on one index; save / load round trip."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from s3_retriever import S3Index
from s3_retriever.config import S3Settings
from s3_retriever.distributed.manifest import MANIFEST_FILE, read_manifest
from s3_retriever.distributed.shards import (
    LocalShard,
    ShardedIndex,
    ShardServer,
    save_sharded,
    split_index,
)
from s3_retriever.errors import (
    EmptyIndexError,
    IndexFormatError,
    InvalidInputError,
    OutputExistsError,
)
from s3_retriever.text.bm25 import BM25Index, okapi_idf
from tests.helpers import TEXTS, tiny_lm, tiny_saes

MORE = [
    "The Nile is the longest river in Africa. It flows north into the Mediterranean Sea. "
    "Ancient Egypt grew along its banks.\n\nThe Aswan dam controls its floods today.",
    "Ludwig van Beethoven composed nine symphonies. He lost his hearing but kept writing "
    "music. His Ninth Symphony ends with a choir.",
    "Albert Einstein developed the theory of relativity. He won the Nobel Prize in physics "
    "in 1921. He was born in Ulm.",
    "The Danube flows through Vienna and Budapest. It is the second longest river in Europe.",
    "Paris is the capital of France. The Seine river crosses the city. Paris hosts the "
    "Louvre museum.\n\nMany painters lived in Paris.",
    "Warsaw is the capital of Poland. The Vistula river flows through Warsaw. Marie Curie "
    "was born there.",
    "Wolfgang Amadeus Mozart was born in Salzburg. He composed operas and symphonies. "
    "He died in Vienna in 1791.",
]
IDS = ["curie", "amazon", "bach", "nile", "beethoven", "einstein", "danube", "paris",
       "warsaw", "mozart"]
METAS = [{"topic": "science", "year": 1867}, {"topic": "nature"}, {"topic": "music"},
         {"topic": "nature", "year": 1902}, {"topic": "music", "year": 1770},
         {"topic": "science", "year": 1879}, {"topic": "nature"}, {"topic": "city"},
         {"topic": "city", "year": 1596}, {"topic": "music", "year": 1756}]
QUERIES = ["Where was Marie Curie born?", "Which river flows through Brazil?",
           "Who composed symphonies in Vienna?", "Nobel Prize physics",
           "capital city river", "longest river in Africa and Europe"]


@pytest.fixture(scope="module")
def tok(lm):
    return lm.tokenizer


@pytest.fixture(scope="module")
def single(tok):
    idx = S3Index(tiny_lm(tok), tiny_saes(), S3Settings(chunk_tokens=16, context_tokens=4))
    idx.add_texts(TEXTS + MORE[:3], metadatas=METAS[:6], ids=IDS[:6], show_progress=False)
    idx.add_texts(MORE[3:], metadatas=METAS[6:], ids=IDS[6:], show_progress=False)  # 2 segments
    return idx


def sharded_of(index: S3Index, n: int | None = None, sizes=None, copy: bool = True):
    shards = split_index(index, n, sizes=sizes)
    return ShardedIndex(index.lm, [LocalShard(ShardServer(s), copy=copy) for s in shards])


@pytest.fixture(scope="module", params=[3, (0, 4, 1, 5, 0)], ids=["3", "uneven"])
def sharded(single, request):
    p = request.param
    return sharded_of(single, *((p,) if isinstance(p, int) else (None, p)))


def span_key(s):
    return (s.doc_id, s.start_char, s.end_char, s.text, s.metadata, s.start_token,
            s.end_token, s.s3_score is None, s.bm25_score is None)


def assert_same(got, want):
    """Same spans in the same order; S3 and BM25 scores within rtol 1e-6 (the softmax
    normaliser is summed per shard: float32 rounding, ~1e-8 here). A fused score is a
    min-max normalised mix in [0, 1]: dividing by the candidates' S3 range (tiny on a random
    model) scales that rounding up, so it is compared to 1e-5 absolute."""
    assert [span_key(s) for s in got] == [span_key(s) for s in want]
    for g, w in zip(got, want):
        for a, b in ((g.s3_score, w.s3_score), (g.bm25_score, w.bm25_score)):
            if b is not None:
                assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12), (g, w)
        assert math.isclose(g.score, w.score, rel_tol=1e-6, abs_tol=1e-5), (g, w)


def compare(single, sharded, query, **kw):
    want = single.search(query, **kw)
    got = sharded.search(query, **kw)
    assert_same(got, want)
    return want


@pytest.mark.parametrize("mode, fusion", [("hybrid", "linear"), ("hybrid", "rrf"),
                                          ("s3", "linear"), ("bm25", "linear")])
def test_same_spans_as_one_index(single, sharded, mode, fusion):
    found = 0
    for query, (k, budget) in itertools.product(
            QUERIES[1:5], [(1, None), (10, None), (None, 60), (4, 120), (None, 400)]):
        found += len(compare(single, sharded, query, k=k, budget_tokens=budget, mode=mode,
                             fusion=fusion))
    assert found


@pytest.mark.parametrize("filters, doc_ids", [
    ({"topic": "music"}, None), ({"topic": ["science", "city"]}, None),
    ({"year": {"$gt": 1800}}, None), ({"$or": [{"topic": "nature"}, {"year": 1756}]}, None),
    ({"topic": "none"}, None), (None, ["mozart", "curie", "ghost", "nile"]),
    (None, ["paris"]), ({"topic": "nature"}, ["nile", "danube", "bach"]), (None, []),
])
@pytest.mark.parametrize("mode", ["hybrid", "s3", "bm25"])
def test_filters_and_doc_ids(single, sharded, filters, doc_ids, mode):
    for query, (k, budget) in [(QUERIES[0], (2, None)), (QUERIES[2], (None, 80))]:
        compare(single, sharded, query, k=k, budget_tokens=budget, mode=mode,
                filters=filters, doc_ids=doc_ids)


def test_fusion_overrides_and_settings(single, sharded):
    for weight, rrf_k in [(0.0, 1), (0.3, 10), (1.0, 60)]:
        for fusion in ("linear", "rrf"):
            compare(single, sharded, "Nobel Prize physics in Paris", k=5, fusion=fusion,
                    fusion_weight=weight, rrf_k=rrf_k)
    for name, value in [("span_tokens", 0), ("cross_paragraphs", True), ("smooth_window", 1),
                        ("span_tokens", 24)]:
        old_single, old_sharded = getattr(single.settings, name), getattr(sharded.settings,
                                                                          name)
        setattr(single.settings, name, value)
        setattr(sharded.settings, name, value)
        try:
            for query in QUERIES[:3]:
                compare(single, sharded, query, k=4, mode="hybrid")
                compare(single, sharded, query, budget_tokens=100, k=None, mode="s3")
        finally:
            setattr(single.settings, name, old_single)
            setattr(sharded.settings, name, old_sharded)


def test_coactivation_scorer(single, sharded):
    single.settings.scorer = sharded.settings.scorer = "coactivation"
    try:
        for query in QUERIES:
            compare(single, sharded, query, k=3, mode="s3")
            compare(single, sharded, query, k=3, mode="hybrid", filters={"topic": "music"})
    finally:
        single.settings.scorer = sharded.settings.scorer = "attention"


def test_deleted_documents_are_left_out(tok):
    idx = S3Index(tiny_lm(tok), tiny_saes(), S3Settings(chunk_tokens=16, context_tokens=4))
    idx.add_texts(TEXTS + MORE, ids=IDS, metadatas=METAS, show_progress=False)
    idx.delete(["bach", "danube"])
    shards = split_index(idx, 3)
    assert sum(len(s) for s in shards) == 8
    sharded = ShardedIndex(idx.lm, [LocalShard(ShardServer(s)) for s in shards])
    for query in QUERIES:
        for mode in ("hybrid", "s3", "bm25"):
            compare(idx, sharded, query, k=4, mode=mode)


def test_global_bm25_statistics_match_one_index(single, sharded):
    bm = single.units.bm25
    terms, df, n, _ = bm.term_stats()
    idf = okapi_idf(dict(zip(terms, df.tolist())), n, epsilon=bm.epsilon)
    assert all(idf[t] == bm.idf_of(t) for t in terms)
    assert sharded._idf == idf
    # a shard scoring with the global statistics gives one index's scores
    whole = BM25Index(["red apple pie", "green pear", "red red car", "blue sky", "red sky"])
    part = BM25Index(["red red car", "blue sky", "red sky"])
    terms, df, n, length = whole.term_stats()
    g = okapi_idf(dict(zip(terms, df.tolist())), n)
    assert np.array_equal(part.scores("red sky car", idf=g, avgdl=length / n),
                          whole.scores("red sky car")[2:])
    assert np.array_equal(part.scores("red sky"), part.scores("red sky", idf=None))


def test_errors_as_on_one_index(single, sharded):
    for kw, match in [({"k": 0}, "k must"), ({"k": None}, "give k"), ({"mode": "dense"}, "mode"),
                      ({"budget_tokens": 0}, "budget"), ({"fusion": "learned"}, "fusion"),
                      ({"filters": {"topic": {"$regex": "x"}}}, "operator"),
                      ({"doc_ids": "curie"}, "single"), ({"budget_tokens": 1}, "budget")]:
        for index in (single, sharded):
            with pytest.raises(InvalidInputError, match=match):
                index.search("Curie", **kw)
    for bad in ("", "   ", 5):
        with pytest.raises(InvalidInputError):
            sharded.search(bad)
    assert sharded.search("Curie", k=3, filters={"topic": "none"}) == []
    # a query too long for the model: raised only when some document is a candidate
    long = "river " * 3000
    for index in (single, sharded):
        with pytest.raises(InvalidInputError, match="longer than"):
            index.search(long, k=2)
        assert index.search(long, k=2, filters={"topic": "none"}) == []
        assert index.search(long, k=2, mode="bm25")


def test_answer_as_on_one_index(single, sharded):
    question = "Who composed symphonies in Vienna?"
    want = single.answer(question, budget_tokens=80, max_new_tokens=3)
    got = sharded.answer(question, budget_tokens=80, max_new_tokens=3)
    assert [span_key(s) for s in got.spans] == [span_key(s) for s in want.spans]
    assert got.text == want.text and got.prompt_tokens == want.prompt_tokens
    with pytest.raises(InvalidInputError):
        sharded.answer(question, max_new_tokens=0)


def test_read_only(sharded):
    for call in (lambda: sharded.add_texts(["x"]), lambda: sharded.delete(["curie"]),
                 lambda: sharded.save("/tmp/nowhere"), lambda: sharded.add_documents([])):
        with pytest.raises(InvalidInputError, match="read-only.*S3Index.load"):
            call()


def test_views(single, sharded):
    assert len(sharded) == len(single) == 10
    st = sharded.stats()
    assert st["documents"] == 10 and st["tokens"] == single.stats()["tokens"]
    assert sum(st["documents_per_shard"]) == 10 and st["shards"] == len(sharded.shards)
    assert sharded.shards[0] == "shard-00000" and "ShardedIndex(" in repr(sharded)
    assert sharded.lm is single.lm and sharded.settings.mode == single.settings.mode


def test_empty_shards_and_empty_index(single, tok):
    empty = S3Index(single.lm, single.saes, single.settings)
    sharded = ShardedIndex(single.lm, [LocalShard(ShardServer(empty)),
                                       LocalShard(ShardServer(split_index(single, 1)[0]))])
    compare(single, sharded, "Where was Marie Curie born?", k=5)
    nothing = ShardedIndex(single.lm, [LocalShard(ShardServer(empty))] * 2)
    with pytest.raises(EmptyIndexError):
        nothing.search("Curie")
    with pytest.raises(InvalidInputError, match="at least one shard"):
        ShardedIndex(single.lm, [])
    other = S3Index(tiny_lm(tok, seed=1), tiny_saes(), single.settings)
    with pytest.raises(IndexFormatError, match="model"):
        ShardedIndex(single.lm, [LocalShard(ShardServer(other))])


def test_shard_errors_reach_the_driver(single):
    shard = LocalShard(ShardServer(single))
    with pytest.raises(InvalidInputError, match="unknown shard method"):
        shard.submit("delete", ["curie"])
    future = shard.submit("grow", [99], [np.zeros(1)], span_tokens=10)
    with pytest.raises(IndexError):
        future.result()


def test_save_and_load_round_trip(single, tmp_path):
    folder = save_sharded(split_index(single, 3), tmp_path / "sharded")
    manifest = read_manifest(folder)
    assert manifest["shards"] == ["shard-00000", "shard-00001", "shard-00002"]
    assert manifest["documents"] == 10 and manifest["model"]["fingerprint"] == \
        single.lm.fingerprint
    assert ShardedIndex.exists(folder)
    loaded = ShardedIndex.load(folder, model=single.lm)
    for query in QUERIES[:3]:
        for mode in ("hybrid", "s3", "bm25"):
            compare(single, loaded, query, k=3, mode=mode)
    with pytest.raises(OutputExistsError):
        save_sharded(split_index(single, 2), folder)
    save_sharded(split_index(single, 2), folder, overwrite=True)
    assert ShardedIndex.load(folder, model=single.lm).shards == ["shard-00000", "shard-00001"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        save_sharded(split_index(single, 2), tmp_path / "other")


def test_manifest_naming_a_missing_shard(single, tmp_path):
    folder = save_sharded(split_index(single, 2), tmp_path / "sharded")
    body = json.loads((folder / MANIFEST_FILE).read_text())
    body["shards"].append("shard-00007")
    (folder / MANIFEST_FILE).write_text(json.dumps(body))
    with pytest.raises(IndexFormatError, match="missing"):
        ShardedIndex.load(folder, model=single.lm)


def test_manifest_counts_are_checked(single, tmp_path):
    folder = save_sharded(split_index(single, 2), tmp_path / "sharded")
    body = json.loads((folder / MANIFEST_FILE).read_text())
    body["documents"] = 11
    (folder / MANIFEST_FILE).write_text(json.dumps(body))
    with pytest.raises(IndexFormatError, match="documents"):
        ShardedIndex.load(folder, model=single.lm)


def test_split_index_sizes(single):
    assert [len(s) for s in split_index(single, 4)] == [3, 3, 2, 2]
    assert [len(s) for s in split_index(single, sizes=[10, 0])] == [10, 0]
    with pytest.raises(InvalidInputError, match="add up"):
        split_index(single, sizes=[3, 3])
    with pytest.raises(InvalidInputError):
        split_index(single, 0)


PARAGRAPHS = [
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris. It was designed "
    "by the engineer Gustave Eiffel and is made of wrought iron.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. It takes "
    "place in the chloroplasts of plant cells.",
    "The Great Wall of China stretches for thousands of kilometres. Most of the wall that "
    "stands today was built during the Ming dynasty.",
    "Mount Everest is the highest mountain above sea level. It lies in the Himalayas on the "
    "border between Nepal and China.",
    "The Python programming language was created by Guido van Rossum. Its first version "
    "was released in 1991.",
    "Honey bees live in colonies with a single queen. Worker bees gather nectar and pollen "
    "from flowers.",
    "The Titanic sank in 1912 after striking an iceberg in the North Atlantic Ocean on its "
    "first voyage.",
    "Jupiter is the largest planet in the Solar System. It has a Great Red Spot, a storm "
    "larger than the Earth.",
]
QUESTIONS = ["When was the Eiffel Tower completed?", "Who designed the Eiffel Tower?",
             "Where does photosynthesis take place?", "Which dynasty built the Great Wall?",
             "What is the highest mountain?", "Who created Python?",
             "What do worker bees gather?", "When did the Titanic sink?",
             "What is the largest planet?", "Where does Mount Everest lie?"]


def test_real_model_sharded_equals_single(lm, saes):
    index = S3Index.from_model(lm, saes=saes)
    index.add_texts(PARAGRAPHS, ids=[f"p{i}" for i in range(len(PARAGRAPHS))],
                    show_progress=False)
    sharded = ShardedIndex(lm, [LocalShard(ShardServer(s), copy=True)
                                for s in split_index(index, 3)])
    for i, question in enumerate(QUESTIONS):
        compare(index, sharded, question, k=3, mode=("hybrid", "s3")[i % 2])
        compare(index, sharded, question, k=None, budget_tokens=128)


def test_rerank_over_shards(tok):
    """The sharded index re-reads the same hybrid pool with the driver's model: with ``k``
    the same sentences as one index; with a budget, spans of the pool within it."""
    settings = S3Settings(chunk_tokens=16, context_tokens=4, rerank_heads=[[1, 0], [2, 3]],
                          rerank_pool_tokens=80)
    one = S3Index(tiny_lm(tok), tiny_saes(), settings)
    one.add_texts(TEXTS + MORE, metadatas=METAS, ids=IDS, show_progress=False)
    many = sharded_of(one, 3)
    q = "Where was Marie Curie born?"
    want = one.search(q, k=3, mode="rerank")
    got = many.search(q, k=3, mode="rerank")
    assert [(s.doc_id, s.start_char, s.end_char, s.text) for s in got] == \
        [(s.doc_id, s.start_char, s.end_char, s.text) for s in want]
    pool = many.search(q, k=None, budget_tokens=80, mode="hybrid")
    spans = many.search(q, k=None, budget_tokens=40, mode="rerank")
    assert spans
    for s in spans:
        assert any(p.doc_id == s.doc_id and p.start_char <= s.start_char
                   and s.end_char <= p.end_char for p in pool)
    assert sum(len(tok(s.text, add_special_tokens=False)["input_ids"]) for s in spans) \
        <= 40 + len(spans)
