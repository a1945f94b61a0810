"""Tests for s3_retriever.retrieval.scoring: heads, logits on reconstructed keys (QueryPlan),
attention scores (with and without the query-mean term) and token scores of both scorers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from s3_retriever import S3Index, S3Settings
from s3_retriever.errors import SAEError
from s3_retriever.model.hooks import AttentionSpec
from s3_retriever.retrieval.scan import question_queries
from s3_retriever.retrieval.scoring import (
    HeadWeight,
    QueryPlan,
    attention_scores,
    resolve_heads,
    token_scores,
)
from s3_retriever.sae.coder import SAEConfig, TopKSAE
from tests.helpers import TEXTS, tiny_lm, tiny_saes


def _sae(hookpoint="layers.1", seed=0, key_scale=2.5) -> TopKSAE:
    """A random SAE whose decoder bias is not zero and whose key scale is not 1, so the
    reconstruction formula is exercised in full."""
    g = torch.Generator().manual_seed(seed)
    sae = TopKSAE(SAEConfig(d_in=16, num_latents=64, k=4, hookpoint=hookpoint,
                            layer=int(hookpoint.split(".")[1]), key_scale=key_scale),
                  generator=g)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(16, generator=g))
    return sae


def _codes(sae: TopKSAE, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Codes of ``n`` random keys as the index stores them (uint16 ids, float16 acts)."""
    acts, ids = sae.encode(torch.randn(n, 16, generator=torch.Generator().manual_seed(seed)),
                           kind="key")
    return ids.numpy().astype(np.uint16), acts.numpy().astype(np.float16)


def _by_hand(q: torch.Tensor, ids: np.ndarray, acts: np.ndarray, sae: TopKSAE) -> torch.Tensor:
    """``q . decode(codes) / sqrt(d)``, [n, T]."""
    k_hat = sae.decode(torch.from_numpy(acts.astype(np.float32)),
                       torch.from_numpy(ids.astype(np.int64)), kind="key")
    return (k_hat @ q.T) / math.sqrt(q.shape[-1])


def softmax_mass(logits: torch.Tensor) -> np.ndarray:
    """The reference: softmax over positions per query token, summed over query tokens."""
    return torch.softmax(logits.double(), dim=0).sum(dim=1).numpy()


# --------------------------------------------------------------------------- logits
def test_plan_logits_equal_q_dot_decoded_codes():
    sae = _sae()
    ids, acts = _codes(sae, 40)
    q = torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
    queries = {"layers.1": q[:, None, :].expand(6, 2, 16).clone()}
    queries["layers.1"][:, 1] += 1.0  # a second head on the same kv head
    heads = [HeadWeight("layers.1", 0, 0), HeadWeight("layers.1", 1, 0)]
    plan = QueryPlan(queries, {"layers.1": sae}, heads)
    got = plan.logits("layers.1.kv0", ids, acts)
    assert got.shape == (40, 12) and got.dtype == np.float32  # both heads in one pass
    np.testing.assert_allclose(got[:, plan.cols[0]], _by_hand(q, ids, acts, sae).numpy(),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[:, plan.cols[1]], _by_hand(q + 1.0, ids, acts, sae).numpy(),
                               rtol=1e-4, atol=1e-4)
    # blocks of positions give the same result
    np.testing.assert_array_equal(plan.logits("layers.1.kv0", ids, acts, block=7), got)
    # the decoder bias and the key scale both count
    plain = QueryPlan(queries, {"layers.1": _sae(key_scale=1.0)}, heads)
    assert not np.allclose(plain.logits("layers.1.kv0", ids, acts), got, atol=1e-3)


def test_attention_scores_in_blocks_equal_one_softmax():
    """Two passes over blocks of positions (running max and sum) give the softmax mass of
    one pass over all positions, however the blocks fall; large logits do not overflow."""
    sae = _sae()
    saes = {"layers.1": sae}
    codes = {"layers.1.kv0": _codes(sae, 53)}
    g = torch.Generator().manual_seed(4)
    queries = {"layers.1": torch.randn(7, 2, 16, generator=g) * 40}
    heads = [HeadWeight("layers.1", 0, 0, 1.0), HeadWeight("layers.1", 1, 0, 0.5)]
    whole = attention_scores(queries, codes, saes, heads, block=10**6)
    want = sum(hw.weight * softmax_mass(_by_hand(queries["layers.1"][:, hw.head],
                                                 *codes["layers.1.kv0"], sae))
               for hw in heads)
    np.testing.assert_allclose(whole, want, rtol=1e-4, atol=1e-7)
    for block in (1, 7, 53):
        np.testing.assert_allclose(attention_scores(queries, codes, saes, heads, block=block),
                                   whole, rtol=1e-5, atol=1e-9)
    assert np.isfinite(whole).all() and math.isclose(float(whole.sum()), 7 * 1.5, rel_tol=1e-4)


# --------------------------------------------------------------------------- attention_scores
def test_attention_scores_sum_weighted_heads():
    saes = {"layers.1": _sae("layers.1", 0), "layers.2": _sae("layers.2", 1)}
    codes = {"layers.1.kv0": _codes(saes["layers.1"], 30, 0),
             "layers.2.kv1": _codes(saes["layers.2"], 30, 1)}
    g = torch.Generator().manual_seed(2)
    queries = {hp: torch.randn(5, 4, 16, generator=g) for hp in saes}
    heads = [HeadWeight("layers.1", 1, 0, 0.5), HeadWeight("layers.2", 3, 1, 2.0)]
    want = sum(hw.weight * softmax_mass(_by_hand(queries[hw.hookpoint][:, hw.head],
                                                 *codes[hw.stream], saes[hw.hookpoint]))
               for hw in heads)
    got = attention_scores(queries, codes, saes, heads)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert math.isclose(float(got.sum()), 5 * (0.5 + 2.0), rel_tol=1e-4)
    rows = attention_scores(queries, codes, saes, heads, per_head=True)
    assert rows.shape == (2, 30)  # unweighted, one row per head
    np.testing.assert_allclose(rows.sum(axis=1), [5.0, 5.0], rtol=1e-4)
    np.testing.assert_allclose(0.5 * rows[0] + 2.0 * rows[1], got, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="no heads selected"):
        attention_scores(queries, codes, saes, [])


def test_attention_scores_with_query_mean_columns():
    sae = _sae()
    saes = {"layers.1": sae}
    ids, acts = _codes(sae, 25)
    codes = {"layers.1.kv0": (ids, acts)}
    g = torch.Generator().manual_seed(3)
    queries = {"layers.1": torch.randn(4, 4, 16, generator=g)}
    mean = torch.randn(16, generator=g)
    exact_keys = torch.randn(25, 16, generator=g)
    other = torch.randn(16, generator=g)
    bias = {"layers.1.kv0": torch.stack([exact_keys @ other, exact_keys @ mean], 1)
            .numpy().astype(np.float16)}
    hw = HeadWeight("layers.1", 0, 0, 1.0, tuple(mean.tolist()), column=1)
    q = queries["layers.1"][:, 0]
    # (q - m) . k_hat + m . k, with m . k read from the head's own column
    logits = _by_hand(q - mean, ids, acts, sae) + \
        (torch.from_numpy(bias["layers.1.kv0"][:, 1].astype(np.float32)) / 4.0)[:, None]
    got = attention_scores(queries, codes, saes, [hw], bias)
    np.testing.assert_allclose(got, softmax_mass(logits), rtol=1e-4, atol=1e-6)
    plain = attention_scores(queries, codes, saes, [hw], None)
    np.testing.assert_allclose(plain, softmax_mass(_by_hand(q, ids, acts, sae)), rtol=1e-4,
                               atol=1e-6)
    assert not np.allclose(got, plain, atol=1e-3)
    # a column holding m . k_hat (the reconstruction itself) gives back the plain scores
    k_hat = sae.decode(torch.from_numpy(acts.astype(np.float32)),
                       torch.from_numpy(ids.astype(np.int64)), kind="key")
    same = {"layers.1.kv0": torch.stack([k_hat @ other, k_hat @ mean], 1).numpy()}
    np.testing.assert_allclose(attention_scores(queries, codes, saes, [hw], same), plain,
                               rtol=1e-3, atol=1e-5)


# --------------------------------------------------------------------------- heads
SPEC = AttentionSpec(n_layers=3, n_heads=4, n_kv_heads=2, head_dim=16)


def test_resolve_heads_defaults_and_columns():
    saes = tiny_saes()
    every = resolve_heads(None, saes, SPEC)
    assert [(h.hookpoint, h.head, h.kv, h.weight) for h in every] == [
        (hp, h, h // 2, 1.0) for hp in ("layers.1", "layers.2") for h in range(4)]
    assert all(h.column is None and h.query_mean is None for h in every)
    m = [0.5] * 16
    heads = resolve_heads([["layers.2", 3, 0.5, m], ["layers.2", 2, 1.0, m],
                           ["layers.2", 0, 2.0, m], ["layers.1", 1]], saes, SPEC)
    # bias columns are numbered within each key stream
    assert [(h.stream, h.column) for h in heads] == [
        ("layers.2.kv1", 0), ("layers.2.kv1", 1), ("layers.2.kv0", 0), ("layers.1.kv0", None)]
    assert heads[0].name == "layers.2/3" and heads[3].weight == 1.0
    assert heads[0].to_entry() == ["layers.2", 3, 0.5, m]
    assert heads[3].to_entry() == ["layers.1", 1, 1.0]
    off = resolve_heads([["layers.2", 3, 0.5, m]], saes, SPEC, query_mean=False)
    assert off[0].query_mean is None and off[0].column is None


@pytest.mark.parametrize("entries, exc, message", [
    ([["layers.7", 0, 1.0]], ValueError, "names hookpoint 'layers.7', which has no SAE"),
    ([["layers.1", 0, 1.0, [0.0] * 3]], ValueError, "mean query must be 16 finite floats"),
    ([["layers.1", 0, 1.0, [math.nan] * 16]], ValueError, "mean query must be 16 finite"),
    ([["layers.1", 9, 1.0]], ValueError, "query head 9 out of range"),
    ([], ValueError, "no query heads selected"),
])
def test_resolve_heads_errors(entries, exc, message):
    with pytest.raises(exc, match=message):
        resolve_heads(entries, tiny_saes(), SPEC)


def test_resolve_heads_refuses_an_sae_that_does_not_fit():
    wide = {"layers.1": TopKSAE(SAEConfig(d_in=32, num_latents=64, k=4, hookpoint="layers.1"))}
    with pytest.raises(SAEError, match="head_dim is 16"):
        resolve_heads(None, wide, SPEC)
    wrong_layer = tiny_saes(layers=(1,))
    with pytest.raises(SAEError, match="trained on layer 1 but is used at layer 2"):
        resolve_heads(None, {"layers.2": wrong_layer["layers.1"]}, SPEC)


# --------------------------------------------------------------------------- token_scores
QUESTION = "Where was Marie Curie born?"


@pytest.fixture(scope="module")
def index(lm):
    """Two segments (TEXTS, then one more text), the middle document of the first deleted."""
    idx = S3Index(tiny_lm(lm.tokenizer), tiny_saes(), S3Settings(chunk_tokens=16,
                                                                 context_tokens=4))
    idx.add_texts(TEXTS, ids=["curie", "amazon", "bach"], show_progress=False)
    idx.add_texts(["The Nile flows north through Egypt. It floods every year."],
                  ids=["nile"], show_progress=False)
    idx.delete(["amazon"])
    return idx


def _doc_codes(idx, row, name):
    rec = idx.index.docs[row]
    c = idx.index.segments[rec.segment].codes[name]
    return c.ids[rec.token_start:rec.token_end], c.acts[rec.token_start:rec.token_end]


def test_token_scores_attention(index):
    rows = [3, 0]  # across both segments, not in table order
    queries = question_queries(index.lm, QUESTION, ["layers.1", "layers.2"])
    heads = index.heads
    got = token_scores(index.index, rows, queries, index.saes, heads)
    sizes = [index.index.docs[r].token_end - index.index.docs[r].token_start for r in rows]
    assert got.shape == (sum(sizes),) and got.dtype == np.float64
    # one softmax over the candidate rows' tokens together, in the order given
    codes = {}
    for name in {h.stream for h in heads}:
        parts = [_doc_codes(index, r, name) for r in rows]
        codes[name] = (np.concatenate([p[0] for p in parts]),
                       np.concatenate([p[1] for p in parts]))
    flat = attention_scores(queries, codes, index.saes, heads)
    np.testing.assert_allclose(got, flat, rtol=1e-6)
    n_q = queries["layers.1"].shape[0]
    assert math.isclose(float(got.sum()), n_q * len(heads), rel_tol=1e-4)
    per = token_scores(index.index, rows, queries, index.saes, heads, per_head=True)
    assert per.shape == (len(heads), sum(sizes))
    np.testing.assert_allclose(per.sum(), n_q * len(heads), rtol=1e-4)


@pytest.mark.parametrize("max_df_fraction", [1.0, 0.05])
def test_token_scores_coactivation(index, max_df_fraction):
    rows = [0, 2, 3]
    queries = question_queries(index.lm, QUESTION, ["layers.1", "layers.2"])
    heads = index.heads
    store = index.index
    got = token_scores(store, rows, queries, index.saes, heads, scorer="coactivation",
                       max_df_fraction=max_df_fraction)
    # by hand: w[f] = idf_f * sum over the stream's heads and query tokens of a_q(f),
    # pruned features 0; a token scores sum_j w[ids_j] * acts_j over its codes
    weights = {}
    for hw in heads:
        acts, ids = index.saes[hw.hookpoint].encode(queries[hw.hookpoint][:, hw.head],
                                                   kind="query")
        w = weights.setdefault(hw.stream, np.zeros(64))
        np.add.at(w, ids.numpy().ravel(), acts.numpy().ravel() * hw.weight)
    pruned_any = False
    for name, w in weights.items():
        w *= store.idf(name)
        pruned = store.pruned(name, max_df_fraction)
        pruned_any |= bool(pruned.any())
        w[pruned] = 0.0
    assert pruned_any == (max_df_fraction < 1.0)  # the pruned case really prunes
    want = np.concatenate([
        sum((w[ids.astype(np.int64)] * acts.astype(np.float64)).sum(axis=1)
            for name, w in weights.items() for ids, acts in [_doc_codes(index, r, name)])
        for r in rows])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    assert got.max() > 0
