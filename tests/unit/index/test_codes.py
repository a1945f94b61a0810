"""Codes: the per-token code store (canonical order, float16 clipping, validation, take, concat,
lazy postings)."""

from __future__ import annotations

import numpy as np
import pytest

from s3_retriever.index.codes import Codes, id_dtype
from s3_retriever.index.postings import Postings
from tests.helpers import K, L, assert_postings_equal, random_codes

F16_MAX = float(np.finfo(np.float16).max)


def canonical_row(ids_row, acts_row) -> list[tuple[int, float]]:
    """A token's (id, act) pairs as the store must hold them, computed the slow way."""
    a16 = [float(np.float16(min(float(a), F16_MAX))) for a in acts_row]
    live = sorted(((-a, int(i)) for i, a in zip(ids_row, a16, strict=True) if a > 0))
    out = [(i, -a) for a, i in live]
    return out + [(0, 0.0)] * (len(ids_row) - len(out))


# -- from_scan ------------------------------------------------------------------------------


def test_from_scan_canonical_order_and_empty_slots() -> None:
    rng = np.random.default_rng(0)
    ids, acts = random_codes(rng, 200)
    acts[:, 1] = acts[:, 0]  # equal activations: ties go to the lower feature id
    c = Codes.from_scan(ids, acts, L)
    assert c.ids.dtype == np.uint16 and c.acts.dtype == np.float16
    assert (c.n_tokens, c.k, c.num_latents) == (200, K, L)
    for i in range(200):
        got = list(zip(c.ids[i].tolist(), c.acts[i].astype(float).tolist(), strict=True))
        assert got == canonical_row(ids[i], acts[i]), i
    # the input arrays are not modified
    assert acts.dtype == np.float32 and (acts < 0).any()


def test_from_scan_tie_and_padding_example() -> None:
    c = Codes.from_scan(np.array([[5, 2, 9, 4]]), np.array([[1.0, 1.0, -3.0, 2.0]]), 10)
    assert c.ids.tolist() == [[4, 2, 5, 0]]
    assert c.acts.tolist() == [[2.0, 1.0, 1.0, 0.0]]


def test_from_scan_float16_clipping_and_underflow() -> None:
    ids = np.array([[1, 2, 3]])
    acts = np.array([[1e6, 1e-9, np.inf]])
    c = Codes.from_scan(ids, acts, 8)
    # huge and infinite activations clip to the float16 maximum; 1e-9 underflows to 0: empty
    assert np.isfinite(c.acts).all()
    assert c.ids.tolist() == [[1, 3, 0]]
    assert c.acts.astype(float).tolist() == [[F16_MAX, F16_MAX, 0.0]]
    assert c.postings.nnz == 2


def test_from_scan_repeated_feature() -> None:
    with pytest.raises(ValueError, match="a feature appears twice in row 1"):
        Codes.from_scan(np.array([[1, 2], [3, 3]]), np.ones((2, 2)), 8)
    # a repeated id in an empty slot is padding, not an error
    c = Codes.from_scan(np.array([[3, 3, 5]]), np.array([[2.0, 0.0, 1.0]]), 8)
    assert c.ids.tolist() == [[3, 5, 0]] and c.acts.tolist() == [[2.0, 1.0, 0.0]]


@pytest.mark.parametrize("ids,acts,match", [
    (np.array([[8]]), np.ones((1, 1)), r"feature ids outside \[0, 8\)"),
    (np.array([[-1]]), np.ones((1, 1)), r"feature ids outside \[0, 8\)"),
    (np.array([[1]]), np.array([[np.nan]]), "NaN"),
    (np.array([[1, 2]]), np.ones((1, 3)), "equal shape"),
    (np.array([1, 2]), np.ones(2), "2-D"),
    (np.array([[1.0]]), np.ones((1, 1)), "integers"),
])
def test_from_scan_validation(ids, acts, match) -> None:
    with pytest.raises(ValueError, match=match):
        Codes.from_scan(ids, acts, 8)


def test_id_dtype_widens_beyond_65536_latents() -> None:
    assert id_dtype(65536) == np.uint16 and id_dtype(65537) == np.int32
    big = Codes.from_scan(np.array([[70_000, 3]]), np.array([[1.0, 2.0]]), 70_001)
    assert big.ids.dtype == np.int32 and big.ids.tolist() == [[3, 70_000]]
    assert big.postings.doc_freq()[[3, 70_000]].tolist() == [1, 1]


def test_empty_codes() -> None:
    c = Codes.from_scan(np.zeros((0, 4), dtype=np.int64), np.zeros((0, 4)), 16)
    assert (c.n_tokens, c.k, c.nbytes) == (0, 4, 0)
    assert c.postings.nnz == 0 and c.postings.doc_freq().tolist() == [0] * 16


# -- the constructor (what a saved index is read through) -----------------------------------


def test_arrays_are_read_only_and_sized() -> None:
    c = Codes.from_scan(*random_codes(np.random.default_rng(1), 10), L)
    for a in (c.ids, c.acts):
        with pytest.raises(ValueError):
            a[0, 0] = 1
    assert c.nbytes == 10 * K * (2 + 2)
    assert repr(c) == f"Codes(n_tokens=10, k={K}, num_latents={L})"


@pytest.mark.parametrize("ids,acts,match", [
    (np.array([[1, 2]], np.int64), np.array([[2, 1]], np.float16), r"ids: need uint16"),
    (np.array([[1, 2]], np.uint16), np.array([[2, 1]], np.float32), r"acts: need float16"),
    (np.array([[1, 2]], np.uint16), np.array([[2]], np.float16), r"acts: need float16"),
    (np.array([[9, 2]], np.uint16), np.array([[2, 1]], np.float16), r"ids: feature ids outside"),
    (np.array([[1, 2]], np.uint16), np.array([[1, 2]], np.float16), r"acts: not sorted"),
    (np.array([[1, 2]], np.uint16), np.array([[1, -1]], np.float16), r"acts: .* >= 0"),
    (np.array([[1, 2]], np.uint16), np.array([[np.inf, 1]], np.float16), r"acts: .*finite"),
    (np.array([[1, 2]], np.uint16), np.array([[1, 0]], np.float16), r"ids: an empty slot"),
    (np.array([[1, 1]], np.uint16), np.array([[1, 1]], np.float16), r"ids: a feature repeats"),
])
def test_constructor_names_the_bad_array(ids, acts, match) -> None:
    with pytest.raises(ValueError, match=match):
        Codes(ids, acts, 8)


def test_constructor_check_false_skips_only_the_content_checks() -> None:
    unsorted = (np.array([[1, 2]], np.uint16), np.array([[1, 2]], np.float16))
    assert Codes(*unsorted, 8, check=False).ids.tolist() == [[1, 2]]
    with pytest.raises(ValueError, match="ids: need uint16"):
        Codes(np.array([[1, 2]], np.int64), unsorted[1], 8, check=False)
    with pytest.raises(ValueError, match="num_latents"):
        Codes(*unsorted, 0)


def test_constructor_accepts_its_own_output() -> None:
    c = Codes.from_scan(*random_codes(np.random.default_rng(2), 50), L)
    again = Codes(c.ids.copy(), c.acts.copy(), L)
    np.testing.assert_array_equal(again.ids, c.ids)
    np.testing.assert_array_equal(again.acts, c.acts)


# -- postings, take, concat -----------------------------------------------------------------


def test_lazy_postings_equal_postings_from_codes() -> None:
    rng = np.random.default_rng(3)
    ids, acts = random_codes(rng, 300)
    c = Codes.from_scan(ids, acts, L)
    assert c._postings is None  # nothing inverted until asked
    p = c.postings
    assert c.postings is p  # built once, kept
    # the same postings whether inverted from the raw scan output or the canonical codes
    assert_postings_equal(p, Postings.from_codes(ids, acts, L))
    assert_postings_equal(p, Postings.from_codes(c.ids, c.acts, L))
    kept = acts.astype(np.float16) > 0
    np.testing.assert_array_equal(p.doc_freq(), np.bincount(ids[kept], minlength=L))


def test_take_keeps_rows_in_order() -> None:
    rng = np.random.default_rng(4)
    ids, acts = random_codes(rng, 40)
    c = Codes.from_scan(ids, acts, L)
    keep = rng.random(40) < 0.5
    part = c.take(keep)
    np.testing.assert_array_equal(part.ids, c.ids[keep])
    np.testing.assert_array_equal(part.acts, c.acts[keep])
    assert_postings_equal(part.postings, Postings.from_codes(ids[keep], acts[keep], L))
    rows = np.array([5, 1, 1])
    np.testing.assert_array_equal(c.take(rows).ids, c.ids[rows])
    assert c.take(np.zeros(40, dtype=bool)).n_tokens == 0


def test_concat_equals_one_scan() -> None:
    rng = np.random.default_rng(5)
    ids, acts = random_codes(rng, 120)
    whole = Codes.from_scan(ids, acts, L)
    parts = [Codes.from_scan(ids[a:b], acts[a:b], L) for a, b in [(0, 50), (50, 51), (51, 120)]]
    joined = Codes.concat(parts)
    np.testing.assert_array_equal(joined.ids, whole.ids)
    np.testing.assert_array_equal(joined.acts, whole.acts)
    assert_postings_equal(joined.postings, whole.postings)
    assert Codes.concat(parts[:1]) is parts[0]
    with pytest.raises(ValueError, match="at least one"):
        Codes.concat([])
    with pytest.raises(ValueError, match="different num_latents or k"):
        Codes.concat([whole, Codes.from_scan(ids, acts, L + 1)])
    with pytest.raises(ValueError, match="different num_latents or k"):
        Codes.concat([whole, Codes.from_scan(ids[:, :3], acts[:, :3], L)])
