"""Tests for s3_retriever.retrieval.scan: the chunked scan to SAE codes on a tiny model,
padded_length and question_queries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from s3_retriever.errors import InvalidInputError, SAEError
from s3_retriever.model.hooks import QKHooks
from s3_retriever.retrieval.scan import (
    Scanner,
    padded_length,
    question_queries,
    tokenize_document,
)
from s3_retriever.sae.coder import SAEConfig, TopKSAE
from tests.helpers import TEXTS, tiny_lm, tiny_saes

STREAMS = ["layers.1.kv0", "layers.1.kv1", "layers.2.kv0", "layers.2.kv1"]
# identity bias vectors: the bias columns of a stream are then its exact keys (float16)
EYE = {nm: torch.eye(16) for nm in STREAMS}


@pytest.fixture(scope="module")
def tiny(lm):
    return tiny_lm(lm.tokenizer)


def _exact_keys(tiny, text: str) -> dict[int, torch.Tensor]:
    """The keys of layers 1 and 2 of one unchunked pass: layer -> [n, n_kv, d]."""
    ids, _ = tokenize_document(tiny.tokenizer, text)
    with QKHooks(tiny.model, [1, 2], keys=True) as hooks:
        keys = hooks.run(input_ids=tiny.input_tensor(ids)).keys
    n = len(tiny.sink_ids)
    return {layer: k[0, n:].float() for layer, k in keys.items()}


def test_padded_length():
    assert [padded_length(n, 577) for n in (100, 300, 570, 577)] == [112, 320, 576, 577]
    assert padded_length(1, 577) == 16 and padded_length(16, 577) == 16
    assert padded_length(256, 577) == 256 and padded_length(257, 577) == 288
    assert padded_length(10, 12) == 12  # never past the longest chunk
    assert padded_length(20, 12) == 20  # never below the length itself
    for n in range(1, 600):
        p = padded_length(n, 577)
        assert n <= p <= max(n, 577)
        assert p in (n, 577) or p % (16 if n <= 256 else 32) == 0
        assert n > 577 or p - n < (16 if n <= 256 else 32)  # never more than one step
    assert len({padded_length(n, 577) for n in range(1, 578)}) <= 27


def test_scan_codes_shapes_dtypes_and_streams(tiny):
    saes = tiny_saes()
    scanner = Scanner(tiny, saes, chunk_tokens=16, context_tokens=4)
    assert scanner.names == STREAMS
    assert scanner.streams == {"layers.1.kv0": ("layers.1", 0), "layers.1.kv1": ("layers.1", 1),
                               "layers.2.kv0": ("layers.2", 0), "layers.2.kv1": ("layers.2", 1)}
    seen = []
    docs = scanner.scan(TEXTS, show_progress=False, on_document=lambda i, d: seen.append(i))
    assert seen == [0, 1, 2] and len(docs) == 3
    for text, doc in zip(TEXTS, docs):
        ids, offsets = tokenize_document(tiny.tokenizer, text)
        assert doc.n_tokens == len(ids) > 16  # more than one chunk
        np.testing.assert_array_equal(doc.token_char, offsets)
        assert sorted(doc.ids) == sorted(doc.acts) == STREAMS and doc.bias == {}
        for nm in STREAMS:
            assert doc.ids[nm].shape == doc.acts[nm].shape == (len(ids), 4)
            assert doc.ids[nm].dtype == np.uint16 and doc.acts[nm].dtype == np.float16
            assert int(doc.ids[nm].max()) < 64
            # each token's k features are distinct and sorted by activation
            assert all(len(set(row)) == 4 for row in doc.ids[nm].tolist())
            assert (np.diff(doc.acts[nm].astype(np.float32), axis=1) <= 0).all()


def test_scan_codes_are_the_sae_codes_of_the_exact_keys(tiny):
    saes = tiny_saes()
    doc = Scanner(tiny, saes, chunk_tokens=512, context_tokens=0).scan(
        TEXTS[:1], show_progress=False)[0]
    keys = _exact_keys(tiny, TEXTS[0])
    for nm, (hp, g) in {"layers.1.kv1": ("layers.1", 1), "layers.2.kv0": ("layers.2", 0)}.items():
        acts, ids = saes[hp].encode(keys[int(hp[-1])][:, g], kind="key")
        np.testing.assert_array_equal(doc.ids[nm], ids.numpy())
        np.testing.assert_allclose(doc.acts[nm].astype(np.float32), acts.numpy(),
                                   rtol=1e-3, atol=1e-3)


def test_chunks_with_full_context_give_the_one_pass_keys(tiny):
    """Chunks of 8 tokens that see every earlier token give the keys of one pass (right
    padding never changes an earlier key); a short context changes later chunks only."""
    saes = tiny_saes()
    one = Scanner(tiny, saes, chunk_tokens=512, context_tokens=0, bias_vectors=EYE)
    full = Scanner(tiny, saes, chunk_tokens=8, context_tokens=120, bias_vectors=EYE)
    short = Scanner(tiny, saes, chunk_tokens=8, context_tokens=2, bias_vectors=EYE)
    a, b, c = (s.scan(TEXTS[1:2], show_progress=False)[0] for s in (one, full, short))
    exact = _exact_keys(tiny, TEXTS[1])
    np.testing.assert_array_equal(a.token_char, b.token_char)
    np.testing.assert_array_equal(a.token_char, c.token_char)
    for nm, (hp, g) in one.streams.items():
        assert a.bias[nm].shape == (a.n_tokens, 16) and a.bias[nm].dtype == np.float16
        want = exact[int(hp[-1])][:, g].numpy()
        np.testing.assert_allclose(a.bias[nm].astype(np.float32), want, rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(b.bias[nm].astype(np.float32), want, rtol=2e-3, atol=2e-3)
        assert (a.ids[nm] == b.ids[nm]).mean() > 0.98
        # a 2-token context: the first chunk is exact, later chunks are not
        np.testing.assert_allclose(c.bias[nm][:8].astype(np.float32), want[:8],
                                   rtol=2e-3, atol=2e-3)
        assert not np.allclose(c.bias[nm][8:].astype(np.float32), want[8:], atol=2e-3)


def test_kv_head_subset_and_empty_text(tiny):
    scanner = Scanner(tiny, tiny_saes(), kv_heads={"layers.1": [1]}, chunk_tokens=16)
    assert scanner.names == ["layers.1.kv1", "layers.2.kv0", "layers.2.kv1"]
    doc = scanner.scan([""], show_progress=False)[0]
    assert doc.n_tokens == 0 and doc.ids["layers.1.kv1"].shape == (0, 4)


def test_scanner_refuses_bad_arguments(tiny):
    saes = tiny_saes()
    with pytest.raises(ValueError, match="chunk_tokens must be > 0"):
        Scanner(tiny, saes, chunk_tokens=0)
    with pytest.raises(ValueError, match="context_tokens >= 0"):
        Scanner(tiny, saes, context_tokens=-1)
    with pytest.raises(ValueError, match="exceeds the model's context of 1024 tokens"):
        Scanner(tiny, saes, chunk_tokens=1000, context_tokens=64)
    with pytest.raises(ValueError, match=r"bias vectors for postings \['layers.3.kv0'\]"):
        Scanner(tiny, saes, bias_vectors={"layers.3.kv0": torch.eye(16)})
    wide = {"layers.1": TopKSAE(SAEConfig(d_in=32, num_latents=64, k=4, hookpoint="layers.1"))}
    with pytest.raises(SAEError, match="head_dim is 16"):
        Scanner(tiny, wide)


def test_question_queries(tiny):
    q = "Where was Marie Curie born?"
    ids, _ = tokenize_document(tiny.tokenizer, q)
    got = question_queries(tiny, q, ["layers.2", "layers.1"])
    assert sorted(got) == ["layers.1", "layers.2"]
    for t in got.values():
        assert t.shape == (len(ids), 4, 16) and t.dtype == torch.float32
        assert t.device.type == "cpu"
    # the sink prefix is dropped: the same queries as an explicit pass, position by position
    with QKHooks(tiny.model, [1], keys=False, queries=True) as hooks:
        want = hooks.run(input_ids=tiny.input_tensor(ids)).queries[1][0, len(tiny.sink_ids):]
    torch.testing.assert_close(got["layers.1"], want.float())
    assert not torch.allclose(got["layers.1"], got["layers.2"])
    assert list(question_queries(tiny, q, ["layers.2"])) == ["layers.2"]


def test_question_queries_too_long(tiny):
    with pytest.raises(InvalidInputError, match="longer than the model's context of 1024"):
        question_queries(tiny, "word " * 1100, ["layers.1"])
