"""Scale-out on Ray (s3_retriever.distributed): the distributed scan, its fault tolerance,
the merged and the sharded index (served by Ray actors) against one in-process index, and
the CLI's ``--ray``. One local Ray instance (2 CPUs) serves the whole module."""

from __future__ import annotations

import gzip
import json
import math
import os
from pathlib import Path

import pytest
import ray

from s3_retriever import S3Index
from s3_retriever.cli import main
from s3_retriever.corpus import SQUAD_FILE, data_dir
from s3_retriever.distributed import index_corpus, merge_shards, read_manifest
from s3_retriever.distributed.scan import KILL_MARKER_ENV, document_id
from s3_retriever.distributed.serve import ShardUnavailableError, serve_sharded
from s3_retriever.distributed.shards import ShardedIndex
from s3_retriever.errors import InvalidInputError, OutputExistsError

# Ray's own DataContext copies trip its deprecation warnings: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")

ARTICLES = ["Normans", "Computational_complexity_theory", "Sky_(United_Kingdom)",
            "Steam_engine", "Amazon_rainforest"]


def _squad() -> tuple[list[dict], list[str]]:
    """Two paragraphs of each of five SQuAD 2.0 dev articles (CC BY-SA 4.0, see
    ../shared/data/README.md) as documents, and two answerable questions per paragraph."""
    with gzip.open(data_dir() / SQUAD_FILE, "rt", encoding="utf-8") as f:
        articles = {a["title"]: a for a in json.load(f)["data"]}
    docs, questions = [], []
    for title in ARTICLES:
        for j, p in enumerate(articles[title]["paragraphs"][:2]):
            docs.append({"id": f"{title}-{j}", "text": p["context"],
                         "metadata": {"title": title, "paragraph": j}})
            questions += [q["question"] for q in p["qas"] if not q["is_impossible"]][:2]
    return docs, questions


DOCS, QUESTIONS = _squad()


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """One local Ray instance for the module; workers inherit the kill-marker variable."""
    marker = tmp_path_factory.mktemp("kill") / "marker"
    before = os.environ.get(KILL_MARKER_ENV)
    os.environ[KILL_MARKER_ENV] = str(marker)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield marker
    ray.shutdown()
    if before is None:
        os.environ.pop(KILL_MARKER_ENV, None)
    else:
        os.environ[KILL_MARKER_ENV] = before


@pytest.fixture(scope="module")
def single(lm):
    """The reference: one in-process index over the same documents, in the same order."""
    index = S3Index.from_model(lm)
    index.add_documents(DOCS, show_progress=False)
    return index


@pytest.fixture(scope="module")
def expected(single):
    """The reference's top 5 spans of every question."""
    return {q: single.search(q, k=5) for q in QUESTIONS}


@pytest.fixture(scope="module")
def sharded(ray_local, tmp_path_factory):
    """The corpus scanned by 2 Ray workers, 4 documents per batch: 3 shards."""
    out = tmp_path_factory.mktemp("ray") / "sharded"
    assert index_corpus(DOCS, out, workers=2, batch_size=4, show_progress=False) == out
    return out


def assert_same_spans(expected, got, where: str) -> None:
    """Every span equal (doc id, offsets, text); scores within 1e-6 relative."""
    assert [(s.doc_id, s.start_char, s.end_char, s.text) for s in got] == \
        [(s.doc_id, s.start_char, s.end_char, s.text) for s in expected], where
    for e, g in zip(expected, got):
        for name in ("score", "s3_score", "bm25_score"):
            a, b = getattr(e, name), getattr(g, name)
            assert (a is None) == (b is None), f"{where}: {name}"
            if a is not None:
                assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12), f"{where}: {name}"


def test_ray_scan_shards_every_document_once(sharded):
    manifest = read_manifest(sharded)
    assert manifest["documents"] == len(DOCS)
    assert manifest["shards"] == ["shard-00000", "shard-00001", "shard-00002"]
    assert sorted(p.name for p in sharded.iterdir()) == sorted([*manifest["shards"],
                                                                "shards.json"])
    ids = [d.doc_id for name in manifest["shards"]
           for d in S3Index.load(sharded / name).index.docs]
    assert ids == [d["id"] for d in DOCS]  # input order, each exactly once


def test_ray_merged_index_equals_single_process(sharded, single, expected, lm, tmp_path):
    merged = S3Index.load(merge_shards(sharded, tmp_path / "merged", show_progress=False),
                          model=lm)
    assert [d.doc_id for d in merged.index.docs] == [d["id"] for d in DOCS]
    assert merged.get_document(DOCS[3]["id"]).metadata == DOCS[3]["metadata"]
    assert merged.stats()["tokens"] == single.stats()["tokens"]
    for q in QUESTIONS:
        assert_same_spans(expected[q], merged.search(q, k=5), q)
    assert len(QUESTIONS) == 20


def test_ray_sharded_index_equals_single_process(sharded, single, expected, lm):
    """Opened in process (ShardedIndex.load): the same spans as one index."""
    local = ShardedIndex.load(sharded, model=lm)
    for q in QUESTIONS:
        assert_same_spans(expected[q], local.search(q, k=5), q)
    assert_same_spans(single.search(QUESTIONS[0], budget_tokens=300, mode="s3"),
                      local.search(QUESTIONS[0], budget_tokens=300, mode="s3"), "budget")


def test_ray_served_shards_equal_single_process_and_survive_a_kill(sharded, expected, lm):
    """Served by one Ray actor per shard: the same spans as one index. A shard's actor
    killed before a search: its handle starts a new actor and the search returns exactly
    what it returned before; with no retries left, a clear error naming the shard, never
    the other shards' spans alone."""
    served = serve_sharded(sharded, model=lm, num_cpus_per_actor=0.5)
    try:
        assert len(served) == len(DOCS) and served.stats()["shards"] == 3
        for q in QUESTIONS[::4]:
            assert_same_spans(expected[q], served.search(q, k=5), q)
        # the serving path, not the rerank's quality: the hybrid's spans, in document order
        answer = served.answer(QUESTIONS[0], budget_tokens=200, max_new_tokens=4,
                               mode="hybrid")
        assert answer.spans and answer.spans[0].doc_id == DOCS[0]["id"]
        reranked = served.search(QUESTIONS[0], k=None, budget_tokens=200, mode="rerank")
        local = ShardedIndex.load(sharded, model=lm)
        assert [s.id for s in reranked] == [
            s.id for s in local.search(QUESTIONS[0], k=None, budget_tokens=200,
                                       mode="rerank")]

        q = QUESTIONS[5]
        handle = served._handles[1]
        first = handle.actor
        ray.kill(first)
        assert_same_spans(expected[q], served.search(q, k=5), "after a retry")
        assert handle.actor is not first
        handle.retries = 0
        ray.kill(handle.actor)
        with pytest.raises(ShardUnavailableError, match=handle.name):
            served.search(q, k=5)
        handle.retries = 1
        assert_same_spans(expected[q], served.search(q, k=5), "after the error")
    finally:
        for h in served._handles:
            ray.kill(h.actor)


def test_ray_scan_input_checks(ray_local, tmp_path):
    with pytest.raises(InvalidInputError, match="repeat"):
        index_corpus([DOCS[0], DOCS[0]], tmp_path / "a", show_progress=False)
    with pytest.raises(InvalidInputError, match="empty"):
        index_corpus([{"text": "  "}], tmp_path / "b", show_progress=False)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="other files"):
        index_corpus(DOCS[:1], tmp_path / "c", show_progress=False)
    assert (tmp_path / "c" / "notes.txt").read_text() == "mine"


def test_ray_worker_killed_mid_scan_is_retried(ray_local, tmp_path):
    """A worker dies (os._exit) on its first batch: Ray restarts it, the batch is scanned
    again, and the index has every document exactly once, as without the fault. The input
    is a ray.data.Dataset (ids, metadata and text columns; one row without an id)."""
    marker = ray_local
    marker.write_text("armed")
    rows = [dict(d) for d in DOCS]
    del rows[-1]["id"]
    out = index_corpus(ray.data.from_items(rows), tmp_path / "killed", workers=2,
                       batch_size=4, show_progress=False)
    assert not marker.exists() and Path(f"{marker}.fired").is_file()  # it did die
    docs = [d for name in read_manifest(out)["shards"]
            for d in S3Index.load(out / name).index.docs]
    assert [d.doc_id for d in docs] == [d["id"] for d in DOCS[:-1]] + \
        [document_id(DOCS[-1]["text"])]
    assert [d.metadata for d in docs] == [d["metadata"] for d in DOCS]
    assert sorted(p.name for p in out.iterdir()) == sorted([*read_manifest(out)["shards"],
                                                            "shards.json"])


def test_ray_cli_index_then_search(ray_local, tmp_path, capsys):
    files = []
    for d in DOCS[:4]:
        path = tmp_path / f"{d['id']}.txt"
        path.write_text(d["text"], encoding="utf-8")
        files.append(str(path))
    out = tmp_path / "cli"
    assert main(["index", "--ray", "--workers", "2", "--batch-size", "2", *files,
                 "--out", str(out), "--quiet"]) == 0
    assert "indexed 4 document(s)" in capsys.readouterr().out
    assert main(["search", str(out), QUESTIONS[0], "--k", "3", "--json"]) == 0
    spans = json.loads(capsys.readouterr().out)
    assert spans and spans[0]["doc_id"] == f"{DOCS[0]['id']}.txt"
    for s in spans:
        text = (tmp_path / s["doc_id"]).read_text(encoding="utf-8")
        assert text[s["start_char"]:s["end_char"]] == s["text"]
    assert main(["search", str(out), QUESTIONS[0], "--k", "3", "--json", "--ray"]) == 0
    assert json.loads(capsys.readouterr().out) == spans
    assert main(["index", "--ray", *files, "--out", str(out), "--quiet"]) == 2
    assert "already holds a sharded index" in capsys.readouterr().err
    assert main(["index", "--workers", "2", *files, "--out", str(tmp_path / "x")]) == 2
    assert "only with --ray" in capsys.readouterr().err
    merged = tmp_path / "merged"
    assert main(["index", "--ray", "--merge", "--workers", "1", *files[:2], "--out",
                 str(merged), "--quiet"]) == 0
    assert S3Index.exists(merged) and not (tmp_path / "merged.shards").exists()
    capsys.readouterr()
    assert main(["search", str(merged), QUESTIONS[0], "--k", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["doc_id"] == f"{DOCS[0]['id']}.txt"


def test_ray_scan_error_names_the_document(ray_local, tmp_path):
    (tmp_path / "blank.txt").write_text("   \n")
    with pytest.raises(InvalidInputError, match="blank.txt"):
        index_corpus([str(tmp_path / "blank.txt")], tmp_path / "out", show_progress=False)
    assert not [p for p in (tmp_path / "out").iterdir()]  # no shard left behind


def test_ray_driver_refuses_an_incomplete_scan(tmp_path):
    """The driver's check (no Ray needed): a missing, repeated or unknown document, or two
    models, is a ScanError; shards come back in batch order whatever order Ray returns."""
    from s3_retriever.distributed.scan import ScanError, _check_out, _collect

    def row(shard, ids, fp="f"):
        return {"shard": shard, "ids": json.dumps(ids), "tokens": 10, "model_id": "m",
                "fingerprint": fp, "error": ""}

    ids = ["a", "b", "c"]
    names, tokens, model = _collect([row("shard-00001", ["c"]), row("shard-00000", ["a", "b"])],
                                    ids)
    assert names == ["shard-00000", "shard-00001"] and tokens == 20 and model["id"] == "m"
    for rows, what in (([row("shard-00000", ["a", "b"])], "1 missing"),
                       ([row("shard-00000", ["a", "b"]), row("shard-00001", ["b", "c"])],
                        "1 repeated"),
                       ([row("shard-00000", ["a", "b", "c", "x"])], "1 unknown"),
                       ([row("shard-00000", ["a", "b"]), row("shard-00001", ["c"], fp="g")],
                        "different models")):
        with pytest.raises(ScanError, match=what):
            _collect(rows, ids)
    bad = {**row("shard-00000", ids), "error": "InvalidInputError: document 'a' is empty"}
    with pytest.raises(InvalidInputError, match="document 'a' is empty"):
        _collect([bad], ids)
    (tmp_path / "shard-00003").mkdir()  # a leftover of an interrupted run: reused
    assert _check_out(tmp_path, overwrite=False) == [tmp_path / "shard-00003"]
