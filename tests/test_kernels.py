import pytest
import torch

from s3_retriever.kernels import naive_topk_encode, topk_encode


def _inputs(n: int, d: int = 16, D: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, d, generator=g),
        torch.randn(d, D, generator=g),
        torch.randn(D, generator=g) * 0.1,
    )


def test_exactly_k_sorted_nonnegative():
    x, W, b = _inputs(50)
    acts, ids = topk_encode(x, W, b, 8)
    assert acts.shape == ids.shape == (50, 8)
    assert acts.dtype == torch.float32 and ids.dtype == torch.int64
    assert (acts >= 0).all()
    assert (acts[:, :-1] >= acts[:, 1:]).all()
    assert all(len(set(row)) == 8 for row in ids.tolist())
    assert ids.min() >= 0 and ids.max() < 64


def test_matches_brute_force():
    x, W, b = _inputs(30)
    acts, ids = topk_encode(x, W, b, 5)
    dense = torch.relu(x @ W + b)
    ref = dense.topk(5, dim=1).values
    torch.testing.assert_close(acts, ref)
    torch.testing.assert_close(dense.gather(1, ids), acts)


def test_zero_acts_when_few_positive():
    x, W, _ = _inputs(10)
    b = torch.full((64,), -1e3)
    b[3] = 1e4  # exactly one positive pre-activation per row
    acts, ids = topk_encode(x, W, b, 4)
    assert (ids[:, 0] == 3).all()
    assert (acts[:, 0] > 0).all() and (acts[:, 1:] == 0).all()
    assert ids.shape == (10, 4)


@pytest.mark.parametrize("n,block", [(103, 10), (103, 16), (103, 103), (103, 1000), (64, 32)])
def test_blocked_equals_naive(n, block):
    x, W, b = _inputs(n)
    a1, i1 = topk_encode(x, W, b, 7, block_size=block)
    a2, i2 = naive_topk_encode(x, W, b, 7)
    assert torch.equal(i1, i2)
    torch.testing.assert_close(a1, a2)


def test_empty_input():
    _, W, b = _inputs(1)
    x = torch.empty(0, 16)
    for fn in (topk_encode, naive_topk_encode):
        acts, ids = fn(x, W, b, 3)
        assert acts.shape == ids.shape == (0, 3)
        assert acts.dtype == torch.float32 and ids.dtype == torch.int64


def test_bf16_input_runs_in_bf16_returns_float32():
    x, W, b = _inputs(40)
    acts, ids = topk_encode(x.bfloat16(), W, b, 4, block_size=16)
    assert acts.dtype == torch.float32 and ids.shape == (40, 4)
    ref = torch.relu(x @ W + b).topk(4, dim=1).values
    torch.testing.assert_close(acts, ref, atol=0.2, rtol=0.05)


@pytest.mark.parametrize("k", [0, 65, -1])
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
    with pytest.raises(ValueError, match="block_size"):
        topk_encode(x, W, b, 2, block_size=0)
