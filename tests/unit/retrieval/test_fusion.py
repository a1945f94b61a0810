"""Fusion of S3 and BM25 unit scores: min-max normalize, linear and RRF fuse."""

from __future__ import annotations

import numpy as np
import pytest

from s3_retriever.retrieval.fusion import FUSION_METHODS, fuse, normalize


def order(x: np.ndarray) -> list[int]:
    return np.argsort(-x, kind="stable").tolist()


def test_normalize():
    x = np.array([2.0, 4.0, -np.inf, 3.0])
    assert normalize(x).tolist() == [0.0, 1.0, 0.0, 0.5]
    m = np.array([True, False, True, True])
    assert normalize(x, m).tolist() == [0.0, 0.0, 0.0, 1.0]
    assert normalize(np.full(3, 7.0)).tolist() == [0.0, 0.0, 0.0]
    assert normalize(np.array([np.inf, 1.0, 3.0])).tolist() == [0.0, 0.0, 1.0]
    assert normalize(np.array([-np.inf, -np.inf])).tolist() == [0.0, 0.0]
    assert normalize(np.array([], dtype=float)).shape == (0,)
    assert normalize([1, 2, 3]).tolist() == [0.0, 0.5, 1.0]  # lists and ints are accepted


def test_normalize_errors():
    with pytest.raises(ValueError, match="1-D"):
        normalize(np.ones((2, 2)))
    with pytest.raises(ValueError, match="mask"):
        normalize(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="mask"):
        normalize(np.ones(3), np.ones(2, dtype=bool))


@pytest.mark.parametrize("method", FUSION_METHODS)
def test_fuse_extreme_weights_reproduce_single_orders(method):
    rng = np.random.default_rng(3)
    s3 = rng.normal(size=50)
    bm = rng.gamma(1.0, size=50)
    assert order(fuse(s3, bm, method=method, weight=1.0)) == order(s3)
    assert order(fuse(s3, bm, method=method, weight=0.0)) == order(bm)


@pytest.mark.parametrize("method", FUSION_METHODS)
def test_fuse_intermediate_weight_changes_top(method):
    s3 = np.array([1.0, 0.8, 0.0, 0.1])
    bm = np.array([0.0, 0.8, 1.0, 0.1])
    assert int(np.argmax(fuse(s3, bm, method=method, weight=1.0))) == 0
    assert int(np.argmax(fuse(s3, bm, method=method, weight=0.0))) == 2
    assert int(np.argmax(fuse(s3, bm, method=method, weight=0.5))) == 1


def test_fuse_values_mask_and_ties():
    assert FUSION_METHODS == ("linear", "rrf")
    s3 = np.array([3.0, 1.0, 2.0, 2.0])
    bm = np.array([0.0, 10.0, 5.0, 99.0])
    lin = fuse(s3, bm, weight=0.25)
    assert np.allclose(lin, [0.25 * 1.0, 0.75 * 10 / 99, 0.25 * 0.5 + 0.75 * 5 / 99,
                             0.25 * 0.5 + 0.75])
    rrf = fuse(s3, bm, method="rrf", weight=0.5, rrf_k=0)
    # s3 ranks: 1, 4, 2, 2 (tie shares the best rank); bm ranks: 4, 2, 3, 1
    assert np.allclose(rrf, [0.5 / 1 + 0.5 / 4, 0.5 / 4 + 0.5 / 2, 0.5 / 2 + 0.5 / 3,
                             0.5 / 2 + 0.5])
    # the default rrf_k is 60
    assert np.allclose(fuse(s3, bm, method="rrf", weight=1.0),
                       [1 / 61, 1 / 64, 1 / 62, 1 / 62])
    m = np.array([True, True, False, True])
    fm = fuse(s3, bm, weight=0.5, mask=m)
    assert np.isneginf(fm[2]) and np.isfinite(fm[m]).all()
    # normalisation runs over the masked entries only: bm max is 99 either way, s3 min 1
    assert np.isclose(fm[0], 0.5 * 1.0 + 0.5 * 0.0)
    # ranks too: without entry 2, entry 3 is second by s3
    fr = fuse(s3, bm, method="rrf", weight=1.0, rrf_k=0, mask=m)
    assert np.allclose(fr[m], [1.0, 1 / 3, 1 / 2])
    assert np.isneginf(fuse(s3, bm, mask=np.zeros(4, dtype=bool))).all()
    # -inf s3 (a sentence without tokens) stays usable through BM25
    f = fuse(np.array([-np.inf, 1.0, 0.0]), np.array([1.0, 0.0, 0.0]), weight=0.5)
    assert np.isfinite(f).all() and f[0] == 0.5
    # and ranks last by S3 under RRF
    r = fuse(np.array([-np.inf, 1.0, 0.0]), np.array([0.0, 0.0, 0.0]), method="rrf",
             weight=1.0, rrf_k=0)
    assert r.tolist() == [1 / 3, 1.0, 1 / 2]


def test_fuse_nan_outside_the_mask_is_ignored():
    s3 = np.array([np.nan, 1.0, 2.0])
    bm = np.array([5.0, 0.0, 1.0])
    m = np.array([False, True, True])
    out = fuse(s3, bm, mask=m, weight=0.5)
    assert np.isneginf(out[0]) and out[1:].tolist() == [0.0, 1.0]


def test_fuse_errors():
    a = np.array([1.0, 2.0])
    with pytest.raises(ValueError, match="linear, rrf"):
        fuse(a, a, method="max")
    with pytest.raises(ValueError, match="linear, rrf"):
        fuse(a, a, method="learned")  # learned fusion was removed
    for w in (-0.1, 1.5):
        with pytest.raises(ValueError, match="weight"):
            fuse(a, a, weight=w)
    with pytest.raises(ValueError, match="1-D, equal"):
        fuse(a, np.array([1.0]))
    with pytest.raises(ValueError, match="NaN"):
        fuse(np.array([np.nan, 1.0]), a)
    with pytest.raises(ValueError, match="rrf_k"):
        fuse(a, a, rrf_k=-1)
    with pytest.raises(ValueError, match="mask"):
        fuse(a, a, mask=np.array([1, 0]))
