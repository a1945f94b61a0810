"""Benchmark builders on tiny HotpotQA / SQuAD fixtures (plus one real-data smoke test)."""

from __future__ import annotations

import gzip
import json

import pytest

from s3_retriever import corpus
from s3_retriever.evaluation.data import (
    NEEDLE_VARIANTS,
    Benchmark,
    hotpotqa_benchmark,
    load_squad,
    needle_benchmark,
    squad_benchmark,
)
from s3_retriever.text.bm25 import tokenize


def count_words(s: str) -> int:
    return len(s.split())


def _para(title: str, n: int, salt: str = "") -> list:
    """A paragraph with HotpotQA's layout: sentences after the first start with a space."""
    sents = [f"{title} fact number {j} {salt}about topic {title.lower()}." for j in range(n)]
    return [title, [sents[0]] + [" " + s for s in sents[1:]]]


def _hotpot_fixture() -> list[dict]:
    data = []
    for i in range(12):
        ctx = [_para(f"Gold{i}A", 3), _para(f"Gold{i}B", 2), _para(f"Dis{i}", 4)]
        if i == 0:
            # leading whitespace-only sentence, and an extra shared paragraph
            ctx[0] = ["Gold0A", ["  ", "Gold0A begins here.", " Second sentence.  ", " Third."]]
            ctx.append(_para("Shared", 2))
        if i == 1:
            ctx.append(_para("Shared", 2))  # same title, same text -> same document
            ctx.append(_para("Variant", 2))
        if i == 2:
            ctx.append(_para("Variant", 2, salt="other "))  # same title, other text
        if i >= 10:
            ctx = [_para(f"Reserved{i}", 3), _para(f"Reserved{i}B", 3)]
        data.append({
            "_id": f"q{i}", "question": f"Question {i} about Gold{i}A?", "answer": f"ans{i}",
            "type": "bridge", "level": "hard", "context": ctx,
            "supporting_facts": [[ctx[0][0], 1], [ctx[1][0], 0], [ctx[0][0], 99]],
        })
    return data


@pytest.fixture
def hotpot(tmp_path, monkeypatch):
    data = _hotpot_fixture()
    with gzip.open(tmp_path / corpus.HOTPOTQA_FILE, "wt", encoding="utf-8") as f:
        json.dump(data, f)
    monkeypatch.setattr(corpus, "RESERVED_SAE_QUESTIONS", range(10, 12))
    return tmp_path, data


def _check_evidence(bench: Benchmark, data: list[dict]) -> None:
    by_id = {q["_id"]: q for q in data}
    for ex in bench.examples:
        q = by_id[ex.qid]
        ctx = dict((t, s) for t, s in q["context"])
        expected = sorted(ctx[t][i].strip() for t, i in q["supporting_facts"]
                          if i < len(ctx[t]) and ctx[t][i].strip())
        got = sorted(bench.documents[ev.doc_id].text[ev.start_char:ev.end_char]
                     for ev in ex.evidence)
        assert got == expected
        assert ex.metadata["dropped_evidence"] == 1  # the index-99 fact


def test_hotpot_evidence_offsets_exact(hotpot):
    path, data = hotpot
    bench = hotpotqa_benchmark(range(3), 200, count_words, path=path)
    _check_evidence(bench, data)
    doc = bench.documents["hp:Gold0A"]
    assert doc.text.startswith("Gold0A begins here.") and doc.text == doc.text.strip()
    ev = bench.examples[0].evidence[0]
    assert doc.text[ev.start_char:ev.end_char] == "Gold0A begins here."  # sentence 1


def test_hotpot_haystack_budget_and_gold(hotpot):
    path, data = hotpot
    for budget in (40, 120, 250):
        bench = hotpotqa_benchmark([0, 3, 5], budget, count_words, path=path)
        for ex in bench.examples:
            assert ex.context_tokens <= budget
            assert count_words(bench.haystack_text(ex)) == ex.context_tokens
            assert len(set(ex.doc_ids)) == len(ex.doc_ids)
            assert set(ex.metadata["gold_doc_ids"]) <= set(ex.doc_ids)
            assert all(ev.doc_id in ex.doc_ids for ev in ex.evidence)
            assert ex.answers == [data[int(ex.qid[1:])]["answer"]]
    # a long haystack is padded with other questions' paragraphs
    ex = hotpotqa_benchmark([4], 250, count_words, path=path).examples[0]
    assert ex.context_tokens > 200
    assert any(not d.startswith(("hp:Gold4", "hp:Dis4")) for d in ex.doc_ids)


def test_hotpot_gold_kept_when_over_budget(hotpot):
    path, _ = hotpot
    ex = hotpotqa_benchmark([3], 5, count_words, path=path).examples[0]
    assert ex.doc_ids and set(ex.doc_ids) == set(ex.metadata["gold_doc_ids"])
    assert ex.metadata["over_budget"]


def test_hotpot_deterministic_with_seed(hotpot):
    path, _ = hotpot
    a = hotpotqa_benchmark(range(6), 150, count_words, path=path, seed=3)
    b = hotpotqa_benchmark(range(6), 150, count_words, path=path, seed=3)
    assert [e.doc_ids for e in a.examples] == [e.doc_ids for e in b.examples]
    others = [hotpotqa_benchmark(range(6), 150, count_words, path=path, seed=s)
              for s in (4, 5)]
    assert any([e.doc_ids for e in o.examples] != [e.doc_ids for e in a.examples]
               for o in others)


def test_hotpot_reserved_rejected_and_excluded(hotpot):
    path, _ = hotpot
    with pytest.raises(ValueError, match="reserved"):
        hotpotqa_benchmark([1, 10], 100, count_words, path=path)
    with pytest.raises(ValueError, match="reserved"):
        hotpotqa_benchmark(slice(None), 100, count_words, path=path)
    with pytest.raises(ValueError, match="range"):
        hotpotqa_benchmark([40], 100, count_words, path=path)
    bench = hotpotqa_benchmark(slice(0, 10), 1000, count_words, path=path)
    assert len(bench.examples) == 10
    assert not any("Reserved" in d for d in bench.documents)


def test_hotpot_shared_and_variant_titles(hotpot):
    path, _ = hotpot
    # "Shared" (same text twice) is one document; the two "Variant" texts are two
    full = hotpotqa_benchmark([0, 1, 2], 1000, count_words, path=path)
    assert {"hp:Variant", "hp:Variant#2", "hp:Shared"} <= set(full.documents)
    assert full.documents["hp:Variant"].text != full.documents["hp:Variant#2"].text
    assert "hp:Shared" in full.examples[0].doc_ids and "hp:Shared" in full.examples[1].doc_ids


def _squad_fixture() -> dict:
    arts = []
    for a in range(4):
        paras = []
        for p in range(3):
            ctx = (" " if p == 0 else "") + (
                f"Article {a} paragraph {p} says the capital of Land{a}{p} is City{a}{p}. "
                f"It was founded in {1900 + 10 * a + p} by settlers.")
            start = ctx.index(f"City{a}{p}")
            year = ctx.index(str(1900 + 10 * a + p))
            qas = [
                {"id": f"s{a}{p}a", "question": f"What is the capital of Land{a}{p}?",
                 "is_impossible": False,
                 "answers": [{"text": f"City{a}{p}", "answer_start": start},
                             {"text": f"City{a}{p}.", "answer_start": start},
                             {"text": f"City{a}{p}", "answer_start": start}]},
                {"id": f"s{a}{p}b", "question": f"When was Land{a}{p} founded?",
                 "is_impossible": False,
                 "answers": [{"text": str(1900 + 10 * a + p), "answer_start": year}]},
                {"id": f"s{a}{p}c", "question": "Unanswerable?", "is_impossible": True,
                 "answers": []},
            ]
            paras.append({"context": ctx, "qas": qas})
        arts.append({"title": f"Art{a}", "paragraphs": paras})
    return {"version": "v2.0", "data": arts}


@pytest.fixture
def squad(tmp_path):
    with gzip.open(tmp_path / corpus.SQUAD_FILE, "wt", encoding="utf-8") as f:
        json.dump(_squad_fixture(), f)
    return tmp_path


def test_load_squad(squad):
    arts = load_squad(squad)
    assert [a["title"] for a in arts] == ["Art0", "Art1", "Art2", "Art3"]


def test_squad_benchmark(squad):
    bench = squad_benchmark(6, 60, count_words, path=squad, seed=1)
    assert len(bench.examples) == 6
    for ex in bench.examples:
        assert ex.context_tokens <= 60
        assert ex.qid.endswith(("a", "b"))
        gold = ex.metadata["gold_doc_ids"][0]
        assert gold in ex.doc_ids
        title = bench.documents[gold].metadata["title"]
        others = [d for d in ex.doc_ids if d != gold]
        assert others and all(bench.documents[d].metadata["title"] != title for d in others)
        spans = [bench.documents[ev.doc_id].text[ev.start_char:ev.end_char]
                 for ev in ex.evidence]
        assert all(ev.group == 0 for ev in ex.evidence)
        if ex.qid.endswith("a"):
            assert ex.answers == [spans[0], spans[0] + "."]
            assert spans == [spans[0], spans[0] + "."]  # duplicates removed
            assert spans[0].startswith("City")
        else:
            assert spans == ex.answers
    again = squad_benchmark(6, 60, count_words, path=squad, seed=1)
    assert [e.doc_ids for e in again.examples] == [e.doc_ids for e in bench.examples]
    with pytest.raises(ValueError):
        squad_benchmark(1000, 60, count_words, path=squad)


def test_needle_depths(hotpot):
    path, _ = hotpot
    depths = (0.0, 0.5, 1.0)
    bench = needle_benchmark(6, 300, count_words, depths=depths, path=path, seed=2)
    assert len({e.question for e in bench.examples}) == 6
    for i, ex in enumerate(bench.examples):
        assert ex.context_tokens <= 300
        assert ex.metadata["depth"] == depths[i % 3]
        assert abs(ex.metadata["actual_depth"] - ex.metadata["depth"]) < 0.15
        (ev,) = ex.evidence
        needle = bench.documents[ev.doc_id]
        assert needle.text[ev.start_char:ev.end_char] == needle.text
        assert ex.answers[0] in needle.text
        assert ex.doc_ids.index(ev.doc_id) == ex.metadata["position"]
        assert not any("Reserved" in d for d in ex.doc_ids)
    assert bench.examples[0].doc_ids[0] == bench.examples[0].evidence[0].doc_id
    assert bench.examples[2].doc_ids[-1] == bench.examples[2].evidence[0].doc_id


def test_plain_needles_unchanged_by_the_variants(hotpot):
    path, _ = hotpot
    a = needle_benchmark(4, 300, count_words, path=path, seed=2)
    b = needle_benchmark(4, 300, count_words, path=path, seed=2, variant="plain")
    assert [(e.qid, e.doc_ids, e.question) for e in a.examples] == \
        [(e.qid, e.doc_ids, e.question) for e in b.examples]
    with pytest.raises(ValueError, match="unknown needle variant"):
        needle_benchmark(1, 300, count_words, path=path, variant="hard")


@pytest.mark.parametrize("variant", [v for v in NEEDLE_VARIANTS if v != "plain"])
def test_needle_variants(hotpot, variant):
    path, _ = hotpot
    bench = needle_benchmark(9, 400, count_words, path=path, seed=3, variant=variant)
    for ex in bench.examples:
        assert ex.dataset == f"needle-{variant}" and ex.context_tokens <= 400
        assert len(set(ex.doc_ids)) == len(ex.doc_ids)
        gold = [bench.documents[ev.doc_id].text for ev in ex.evidence]
        needles = [d for d in ex.doc_ids if d.startswith("needle:")]
        assert all(ev.doc_id in ex.doc_ids for ev in ex.evidence)
        for value in ex.answers:  # every value is in exactly one gold fact
            assert sum(value in g for g in gold) == 1
        q_words = set(tokenize(ex.question))
        if variant == "near":  # three near-duplicates, other values, the same question shape
            assert len(gold) == 1 and len(needles) == 4
            others = [bench.documents[d].text for d in needles if d != ex.evidence[0].doc_id]
            assert all(ex.answers[0] not in t for t in others)
            assert all(len(q_words & set(tokenize(t))) >= 2 for t in others)
        elif variant == "multi":
            assert len(gold) == 3 == len(ex.answers) and len(needles) == 3
        else:  # paraphrased: no content word shared with the fact
            assert len(gold) == 1 and not q_words & set(tokenize(gold[0]))


def test_real_hotpotqa_smoke():
    try:
        corpus.data_dir()
    except FileNotFoundError:
        pytest.skip("shared HotpotQA data not present")
    bench = hotpotqa_benchmark([0, 1], 1500, count_words)
    for ex in bench.examples:
        assert ex.context_tokens <= 1500 and ex.evidence
        for ev in ex.evidence:
            span = bench.documents[ev.doc_id].text[ev.start_char:ev.end_char]
            assert span and span == span.strip()


def test_every_paraphrase_shares_no_content_word():
    from s3_retriever.evaluation.data import _PARA_ADJECTIVES, _PARA_PLACES, _PARA_TEMPLATES

    for adj, alias_adj in _PARA_ADJECTIVES:
        for place, alias_place in _PARA_PLACES:
            for fact, question in _PARA_TEMPLATES:
                f = set(tokenize(fact.format(name=f"{adj} {place}", value="harp ember 1234")))
                q = set(tokenize(question.format(alias=f"{alias_adj} {alias_place}")))
                assert not f & q, (adj, place, fact)
