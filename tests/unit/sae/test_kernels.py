"""topk_encode ("topk" and "rerank" paths, blocking, dtypes, errors) against a dense reference."""

import pytest
import torch

from s3_retriever.sae.kernels import METHODS, default_method, naive_topk_encode, topk_encode

EXACT = ["topk", "rerank"]


def _inputs(n: int, d: int = 16, D: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, d, generator=g),
        torch.randn(d, D, generator=g),
        torch.randn(D, generator=g) * 0.1,
    )


def _dense(x, W, b):
    """The definition, computed densely: relu(x @ W + b)."""
    return torch.relu(x @ W + b)


def test_methods_and_default():
    assert METHODS == ("auto", "topk", "rerank")
    assert default_method("cpu") == "topk" and default_method(torch.device("cuda")) == "rerank"


@pytest.mark.parametrize("method", ["auto", *EXACT])
def test_exactly_k_distinct_ids_sorted_and_equal_to_the_definition(method):
    x, W, b = _inputs(50)
    acts, ids = topk_encode(x, W, b, 8, method=method)
    assert acts.shape == ids.shape == (50, 8)
    assert acts.dtype == torch.float32 and ids.dtype == torch.int64
    assert all(len(set(row)) == 8 for row in ids.tolist())
    assert (acts[:, :-1] >= acts[:, 1:]).all()
    dense = _dense(x, W, b)
    # the values are the 8 largest activations, and each sits at its returned id
    torch.testing.assert_close(acts, dense.topk(8, dim=1).values)
    torch.testing.assert_close(dense.gather(1, ids), acts)


def test_zero_acts_when_few_positive():
    x, W, _ = _inputs(10)
    b = torch.full((64,), -1e3)
    b[3] = 1e4  # exactly one positive pre-activation per row
    for method in EXACT:
        acts, ids = topk_encode(x, W, b, 4, method=method)
        assert (ids[:, 0] == 3).all()
        assert (acts[:, 0] > 0).all() and (acts[:, 1:] == 0).all()
        assert ids.shape == (10, 4) and all(len(set(r)) == 4 for r in ids.tolist())
    # "topk" fills the empty slots with the next-best (negative) pre-activations: the ids
    # are deterministic, not whatever a sort of equal zeros returns
    ids = topk_encode(x, W, b, 4, method="topk")[1]
    assert torch.equal(ids, (x @ W + b).topk(4, dim=1).indices)


@pytest.mark.parametrize("n,block", [(103, 10), (103, 16), (103, 103), (103, 1000), (64, 32)])
def test_blocked_equals_naive(n, block):
    x, W, b = _inputs(n)
    a1, i1 = topk_encode(x, W, b, 7, block_size=block)
    a2, i2 = naive_topk_encode(x, W, b, 7)
    assert torch.equal(i1, i2)
    torch.testing.assert_close(a1, a2)


@pytest.mark.parametrize("method", EXACT)
@pytest.mark.parametrize("n,block", [(103, 16), (64, 1000)])
def test_exact_methods_match_naive(method, n, block):
    x, W, b = _inputs(n, d=32, D=512, seed=3)
    a1, i1 = topk_encode(x, W, b, 16, block_size=block, method=method)
    a2, i2 = naive_topk_encode(x, W, b, 16)
    assert a1.dtype == torch.float32 and i1.dtype == torch.int64
    assert torch.equal(i1, i2)  # continuous random data: no ties, so the order is unique
    torch.testing.assert_close(a1, a2)


def test_naive_is_the_definition():
    x, W, b = _inputs(40, d=8, D=32, seed=4)
    acts, ids = naive_topk_encode(x, W, b, 5)
    dense = _dense(x, W, b)
    torch.testing.assert_close(acts, dense.topk(5, dim=1).values)
    torch.testing.assert_close(dense.gather(1, ids), acts)


def test_ties_give_the_same_ids_and_values_on_every_path():
    x = torch.ones(3, 2)
    W = torch.tensor([[1.0, 2.0, 1.0, 2.0, 0.5], [0.0, 0.0, 0.0, 0.0, 0.0]])
    for method in EXACT:
        a, i = topk_encode(x, W, torch.zeros(5), 4, method=method)
        assert [sorted(r) for r in i.tolist()] == [[0, 1, 2, 3]] * 3
        assert a.tolist() == [[2.0, 2.0, 1.0, 1.0]] * 3


def test_empty_input():
    _, W, b = _inputs(1)
    x = torch.empty(0, 16)
    for fn in (topk_encode, naive_topk_encode):
        acts, ids = fn(x, W, b, 3)
        assert acts.shape == ids.shape == (0, 3)
        assert acts.dtype == torch.float32 and ids.dtype == torch.int64
    acts, ids = topk_encode(x, W, b, 3, method="rerank")
    assert acts.shape == ids.shape == (0, 3)


def test_bf16_input_runs_in_bf16_returns_float32():
    x, W, b = _inputs(40)
    acts, ids = topk_encode(x.bfloat16(), W, b, 4, block_size=16)
    assert acts.dtype == torch.float32 and ids.shape == (40, 4)
    ref = torch.relu(x @ W + b).topk(4, dim=1).values
    torch.testing.assert_close(acts, ref, atol=0.2, rtol=0.05)
    # it computed in bf16: exactly what a bf16 reference computes
    ref_bf16 = torch.relu(torch.addmm(b.bfloat16(), x.bfloat16(), W.bfloat16())).topk(4, dim=1)
    torch.testing.assert_close(acts, ref_bf16.values.float())


@pytest.mark.parametrize("k", [0, 65, -1, True, 2.0])
def test_bad_k(k):
    x, W, b = _inputs(4)
    with pytest.raises(ValueError, match="k must be"):
        topk_encode(x, W, b, k)


def test_bad_shapes():
    x, W, b = _inputs(4)
    with pytest.raises(ValueError, match="W_enc"):
        topk_encode(x, W.t(), b, 2)
    with pytest.raises(ValueError, match="b_enc"):
        topk_encode(x, W, b[:3], 2)
    with pytest.raises(ValueError, match="x must be"):
        topk_encode(x[0], W, b, 2)
    with pytest.raises(ValueError, match="x must be"):
        topk_encode(x.long(), W, b, 2)
    with pytest.raises(ValueError, match="block_size"):
        topk_encode(x, W, b, 2, block_size=0)


def test_rerank_margin_covers_the_whole_dictionary():
    x, W, b = _inputs(20, D=16)
    a1, i1 = topk_encode(x, W, b, 16, method="rerank", margin=100)  # k == D
    a2, i2 = naive_topk_encode(x, W, b, 16)
    assert torch.equal(i1, i2)
    torch.testing.assert_close(a1, a2)
    # margin 0: the bf16 top-k, re-scored exactly; its values are exact pre-activations
    a3, i3 = topk_encode(x, W, b, 4, method="rerank", margin=0)
    assert a3.shape == i3.shape == (20, 4)
    torch.testing.assert_close(_dense(x, W, b).gather(1, i3), a3)


def test_bad_method_and_margin():
    x, W, b = _inputs(4)
    with pytest.raises(ValueError, match="method"):
        topk_encode(x, W, b, 2, method="magic")
    for removed in ("partial", "bf16"):  # moved to benchmarks/kernel_variants.py
        with pytest.raises(ValueError, match="method"):
            topk_encode(x, W, b, 2, method=removed)
    with pytest.raises(ValueError, match="margin"):
        topk_encode(x, W, b, 2, method="rerank", margin=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["auto", *EXACT])
def test_cuda_matches_cpu(method):
    x, W, b = _inputs(4096, d=64, D=2048, seed=8)
    ref_acts, ref_ids = naive_topk_encode(x, W, b, 16)
    acts, ids = topk_encode(x.cuda(), W.cuda(), b.cuda(), 16, method=method)
    assert ids.is_cuda and acts.is_cuda
    agree = (ids.cpu() == ref_ids).all(dim=1).float().mean().item()
    assert agree > 0.999
    torch.testing.assert_close(acts.cpu(), ref_acts, atol=1e-3, rtol=1e-3)
