"""In-context attention reranking on a tiny random model: the scores equal one full eager
forward pass, the forward stops at the last head's layer, and the spans keep the contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from s3_retriever import S3Index
from s3_retriever.config import S3Settings
from s3_retriever.errors import InvalidInputError, SAEError
from s3_retriever.model.hooks import decoder_layers
from s3_retriever.retrieval.rerank import (
    NULL_QUESTION,
    AttentionReranker,
    build_prompt,
    pool_prompt,
    rerank_spans,
)
from s3_retriever.retrieval.scan import tokenize_document
from s3_retriever.retrieval.spans import Span
from tests.helpers import TEXTS, tiny_lm, tiny_saes

HEADS = [(1, 0), (2, 3)]
QUESTION = "Where was Marie Curie born?"


@pytest.fixture(scope="module")
def tok(lm):
    return lm.tokenizer


@pytest.fixture(scope="module")
def small(tok):
    return tiny_lm(tok, layers=4)


def _reference(lm, prompt, question, heads):
    """Per head, the question tokens' mean attention on each unit, from one eager pass of
    sink + pool + question (no cache, no early stop)."""
    text = f"\n\nQuestion: {question}\nAnswer:"
    ids, off = tokenize_document(lm.tokenizer, text)
    q0 = len("\n\nQuestion: ")
    in_q = np.flatnonzero((off[:, 1] > q0) & (off[:, 0] < q0 + len(question)))
    sink = len(lm.sink_ids)
    n_ctx = sink + len(prompt.ids)
    cfg = lm.model.config
    before = cfg._attn_implementation
    cfg._attn_implementation = "eager"
    try:
        with torch.inference_mode():
            out = lm.model(input_ids=lm.input_tensor(np.concatenate([prompt.ids, ids])),
                           output_attentions=True)
    finally:
        cfg._attn_implementation = before
    rows = []
    for layer, h in heads:
        w = out.attentions[layer][0, h][n_ctx + in_q][:, sink:n_ctx].mean(0).float().numpy()
        s = np.zeros(prompt.n_units)
        keep = prompt.token_unit >= 0
        np.add.at(s, prompt.token_unit[keep], w[keep])
        rows.append(s)
    return np.array(rows)


def _pool():
    return [Span(f"d{i}", 0, len(t), t, 1.0) for i, t in enumerate(TEXTS)]


def test_scores_equal_one_full_eager_pass(small):
    pool, pieces, prompt = pool_prompt(small.tokenizer, _pool())
    raw = AttentionReranker(small, HEADS, calibrate=False)
    got = raw.head_scores(QUESTION, prompt)
    np.testing.assert_allclose(got, _reference(small, prompt, QUESTION, HEADS), atol=1e-5)
    cal = AttentionReranker(small, HEADS, calibrate=True).head_scores(QUESTION, prompt)
    null = _reference(small, prompt, NULL_QUESTION, HEADS)
    np.testing.assert_allclose(cal, got - null, atol=1e-5)
    assert got.shape == (len(HEADS), sum(len(p) for p in pieces)) and (got >= 0).all()


def test_forward_stops_after_the_last_head_layer(small):
    ran = []
    handles = [layer.register_forward_hook(lambda *_a, i=i: ran.append(i))
               for i, layer in enumerate(decoder_layers(small.model))]
    try:
        _, _, prompt = pool_prompt(small.tokenizer, _pool())
        AttentionReranker(small, [(1, 2)], calibrate=True).head_scores(QUESTION, prompt)
    finally:
        for h in handles:
            h.remove()
    assert set(ran) == {0, 1}  # layers 2 and 3 never run (context, question, null question)
    assert small.model.config._attn_implementation != "eager"  # restored


def test_prompt_maps_tokens_to_units(tok):
    segs = ["Alpha one. Beta two.", "Gamma three."]
    p = build_prompt(tok, segs, [[(0, 10), (11, 20)], [(0, 12)]])
    assert p.n_units == 3
    text = "\n\n".join(segs)
    _, off = tokenize_document(tok, text)
    for (a, b), u in zip(off, p.token_unit):
        if u >= 0:  # a unit's tokens lie inside it (a leading space excepted)
            start, end = [(0, 10), (11, 20), (22, 34)][u]
            assert start - 1 <= a and b <= end
        else:
            assert text[a:b].strip() == ""
    assert sorted(set(p.token_unit.tolist()) - {-1}) == [0, 1, 2]


@pytest.mark.parametrize("k, budget", [(None, 30), (2, None), (1, 60)])
def test_rerank_spans_contract(small, k, budget):
    texts = {f"d{i}": t for i, t in enumerate(TEXTS)}
    spans = rerank_spans(AttentionReranker(small, HEADS), QUESTION, _pool(), k=k,
                         budget_tokens=budget)
    assert spans
    for s in spans:
        assert s.text == texts[s.doc_id][s.start_char:s.end_char] and s.text.strip() == s.text
    assert [s.score for s in spans] == sorted((s.score for s in spans), reverse=True)
    if k is not None:
        assert len(spans) <= k
    if budget is not None:
        n = [len(tokenize_document(small.tokenizer, s.text)[0]) for s in spans]
        assert sum(n) <= budget + len(spans)  # a span's first token may differ by one
    # no two spans overlap
    seen = sorted((s.doc_id, s.start_char, s.end_char) for s in spans)
    for a, b in zip(seen, seen[1:]):
        assert a[0] != b[0] or a[2] <= b[1]


def test_neighbouring_picks_merge(small):
    spans = rerank_spans(AttentionReranker(small, HEADS), QUESTION, _pool()[:1], k=None,
                         budget_tokens=10_000)
    assert len(spans) == 1 and spans[0].text == TEXTS[0]


@pytest.fixture(scope="module")
def index(small):
    idx = S3Index(small, tiny_saes(), S3Settings(chunk_tokens=16, context_tokens=4,
                                                 rerank_heads=[list(h) for h in HEADS],
                                                 rerank_pool_tokens=60))
    idx.add_texts(TEXTS, ids=["curie", "amazon", "bach"], show_progress=False)
    return idx


def test_engine_rerank_mode(index):
    texts = dict(zip(["curie", "amazon", "bach"], TEXTS))
    pool = index.search(QUESTION, k=None, budget_tokens=60, mode="hybrid")
    spans = index.search(QUESTION, k=None, budget_tokens=30, mode="rerank")
    assert spans and sum(s.n_tokens for s in spans) <= 30
    for s in spans:  # inside the hybrid pool, exact text, token bounds filled in
        assert s.text == texts[s.doc_id][s.start_char:s.end_char]
        assert any(p.doc_id == s.doc_id and p.start_char <= s.start_char
                   and s.end_char <= p.end_char for p in pool)
        assert s.start_token is not None and s.n_tokens > 0
    assert len(index.search(QUESTION, k=1, mode="rerank")) == 1
    ans = index.answer(QUESTION, budget_tokens=30, mode="rerank", max_new_tokens=2)
    assert sorted(s.id for s in ans.spans) == sorted(s.id for s in spans)


def test_rerank_settings_are_checked(tok, small):
    with pytest.raises(InvalidInputError, match="rerank_heads"):
        S3Settings(rerank_heads=[[1]]).validate()
    with pytest.raises(InvalidInputError, match="rerank_pool_tokens"):
        S3Settings(rerank_pool_tokens=0).validate()
    with pytest.raises(InvalidInputError, match="rerank_calibrate"):
        S3Settings(rerank_calibrate="yes").validate()
    idx = S3Index(small, tiny_saes(), S3Settings(chunk_tokens=16))
    idx.add_texts(TEXTS[:1], show_progress=False)
    with pytest.raises(SAEError, match="no rerank heads are shipped for model 'tiny-0'"):
        idx.search(QUESTION, k=1, mode="rerank")
    assert idx.search(QUESTION, k=1, mode="hybrid")  # the index is unharmed


def test_second_hop_asks_with_the_bridge_sentence(small):
    _, _, prompt = pool_prompt(small.tokenizer, _pool())
    one = AttentionReranker(small, HEADS, calibrate=True)
    first = one.head_scores(QUESTION, prompt).sum(0)
    bridge = prompt.texts[int(np.argmax(first))]
    asked2, null = AttentionReranker(small, HEADS, calibrate=False).attention_on_units(
        prompt, [f"{QUESTION} {bridge}", NULL_QUESTION])
    second = (asked2 - null).sum(0)

    def mm(x):
        return (x - x.min()) / (x.max() - x.min())

    two = AttentionReranker(small, HEADS, calibrate=True, hops=2, hop_weight=0.5)
    np.testing.assert_allclose(two.scores(QUESTION, prompt), mm(first) + 0.5 * mm(second),
                               atol=1e-5)
    calls = []
    h = decoder_layers(small.model)[0].register_forward_hook(lambda *_a: calls.append(1))
    try:  # a new question: not a cached result
        two.scores("Who composed the Brandenburg Concertos?", prompt)
    finally:
        h.remove()
    assert len(calls) == 4  # the pool once, then the question, "N/A" and the follow-up
    with pytest.raises(ValueError, match="hops"):
        AttentionReranker(small, HEADS, hops=3)


def test_auto_pool_is_twice_the_budget():
    from s3_retriever.config import RERANK_POOL_MAX, rerank_pool_for

    assert rerank_pool_for("auto", 300) == 600
    assert rerank_pool_for("auto", 10**6) == RERANK_POOL_MAX
    assert rerank_pool_for(77, 300) == 77
    with pytest.raises(InvalidInputError, match="rerank_hops"):
        S3Settings(rerank_hops=3).validate()


def test_answer_reranks_by_default_where_the_model_has_rerank_heads(index, small):
    from s3_retriever.retrieval.rerank import answer_mode_for

    assert answer_mode_for(small, index.settings) == "rerank"  # rerank_heads are set
    ans = index.answer(QUESTION, budget_tokens=30, max_new_tokens=2)
    want = index.search(QUESTION, k=None, budget_tokens=30, mode="rerank")
    assert sorted(s.id for s in ans.spans) == sorted(s.id for s in want)
    bare = S3Settings()  # no rerank heads given, none shipped for the tiny model
    assert answer_mode_for(small, bare) == bare.mode == "hybrid"
    assert answer_mode_for(small, S3Settings(answer_mode="bm25")) == "bm25"
    with pytest.raises(InvalidInputError, match="answer_mode"):
        S3Settings(answer_mode="fast").validate()
