"""Postings: CSR inversion of codes (from_codes), gather, doc_freq, concat, validation."""

from __future__ import annotations

import numpy as np
import pytest

from s3_retriever.index import postings as postings_module
from s3_retriever.index.postings import Postings
from tests.helpers import L, assert_postings_equal, random_codes


def test_from_codes_and_gather_round_trip() -> None:
    rng = np.random.default_rng(0)
    n = 300
    ids, acts = random_codes(rng, n)
    p = Postings.from_codes(ids, acts, L)
    acts16 = acts.astype(np.float16)
    kept = acts16 > 0
    assert p.nnz == int(kept.sum()) and p.n_tokens == n and p.num_latents == L
    assert p.indptr.dtype == np.int64 and p.positions.dtype == np.uint32
    assert p.acts.dtype == np.float16 and np.all(p.acts > 0)
    assert p.nbytes == (L + 1) * 8 + p.nnz * 6
    np.testing.assert_array_equal(p.doc_freq(), np.bincount(ids[kept], minlength=L))
    for f in range(L):  # positions strictly ascending within each feature
        assert np.all(np.diff(p.positions[p.indptr[f]:p.indptr[f + 1]].astype(int)) > 0)
    for a in (p.indptr, p.positions, p.acts):
        with pytest.raises(ValueError):
            a[0] = 1  # read-only

    # gather every feature in a shuffled order gives back exactly the kept entries
    order = rng.permutation(L)
    pos, a, which = p.gather(order)
    assert pos.dtype == np.int64 and a.dtype == np.float32 and which.dtype == np.int64
    got = sorted(zip(pos.tolist(), order[which].tolist(), a.tolist(), strict=True))
    rows, cols = np.nonzero(kept)
    want = sorted(zip(rows.tolist(), ids[rows, cols].tolist(),
                      acts16[rows, cols].astype(np.float32).tolist(), strict=True))
    assert got == want
    assert np.all(np.diff(which) >= 0)  # grouped in the order of `features`


def test_gather_edge_cases() -> None:
    p = Postings.from_codes(np.array([[0, 1], [1, 2]]), np.ones((2, 2)), 4)
    pos, a, which = p.gather(np.array([], dtype=np.int64))
    assert pos.size == a.size == which.size == 0
    pos, a, which = p.gather(np.array([1, 3, 1]))
    assert pos.tolist() == [0, 1, 0, 1] and which.tolist() == [0, 0, 2, 2]
    with pytest.raises(ValueError, match="outside"):
        p.gather(np.array([4]))
    with pytest.raises(ValueError, match="outside"):
        p.gather(np.array([-1]))
    with pytest.raises(ValueError, match="1-D integer"):
        p.gather(np.array([1.0]))


def test_from_codes_validation() -> None:
    with pytest.raises(ValueError, match="feature id 8 outside"):
        Postings.from_codes(np.array([[8]]), np.ones((1, 1)), 8)
    with pytest.raises(ValueError, match="feature id -1 outside"):
        Postings.from_codes(np.array([[-1]]), np.zeros((1, 1)), 8)
    with pytest.raises(ValueError, match="NaN"):
        Postings.from_codes(np.array([[1]]), np.array([[np.nan]]), 8)
    with pytest.raises(ValueError, match="twice in row 1"):
        Postings.from_codes(np.array([[1, 2], [3, 3]]), np.ones((2, 2)), 8)
    with pytest.raises(ValueError, match="equal shape"):
        Postings.from_codes(np.array([[1, 2]]), np.ones((1, 3)), 8)
    with pytest.raises(ValueError, match="integers"):
        Postings.from_codes(np.array([[1.0]]), np.ones((1, 1)), 8)
    with pytest.raises(ValueError, match="num_latents"):
        Postings.from_codes(np.array([[1]]), np.ones((1, 1)), 0)
    # a repeated id with act 0 is padding, not an error; huge acts clip to the float16 max
    p = Postings.from_codes(np.array([[0, 0, 5]]), np.array([[0.0, 0.0, 1e6]]), 8)
    assert p.nnz == 1 and p.acts.tolist() == [float(np.finfo(np.float16).max)]
    # an activation that underflows float16 is not stored
    assert Postings.from_codes(np.array([[1]]), np.array([[1e-9]]), 8).nnz == 0


def test_inversion_in_row_blocks_equals_one_pass(monkeypatch) -> None:
    rng = np.random.default_rng(1)
    ids, acts = random_codes(rng, 250)
    whole = Postings.from_codes(ids, acts, L)
    monkeypatch.setattr(postings_module, "_INVERT_ROWS", 16)
    assert_postings_equal(Postings.from_codes(ids, acts, L), whole)
    # a repeat is reported with its row in the whole batch, not within its block
    ids[100, 1] = ids[100, 0]
    acts[100, :2] = 1.0
    with pytest.raises(ValueError, match="twice in row 100"):
        Postings.from_codes(ids, acts, L)


def test_postings_constructor_validates() -> None:
    good = Postings.from_codes(np.array([[0], [1]]), np.ones((2, 1)), 2)
    p = Postings(good.indptr, good.positions, good.acts, 2)
    assert_postings_equal(p, good)
    with pytest.raises(ValueError, match="indptr"):
        Postings(np.array([0, 1, 3]), good.positions, good.acts, 2)
    with pytest.raises(ValueError, match="positions: position 1 >= n_tokens=1"):
        Postings(good.indptr, good.positions, good.acts, 1)
    with pytest.raises(ValueError, match="acts"):
        Postings(good.indptr, good.positions, np.array([1.0, -1.0]), 2)
    with pytest.raises(ValueError, match="ascending"):
        Postings(np.array([0, 2, 2]), np.array([1, 0]), np.ones(2), 2)
    with pytest.raises(ValueError, match="not non-decreasing"):
        Postings(np.array([0, 2, 1, 2]), np.array([0, 1]), np.ones(2), 2)
    with pytest.raises(ValueError, match="n_tokens"):
        Postings(good.indptr, good.positions, good.acts, -1)
    # a new feature may restart from any position
    Postings(np.array([0, 2, 4]), np.array([0, 3, 1, 2]), np.ones(4), 4)


def test_constructor_copies_writable_input() -> None:
    indptr, positions, acts = np.array([0, 1, 2]), np.array([0, 1]), np.ones(2)
    p = Postings(indptr, positions, acts, 2)
    positions[0] = 1
    acts[0] = 5.0
    assert p.positions.tolist() == [0, 1] and p.acts.tolist() == [1.0, 1.0]


def test_concat_matches_from_codes() -> None:
    rng = np.random.default_rng(1)
    ids, acts = random_codes(rng, 120)
    whole = Postings.from_codes(ids, acts, L)
    parts = [Postings.from_codes(ids[a:b], acts[a:b], L) for a, b in [(0, 50), (50, 51), (51, 120)]]
    assert_postings_equal(Postings.concat(parts), whole)
    assert_postings_equal(Postings.concat([whole]), whole)
    with pytest.raises(ValueError, match="num_latents"):
        Postings.concat([whole, Postings.from_codes(ids, acts, L + 1)])
    with pytest.raises(ValueError, match="at least one"):
        Postings.concat([])
