"""Segment and InvertedIndex: immutable segments of codes, add / delete / compact, statistics."""

from __future__ import annotations

import numpy as np
import pytest

from s3_retriever.index import Codes, DocRecord, InvertedIndex, Postings, Segment
from tests.helpers import HOOKS, K, L, assert_postings_equal, make_batch, snapshot

# -- Segment -------------------------------------------------------------------------------


def test_segment_is_immutable_and_validated() -> None:
    c = Codes.from_scan(np.array([[0], [1]]), np.ones((2, 1)), 2)
    token_doc = np.array([0, 0])
    seg = Segment({"h": c}, token_doc, [[0, 1], [1, 2]])
    token_doc[0] = 5  # the caller's array is copied
    assert seg.token_doc.tolist() == [0, 0] and seg.token_doc.dtype == np.int32
    assert seg.token_char.dtype == np.int32 and seg.n_tokens == 2
    with pytest.raises(ValueError):
        seg.token_doc[0] = 1
    with pytest.raises(TypeError):
        seg.codes["g"] = c  # type: ignore[index]
    with pytest.raises(TypeError):
        seg.postings["g"] = c.postings  # type: ignore[index]
    assert dict(seg.bias) == {}
    with pytest.raises(ValueError, match="codes for 2 tokens, token_doc has 3"):
        Segment({"h": c}, [0, 0, 0], [[0, 1]] * 3)
    with pytest.raises(ValueError, match="token_char"):
        Segment({"h": c}, [0, 0], [[0, 1]])
    with pytest.raises(ValueError, match="token_char"):
        Segment({"h": c}, [0, 0], [[0, 1], [2, 1]])
    with pytest.raises(ValueError, match="token_doc"):
        Segment({"h": c}, [0, -1], [[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="expected Codes"):
        Segment({"h": c.postings}, [0, 0], [[0, 1], [1, 2]])  # type: ignore[dict-item]


def test_segment_bias_is_validated() -> None:
    c = Codes.from_scan(np.array([[0], [1]]), np.ones((2, 1)), 2)
    ok = np.ones((2, 3), dtype=np.float16)
    seg = Segment({"h": c}, [0, 0], [[0, 1], [1, 2]], bias={"h": ok})
    assert seg.bias["h"].shape == (2, 3) and not seg.bias["h"].flags.writeable
    assert seg.nbytes == c.nbytes + ok.nbytes + 2 * 4 + 2 * 8
    for bias, match in (({"g": ok}, "stream without codes"),
                        ({"h": ok.astype(np.float32)}, "float16"),
                        ({"h": ok[:1]}, r"float16 \[2, m\]"),
                        ({"h": np.full((2, 1), np.inf, np.float16)}, "non-finite")):
        with pytest.raises(ValueError, match=match):
            Segment({"h": c}, [0, 0], [[0, 1], [1, 2]], bias=bias)


def test_segment_postings_are_the_codes_inverted() -> None:
    rng = np.random.default_rng(0)
    seg, _, raw = make_batch(rng, ["a", "b"], [7, 5])
    assert list(seg.postings) == HOOKS and len(seg.postings) == 2
    for h in HOOKS:
        p = seg.postings[h]
        assert p is seg.codes[h].postings  # built once per stream, shared
        assert_postings_equal(p, Postings.from_codes(*raw[h], L))
    assert repr(seg) == f"Segment(n_tokens=12, streams={HOOKS})"


def test_empty_segment() -> None:
    c = Codes.from_scan(np.zeros((0, 2), dtype=np.int64), np.zeros((0, 2)), 4)
    seg = Segment({"h": c}, [], [])
    assert seg.n_tokens == 0 and seg.token_char.shape == (0, 2)


# -- InvertedIndex: statistics -------------------------------------------------------------


def small_index() -> InvertedIndex:
    # 5 tokens in 2 docs, 4 latents, top-2 codes
    ids = np.array([[0, 1], [0, 2], [0, 1], [3, 0], [1, 2]])
    acts = np.array([[1, 1], [1, 1], [1, 0], [1, 1], [1, 1]], dtype=np.float32)
    seg = Segment({"h": Codes.from_scan(ids, acts, 4)}, [0, 0, 0, 1, 1],
                  [[0, 1], [1, 2], [2, 3], [0, 1], [1, 2]])
    index = InvertedIndex(["h"], {"h": 4})
    index.add_segment(seg, [DocRecord("a", "abc", token_start=0, token_end=3),
                            DocRecord("b", "de", token_start=3, token_end=5)])
    return index


def test_doc_freq_idf_pruned() -> None:
    index = small_index()
    np.testing.assert_array_equal(index.doc_freq("h"), [4, 2, 2, 1])
    n = 5
    want = np.log((n + 1) / (np.array([4, 2, 2, 1]) + 1)) + 1
    np.testing.assert_allclose(index.idf("h"), want, rtol=1e-6)
    assert index.idf("h").dtype == np.float32
    assert index.pruned("h", 0.5).tolist() == [True, False, False, False]  # 4 > 2.5
    assert index.pruned("h", 0.3).tolist() == [True, True, True, False]  # > 1.5
    assert not index.pruned("h", 1.0).any()
    for bad in (-0.1, float("nan"), "0.5"):
        with pytest.raises(ValueError):
            index.pruned("h", bad)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="unknown hookpoint"):
        index.doc_freq("nope")

    index.delete(["b"])  # df and N are exact over live tokens
    np.testing.assert_array_equal(index.doc_freq("h"), [3, 1, 1, 0])
    assert index.n_live_tokens == 3 and index.n_tokens == 5
    np.testing.assert_allclose(index.idf("h"), np.log(4 / np.array([4, 2, 2, 1])) + 1, rtol=1e-6)
    assert index.live_token_mask(0).tolist() == [True, True, True, False, False]
    with pytest.raises(IndexError):
        index.live_token_mask(1)


def test_doc_freq_sums_segments_and_sizes() -> None:
    rng = np.random.default_rng(2)
    index = InvertedIndex(HOOKS, L)
    all_codes = []
    for names, lens in [(["a", "b"], [10, 7]), (["c"], [12])]:
        seg, docs, codes = make_batch(rng, names, lens)
        index.add_segment(seg, docs)
        all_codes.append(codes)
    for h in HOOKS:
        ids = np.concatenate([c[h][0] for c in all_codes])
        acts = np.concatenate([c[h][1] for c in all_codes]).astype(np.float16)
        np.testing.assert_array_equal(index.doc_freq(h), np.bincount(ids[acts > 0], minlength=L))
    assert index.n_tokens == 29 and index.segment_offsets().tolist() == [0, 17, 29]
    stats = index.stats()
    assert (stats["docs"], stats["live_docs"], stats["tokens"], stats["segments"]) == (3, 3, 29, 2)
    # per token: ids + acts (uint16 + float16) for K slots of each stream, doc row, char bounds
    per_token = len(HOOKS) * K * (2 + 2) + 4 + 2 * 4
    assert index.nbytes() == 29 * per_token and index.bytes_per_token() == per_token
    assert stats["codes_bytes"] == 29 * len(HOOKS) * K * 4 and stats["bytes"] == index.nbytes()
    assert stats["text_chars"] == 29
    assert InvertedIndex(HOOKS, L).bytes_per_token() == 0.0


# -- InvertedIndex: add / delete -----------------------------------------------------------


def test_add_segment_translates_rows_and_sets_segment() -> None:
    rng = np.random.default_rng(3)
    index = InvertedIndex(HOOKS, {h: L for h in HOOKS})
    seg0, docs0, _ = make_batch(rng, ["a", "b"], [4, 3])
    seg1, docs1, _ = make_batch(rng, ["c", "d"], [2, 5])
    assert index.add_segment(seg0, docs0) == 0
    assert index.add_segment(seg1, docs1) == 1
    assert index.segments[1].token_doc.tolist() == [2, 2, 3, 3, 3, 3, 3]
    assert seg1.token_doc.tolist() == [0, 0, 1, 1, 1, 1, 1]  # the caller's segment unchanged
    assert index.segments[1].codes[HOOKS[0]] is seg1.codes[HOOKS[0]]  # codes are shared
    assert index.get("d").segment == 1 and index.row_of("d") == 3
    assert docs1[1].segment == -1  # the caller's records are not modified
    assert len(index) == 4 and "c" in index and "z" not in index
    assert index.live_rows().tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("case", ["dup_batch", "dup_live", "bad_row", "bad_range", "overlap",
                                  "hooks", "latents", "metadata", "char_bounds", "empty",
                                  "bias", "not_segment"])
def test_add_segment_validation_leaves_index_unchanged(case: str) -> None:
    rng = np.random.default_rng(4)
    index = InvertedIndex(HOOKS, L)
    seg, docs, _ = make_batch(rng, ["a", "b"], [4, 3])
    index.add_segment(seg, docs)
    index.delete(["b"])
    before = snapshot(index)

    seg, docs, _ = make_batch(rng, ["c", "d"], [3, 3])
    error: type[Exception] = ValueError
    match = None
    if case == "dup_batch":
        docs[1].doc_id, match = "c", r"duplicate document ids in the batch: \['c'\]"
    elif case == "dup_live":
        docs[1].doc_id, match = "a", r"already in the index: \['a'\]"
    elif case == "bad_row":
        seg = Segment(dict(seg.codes), [0, 0, 0, 1, 1, 2], seg.token_char)
        match = "document row 2, but there are 2 documents"
    elif case == "bad_range":
        docs[1].token_start, docs[1].token_end, match = 4, 6, "token 3: token_doc says"
    elif case == "overlap":
        docs[1].token_start, match = 2, "overlapping"
    elif case == "hooks":
        seg = Segment({HOOKS[0]: seg.codes[HOOKS[0]]}, seg.token_doc, seg.token_char)
        match = r"missing \['layers.18.kv2'\]"
    elif case == "latents":
        seg, docs, _ = make_batch(rng, ["c", "d"], [3, 3], num_latents=L * 2)
        match = "128 latents, index has 64"
    elif case == "metadata":
        docs[1].metadata = {"arr": np.zeros(2)}
        match = r"document 'd': metadata key 'arr'"
    elif case == "char_bounds":
        docs[1].text, docs[1].sentences = "xy", [(0, 2)]
        match = "char end 3 beyond the 2 characters of 'd'"
    elif case == "empty":
        docs, match = [], "no documents"
    elif case == "bias":
        seg, docs, _ = make_batch(rng, ["c", "d"], [3, 3], bias={HOOKS[0]: 2})
        match = "bias columns"
    elif case == "not_segment":
        seg, error, match = dict(seg.codes), TypeError, "expected a Segment"
    with pytest.raises(error, match=match):
        index.add_segment(seg, docs)
    assert snapshot(index) == before


def test_delete_all_or_nothing_and_readd() -> None:
    rng = np.random.default_rng(5)
    index = InvertedIndex(HOOKS, L)
    seg, docs, _ = make_batch(rng, ["a", "b", "c"], [2, 3, 4])
    index.add_segment(seg, docs)
    with pytest.raises(KeyError, match="'zz'"):
        index.delete(["a", "zz"])
    assert len(index) == 3 and "a" in index
    assert index.delete(["a", "a", "b"]) == 2
    assert len(index) == 1 and "a" not in index and index.docs[0].deleted
    with pytest.raises(KeyError):
        index.get("a")
    with pytest.raises(KeyError):
        index.row_of("a")
    with pytest.raises(KeyError, match="'b'"):
        index.delete(["b"])  # already deleted
    assert index.live_token_mask(0).tolist() == [False] * 5 + [True] * 4
    assert index.delete([]) == 0

    seg2, docs2, _ = make_batch(rng, ["a"], [3])
    assert index.add_segment(seg2, docs2) == 1  # a deleted id may come back
    assert index.get("a").segment == 1 and index.row_of("a") == 3
    assert [d.doc_id for d in index.docs] == ["a", "b", "c", "a"]
    assert index.delete("c") == 1  # a single id
    assert len(index) == 1


def test_compact_drops_deleted_and_merges() -> None:
    rng = np.random.default_rng(6)
    index = InvertedIndex(HOOKS, L, bias_columns={HOOKS[1]: 3})
    batches = [make_batch(rng, ["a", "b"], [5, 4], bias={HOOKS[1]: 3}),
               make_batch(rng, ["c", "d"], [6, 3], bias={HOOKS[1]: 3})]
    for seg, docs, _ in batches:
        index.add_segment(seg, docs)
    index.delete(["b", "c"])
    df_before = {h: index.doc_freq(h).copy() for h in HOOKS}
    index.compact()
    assert len(index.segments) == 1 and [d.doc_id for d in index.docs] == ["a", "d"]
    assert index.n_tokens == index.n_live_tokens == 8
    a, d = index.get("a"), index.get("d")
    assert (a.token_start, a.token_end, d.token_start, d.token_end) == (0, 5, 5, 8)
    assert a.segment == d.segment == 0
    seg = index.segments[0]
    assert seg.token_doc.tolist() == [0] * 5 + [1] * 3
    (seg0, _, _), (seg1, _, _) = batches
    np.testing.assert_array_equal(seg.token_char,
                                  np.concatenate([seg0.token_char[:5], seg1.token_char[6:]]))
    np.testing.assert_array_equal(seg.bias[HOOKS[1]], np.concatenate(
        [seg0.bias[HOOKS[1]][:5], seg1.bias[HOOKS[1]][6:]]))
    for h in HOOKS:
        np.testing.assert_array_equal(index.doc_freq(h), df_before[h])
        (ids0, acts0), (ids1, acts1) = batches[0][2][h], batches[1][2][h]
        kept_ids = np.concatenate([ids0[:5], ids1[6:]])
        kept_acts = np.concatenate([acts0[:5], acts1[6:]])
        want = Codes.from_scan(kept_ids, kept_acts, L)
        np.testing.assert_array_equal(seg.codes[h].ids, want.ids)
        np.testing.assert_array_equal(seg.codes[h].acts, want.acts)
        assert_postings_equal(seg.postings[h], Postings.from_codes(kept_ids, kept_acts, L))
    stats = index.stats()
    assert (stats["docs"], stats["deleted_docs"], stats["segments"]) == (2, 0, 1)
    index.compact()  # nothing to do: unchanged
    assert index.segments[0] is seg
    index.delete(["a", "d"])
    index.compact()
    assert len(index) == 0 and index.segments == () and index.docs == ()
    assert index.n_tokens == 0 and index.doc_freq(HOOKS[0]).sum() == 0


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="hookpoint"):
        InvertedIndex(["../evil"], 8)
    with pytest.raises(ValueError, match="at least one"):
        InvertedIndex([], 8)
    with pytest.raises(ValueError, match="duplicate"):
        InvertedIndex(["h", "h"], 8)
    with pytest.raises(ValueError, match="num_latents keys"):
        InvertedIndex(["h"], {"g": 8})
    with pytest.raises(ValueError, match="positive int"):
        InvertedIndex(["h"], 0)
    with pytest.raises(ValueError, match="bias_columns"):
        InvertedIndex(["h"], 8, bias_columns={"g": 2})
    with pytest.raises(ValueError, match="bias_columns"):
        InvertedIndex(["h"], 8, bias_columns={"h": -1})
    assert InvertedIndex(["h"], 8, bias_columns={"h": 0}).bias_columns == {}
