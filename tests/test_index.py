"""Tests for s3_retriever.index: postings, segments, the doc table, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from s3_retriever.index import (
    DocRecord,
    InvertedIndex,
    Postings,
    Segment,
    index_layout_version,
)
from s3_retriever.storage import IndexFormatError

HOOKS = ["layers.17.kv0", "layers.18.kv2"]
L = 64
K = 6


def random_codes(rng: np.random.Generator, n: int, k: int = K, num_latents: int = L):
    """Top-k-like codes: distinct ids per row, some activations <= 0."""
    ids = np.argsort(rng.random((n, num_latents)), axis=1)[:, :k]
    acts = rng.random((n, k)).astype(np.float32) * 4
    acts[rng.random((n, k)) < 0.2] = 0.0
    acts[rng.random((n, k)) < 0.05] = -1.0
    return ids, acts


def make_batch(rng: np.random.Generator, names: list[str], lens: list[int], *,
               hooks: list[str] = HOOKS, num_latents: int = L):
    """A segment with one document per name, ``lens[i]`` tokens each, and its codes."""
    n = sum(lens)
    codes = {h: random_codes(rng, n, num_latents=num_latents) for h in hooks}
    seg = Segment(
        {h: Postings.from_codes(*codes[h], num_latents) for h in hooks},
        token_doc=np.repeat(np.arange(len(lens)), lens),
        token_char=np.stack([np.concatenate([np.arange(m) for m in lens]),
                             np.concatenate([np.arange(m) + 1 for m in lens])], axis=1),
    )
    docs, start = [], 0
    for name, m in zip(names, lens, strict=True):
        docs.append(DocRecord(name, "x" * m, {"name": name}, token_start=start,
                              token_end=start + m, sentences=[(0, m)]))
        start += m
    return seg, docs, codes


def snapshot(index: InvertedIndex):
    return (index.stats(), [d.to_dict() for d in index.docs], len(index.segments),
            sorted(d.doc_id for d in index.docs if d.doc_id in index))


def assert_postings_equal(a: Postings, b: Postings) -> None:
    assert a.n_tokens == b.n_tokens
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.acts, b.acts)


# -- Postings ------------------------------------------------------------------------------


def test_from_codes_gather_to_codes_round_trip() -> None:
    rng = np.random.default_rng(0)
    n = 300
    ids, acts = random_codes(rng, n)
    p = Postings.from_codes(ids, acts, L)
    acts16 = acts.astype(np.float16)
    kept = acts16 > 0
    assert p.nnz == int(kept.sum()) and p.n_tokens == n and p.num_latents == L
    assert p.indptr.dtype == np.int64 and p.positions.dtype == np.uint32
    assert p.acts.dtype == np.float16 and np.all(p.acts > 0)
    np.testing.assert_array_equal(p.doc_freq(), np.bincount(ids[kept], minlength=L))
    for f in range(L):  # positions strictly ascending within each feature
        assert np.all(np.diff(p.positions[p.indptr[f]:p.indptr[f + 1]].astype(int)) > 0)

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

    # forward view: kept features of each row by activation desc, zero padded
    fwd_ids, fwd_acts = p.to_codes(K)
    assert fwd_ids.shape == (n, K) and fwd_ids.dtype == np.int64 and fwd_acts.dtype == np.float32
    for i in range(n):
        row = sorted((-float(acts16[i, j]), int(ids[i, j])) for j in range(K) if kept[i, j])
        m = len(row)
        assert fwd_ids[i, :m].tolist() == [f for _, f in row]
        assert fwd_acts[i, :m].tolist() == [-a for a, _ in row]
        assert not fwd_ids[i, m:].any() and not fwd_acts[i, m:].any()
    assert p.to_codes(K)[0] is fwd_ids  # cached
    with pytest.raises(ValueError):
        fwd_ids[0, 0] = 1  # the cache is read-only
    # a smaller k keeps the top activations
    np.testing.assert_array_equal(p.to_codes(2)[0], fwd_ids[:, :2])
    # and encoding the forward view again gives the same postings
    assert_postings_equal(Postings.from_codes(fwd_ids, fwd_acts, L), p)


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
    # a repeated id with act 0 is padding, not an error; huge acts clip to the float16 max
    p = Postings.from_codes(np.array([[0, 0, 5]]), np.array([[0.0, 0.0, 1e6]]), 8)
    assert p.nnz == 1 and np.isfinite(p.acts).all() and p.acts[0] > 6e4


def test_postings_constructor_validates() -> None:
    good = Postings.from_codes(np.array([[0], [1]]), np.ones((2, 1)), 2)
    Postings(good.indptr, good.positions, good.acts, 2)
    with pytest.raises(ValueError, match="indptr"):
        Postings(np.array([0, 1, 3]), good.positions, good.acts, 2)
    with pytest.raises(ValueError, match="positions: position 1 >= n_tokens=1"):
        Postings(good.indptr, good.positions, good.acts, 1)
    with pytest.raises(ValueError, match="acts"):
        Postings(good.indptr, good.positions, np.array([1.0, -1.0]), 2)
    with pytest.raises(ValueError, match="ascending"):
        Postings(np.array([0, 2, 2]), np.array([1, 0]), np.ones(2), 2)


def test_filter_and_concat_match_from_codes() -> None:
    rng = np.random.default_rng(1)
    ids, acts = random_codes(rng, 120)
    whole = Postings.from_codes(ids, acts, L)
    parts = [Postings.from_codes(ids[a:b], acts[a:b], L) for a, b in [(0, 50), (50, 51), (51, 120)]]
    assert_postings_equal(Postings.concat(parts), whole)
    keep = rng.random(120) < 0.6
    assert_postings_equal(whole.filter_tokens(keep), Postings.from_codes(ids[keep], acts[keep], L))
    with pytest.raises(ValueError, match="num_latents"):
        Postings.concat([whole, Postings.from_codes(ids, acts, L + 1)])


# -- DocRecord / Segment -------------------------------------------------------------------


def test_docrecord_round_trip_and_validation() -> None:
    d = DocRecord("ü-1", "Ça va? 東京.", {"src": "wiki", "tags": ["a", "é"], "n": 3}, 2, 4, 9,
                  [(0, 6), (7, 10)])
    assert DocRecord.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    with pytest.raises(ValueError, match=r"document 'bad': metadata key 'when'"):
        DocRecord("bad", "t", {"when": object()}).to_dict()
    with pytest.raises(ValueError, match=r"document 'bad': metadata key 'x'"):
        DocRecord("bad", "t", {"x": float("nan")}).to_dict()
    with pytest.raises(ValueError, match="sentence bounds"):
        DocRecord("s", "ab", sentences=[(0, 5)]).validate()
    with pytest.raises(ValueError, match="unknown keys"):
        DocRecord.from_dict({**d.to_dict(), "extra": 1})


def test_segment_is_immutable_and_validated() -> None:
    p = Postings.from_codes(np.array([[0], [1]]), np.ones((2, 1)), 2)
    token_doc = np.array([0, 0])
    seg = Segment({"h": p}, token_doc, [[0, 1], [1, 2]])
    token_doc[0] = 5  # the caller's array is copied
    assert seg.token_doc.tolist() == [0, 0] and seg.token_doc.dtype == np.int32
    with pytest.raises(ValueError):
        seg.token_doc[0] = 1
    with pytest.raises(TypeError):
        seg.postings["g"] = p  # type: ignore[index]
    with pytest.raises(ValueError, match="postings for 2 tokens, token_doc has 3"):
        Segment({"h": p}, [0, 0, 0], [[0, 1]] * 3)
    with pytest.raises(ValueError, match="token_char"):
        Segment({"h": p}, [0, 0], [[0, 1]])
    with pytest.raises(ValueError, match="token_char"):
        Segment({"h": p}, [0, 0], [[0, 1], [2, 1]])


# -- InvertedIndex: statistics -------------------------------------------------------------


def small_index() -> InvertedIndex:
    # 5 tokens in 2 docs, 4 latents, top-2 codes
    ids = np.array([[0, 1], [0, 2], [0, 1], [3, 0], [1, 2]])
    acts = np.array([[1, 1], [1, 1], [1, 0], [1, 1], [1, 1]], dtype=np.float32)
    seg = Segment({"h": Postings.from_codes(ids, acts, 4)}, [0, 0, 0, 1, 1],
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
    with pytest.raises(ValueError):
        index.pruned("h", -0.1)
    with pytest.raises(KeyError, match="unknown hookpoint"):
        index.doc_freq("nope")

    index.delete(["b"])  # df and N are exact over live tokens
    np.testing.assert_array_equal(index.doc_freq("h"), [3, 1, 1, 0])
    assert index.n_live_tokens == 3 and index.n_tokens == 5
    np.testing.assert_allclose(index.idf("h"), np.log(4 / np.array([4, 2, 2, 1])) + 1, rtol=1e-6)
    assert index.live_token_mask(0).tolist() == [True, True, True, False, False]


def test_doc_freq_sums_segments() -> None:
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
    assert index.stats()["nnz"][HOOKS[0]] == int(index.doc_freq(HOOKS[0]).sum())
    assert index.bytes_per_token() > 0


# -- InvertedIndex: add / delete -----------------------------------------------------------


def test_add_segment_translates_rows_and_sets_segment() -> None:
    rng = np.random.default_rng(3)
    index = InvertedIndex(HOOKS, {h: L for h in HOOKS})
    seg0, docs0, _ = make_batch(rng, ["a", "b"], [4, 3])
    seg1, docs1, _ = make_batch(rng, ["c", "d"], [2, 5])
    assert index.add_segment(seg0, docs0) == 0
    assert index.add_segment(seg1, docs1) == 1
    assert index.segments[1].token_doc.tolist() == [2, 2, 3, 3, 3, 3, 3]
    assert index.get("d").segment == 1 and index.row_of("d") == 3
    assert docs1[1].segment == -1  # the caller's records are not modified
    assert len(index) == 4 and "c" in index and "z" not in index
    assert index.live_rows().tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("case", ["dup_batch", "dup_live", "bad_row", "bad_range", "overlap",
                                  "hooks", "latents", "metadata", "char_bounds", "empty"])
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
        seg = Segment(dict(seg.postings), [0, 0, 0, 1, 1, 2], seg.token_char)
        match = "document row 2, but there are 2 documents"
    elif case == "bad_range":
        docs[1].token_start, docs[1].token_end, match = 4, 6, "token 3: token_doc says"
    elif case == "overlap":
        docs[1].token_start, match = 2, "overlapping"
    elif case == "hooks":
        seg = Segment({HOOKS[0]: seg.postings[HOOKS[0]]}, seg.token_doc, seg.token_char)
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
    with pytest.raises(KeyError, match="'b'"):
        index.delete(["b"])  # already deleted
    assert index.live_token_mask(0).tolist() == [False] * 5 + [True] * 4

    seg2, docs2, _ = make_batch(rng, ["a"], [3])
    assert index.add_segment(seg2, docs2) == 1  # a deleted id may come back
    assert index.get("a").segment == 1 and index.row_of("a") == 3
    assert [d.doc_id for d in index.docs] == ["a", "b", "c", "a"]
    assert index.delete("c") == 1  # a single id
    assert len(index) == 1


def test_compact_drops_deleted_and_merges() -> None:
    rng = np.random.default_rng(6)
    index = InvertedIndex(HOOKS, L)
    batches = [make_batch(rng, ["a", "b"], [5, 4]), make_batch(rng, ["c", "d"], [6, 3])]
    for seg, docs, _ in batches:
        index.add_segment(seg, docs)
    index.delete(["b", "c"])
    df_before = {h: index.doc_freq(h).copy() for h in HOOKS}
    index.compact()
    assert len(index.segments) == 1 and [d.doc_id for d in index.docs] == ["a", "d"]
    assert index.n_tokens == index.n_live_tokens == 8
    a, d = index.get("a"), index.get("d")
    assert (a.token_start, a.token_end, d.token_start, d.token_end) == (0, 5, 5, 8)
    assert index.segments[0].token_doc.tolist() == [0] * 5 + [1] * 3
    for h in HOOKS:
        np.testing.assert_array_equal(index.doc_freq(h), df_before[h])
        (ids0, acts0), (ids1, acts1) = batches[0][2][h], batches[1][2][h]
        want = Postings.from_codes(np.concatenate([ids0[:5], ids1[6:]]),
                                   np.concatenate([acts0[:5], acts1[6:]]), L)
        assert_postings_equal(index.segments[0].postings[h], want)
    index.delete(["a", "d"])
    index.compact()
    assert len(index) == 0 and index.segments == () and index.docs == ()


# -- save / load ---------------------------------------------------------------------------


def build_saved(tmp_path: Path) -> tuple[InvertedIndex, Path]:
    rng = np.random.default_rng(7)
    index = InvertedIndex(HOOKS, {HOOKS[0]: L, HOOKS[1]: L})
    seg, docs, _ = make_batch(rng, ["a", "b"], [5, 4])
    docs[0].metadata = {"title": "Zoë — 東京 🚀", "nested": {"k": [1, 2.5, None]}}
    docs[0].text = "Ünïcode\u2028text\nwith lines"
    index.add_segment(seg, docs)
    seg, docs, _ = make_batch(rng, ["c"], [6])
    index.add_segment(seg, docs)
    index.delete(["b"])
    folder = tmp_path / "idx"
    folder.mkdir()
    index.save(folder)
    return index, folder


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(tmp_path: Path, mmap: bool) -> None:
    index, folder = build_saved(tmp_path)
    assert (folder / "postings" / "seg000001" / f"{HOOKS[1]}.acts.npy").is_file()
    assert (folder / "tokens" / "seg000000.char.npy").is_file()
    assert not (folder / "manifest.json").exists()
    meta = json.loads((folder / "segments.json").read_text())
    assert meta["layout_version"] == index_layout_version == 1
    loaded = InvertedIndex.load(folder, mmap=mmap)
    assert loaded.docs == index.docs and len(loaded) == 2 and "b" not in loaded
    assert loaded.get("a").metadata["title"] == "Zoë — 東京 🚀"
    assert loaded.hookpoints == index.hookpoints and loaded.num_latents == index.num_latents
    for s0, s1 in zip(index.segments, loaded.segments, strict=True):
        np.testing.assert_array_equal(s0.token_doc, s1.token_doc)
        np.testing.assert_array_equal(s0.token_char, s1.token_char)
        for h in HOOKS:
            assert_postings_equal(s0.postings[h], s1.postings[h])
            assert isinstance(s1.postings[h].positions, np.memmap) == mmap
    for h in HOOKS:
        np.testing.assert_array_equal(loaded.doc_freq(h), index.doc_freq(h))
    assert loaded.stats() == index.stats()
    # a loaded index keeps working: add, delete, compact
    seg, docs, _ = make_batch(np.random.default_rng(8), ["b"], [3])
    loaded.add_segment(seg, docs)
    loaded.delete(["a"])
    loaded.compact()
    assert [d.doc_id for d in loaded.docs] == ["c", "b"]


def test_save_load_empty_index(tmp_path: Path) -> None:
    InvertedIndex(HOOKS, 16).save(tmp_path)
    loaded = InvertedIndex.load(tmp_path)
    assert len(loaded) == 0 and loaded.num_latents == {h: 16 for h in HOOKS}
    assert loaded.idf(HOOKS[0]).tolist() == [1.0] * 16


def _posting_file(folder: Path, part: str, seg: int = 0) -> Path:
    return folder / "postings" / f"seg{seg:06d}" / f"{HOOKS[0]}.{part}.npy"


def test_load_detects_missing_file(tmp_path: Path) -> None:
    _, folder = build_saved(tmp_path)
    _posting_file(folder, "acts", 1).unlink()
    with pytest.raises(IndexFormatError, match=r"seg000001/layers.17.kv0.acts.npy: missing"):
        InvertedIndex.load(folder)


def test_load_detects_truncated_npy(tmp_path: Path) -> None:
    _, folder = build_saved(tmp_path)
    p = _posting_file(folder, "positions")
    p.write_bytes(p.read_bytes()[:-8])
    with pytest.raises(IndexFormatError, match=r"layers.17.kv0.positions.npy: truncated"):
        InvertedIndex.load(folder)


def test_load_detects_wrong_dtype(tmp_path: Path) -> None:
    _, folder = build_saved(tmp_path)
    p = _posting_file(folder, "acts")
    np.save(p, np.load(p).astype(np.float32))
    with pytest.raises(IndexFormatError, match=r"acts.npy: dtype float32, expected float16"):
        InvertedIndex.load(folder)


def test_load_detects_inconsistent_indptr(tmp_path: Path) -> None:
    _, folder = build_saved(tmp_path)
    p = _posting_file(folder, "indptr")
    indptr = np.load(p)
    indptr[-1] += 1
    np.save(p, indptr)
    with pytest.raises(IndexFormatError, match=r"indptr.npy: must run from 0 to nnz"):
        InvertedIndex.load(folder)
    indptr[-1] -= 1
    indptr[3], indptr[4] = indptr[4] + 1, indptr[3]  # out of order
    np.save(p, indptr)
    with pytest.raises(IndexFormatError, match=r"indptr.npy: not non-decreasing"):
        InvertedIndex.load(folder)
    np.save(p, indptr[:-1])
    with pytest.raises(IndexFormatError, match=r"indptr.npy: shape"):
        InvertedIndex.load(folder)


def test_load_detects_bad_positions_and_token_tables(tmp_path: Path) -> None:
    _, folder = build_saved(tmp_path)
    p = _posting_file(folder, "positions")
    original = np.load(p)
    positions = original.copy()
    positions[0] = 10_000
    np.save(p, positions)
    with pytest.raises(IndexFormatError, match=r"positions.npy: position 10000 >= n_tokens=9"):
        InvertedIndex.load(folder)
    np.save(p, original)
    doc = folder / "tokens" / "seg000000.doc.npy"
    token_doc = np.load(doc)
    token_doc[0] = 2  # row of document 'c', which lives in segment 1
    np.save(doc, token_doc)
    with pytest.raises(IndexFormatError, match=r"seg000000.doc.npy disagrees with docs.jsonl"):
        InvertedIndex.load(folder)
    token_doc[0] = 99
    np.save(doc, token_doc)
    with pytest.raises(IndexFormatError, match=r"seg000000.doc.npy: refers to doc-table row 99"):
        InvertedIndex.load(folder)


def test_load_detects_bad_docs_and_meta(tmp_path: Path) -> None:
    _, folder = build_saved(tmp_path)
    docs = folder / "docs.jsonl"
    lines = docs.read_text(encoding="utf-8").split("\n")  # not splitlines(): U+2028 in text
    original = docs.read_bytes()
    docs.write_bytes(original.replace(b'"token_end":6', b'"token_end":5'))
    with pytest.raises(IndexFormatError, match=r"seg000001.doc.npy disagrees with docs.jsonl"):
        InvertedIndex.load(folder)
    row = json.loads(lines[1])
    row["segment"] = 7
    docs.write_text("\n".join([lines[0], json.dumps(row), lines[2]]) + "\n", encoding="utf-8")
    with pytest.raises(IndexFormatError, match=r"docs.jsonl line 2: segment 7 does not exist"):
        InvertedIndex.load(folder)
    docs.write_bytes(original[: len(original) // 2])
    with pytest.raises(IndexFormatError, match=r"docs.jsonl line \d+: not valid JSON"):
        InvertedIndex.load(folder)
    docs.write_bytes(original)
    meta = json.loads((folder / "segments.json").read_text())
    meta["layout_version"] = 2
    (folder / "segments.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match="index layout 2, this version reads 1"):
        InvertedIndex.load(folder)
    with pytest.raises(FileNotFoundError):
        InvertedIndex.load(tmp_path / "absent")


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="hookpoint"):
        InvertedIndex(["../evil"], 8)
    with pytest.raises(ValueError, match="duplicate"):
        InvertedIndex(["h", "h"], 8)
    with pytest.raises(ValueError, match="num_latents keys"):
        InvertedIndex(["h"], {"g": 8})
    with pytest.raises(ValueError, match="positive int"):
        InvertedIndex(["h"], 0)


@pytest.mark.parametrize("num_latents", [L, 70_000])
def test_compact_forward_view_holds_the_same_codes(num_latents: int) -> None:
    rng = np.random.default_rng(11)
    ids, acts = random_codes(rng, 300, num_latents=L)
    ids = ids * (num_latents // L)  # spread over the dictionary (ids >= 65536 when large)
    acts[:, 1] = acts[:, 0]  # equal activations: ties go to the lower feature id
    p = Postings.from_codes(ids, acts, num_latents)
    full_ids, full_acts = p.to_codes(K)
    small_ids, small_acts = p.to_codes(K, compact=True)
    assert small_ids.dtype == (np.uint16 if num_latents <= 65536 else np.int32)
    assert small_acts.dtype == np.float16
    np.testing.assert_array_equal(small_ids.astype(np.int64), full_ids)
    np.testing.assert_array_equal(small_acts.astype(np.float32), full_acts)
    assert p.to_codes(K, compact=True)[0] is small_ids  # cached apart from the full view
    assert_postings_equal(Postings.from_codes(small_ids, small_acts, num_latents), p)


def test_drop_inverted_keeps_only_the_forward_view(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    index = InvertedIndex(HOOKS, L)
    seg, docs, _ = make_batch(rng, ["a", "b"], [40, 25])
    index.add_segment(seg, docs)
    p = index.segments[0].postings[HOOKS[0]]
    want = (p.indptr.copy(), p.positions.copy(), p.acts.copy(), p.nbytes, p.nnz)
    df = index.doc_freq(HOOKS[0]).copy()
    assert not p.drop_inverted(K - 3)  # that view would lose entries: nothing dropped
    assert p.inverted_in_memory
    assert p.drop_inverted(K) and not p.inverted_in_memory
    assert (p.nbytes, p.nnz, p.num_latents) == want[3:] + (L,)  # sizes need no rebuild
    assert not p.inverted_in_memory
    np.testing.assert_array_equal(p.indptr, want[0])  # rebuilt on first read, identical
    assert p.inverted_in_memory
    np.testing.assert_array_equal(p.positions, want[1])
    np.testing.assert_array_equal(p.acts, want[2])
    for h in HOOKS:  # everything still works with dropped postings, saving included
        index.segments[0].postings[h].drop_inverted(K)
    index._df_cache.clear()
    np.testing.assert_array_equal(index.doc_freq(HOOKS[0]), df)
    for h in HOOKS:
        index.segments[0].postings[h].drop_inverted(K)
    index.save(tmp_path)
    loaded = InvertedIndex.load(tmp_path)
    assert_postings_equal(loaded.segments[0].postings[HOOKS[0]], p)
    q = loaded.segments[0].postings[HOOKS[1]]
    assert q.drop_inverted(K) and q.to_codes(K, compact=True)[0].shape == (65, K)
    index.delete(["a"])
    index.compact()
    assert index.n_tokens == 25
