"""The store's files: write_store / read_store round trips, and every damaged file named."""

from __future__ import annotations

import json
import mmap
from pathlib import Path

import numpy as np
import pytest

from s3_retriever.errors import IndexFormatError
from s3_retriever.index import InvertedIndex
from s3_retriever.index.persistence import read_store, write_store
from tests.helpers import HOOKS, L, make_batch, snapshot


def assert_stores_equal(a: InvertedIndex, b: InvertedIndex) -> None:
    assert a.docs == b.docs and a.hookpoints == b.hookpoints
    assert a.num_latents == b.num_latents and a.bias_columns == b.bias_columns
    assert len(a.segments) == len(b.segments)
    for s0, s1 in zip(a.segments, b.segments, strict=True):
        np.testing.assert_array_equal(s0.token_doc, s1.token_doc)
        np.testing.assert_array_equal(s0.token_char, s1.token_char)
        for h in a.hookpoints:
            np.testing.assert_array_equal(s0.codes[h].ids, s1.codes[h].ids)
            np.testing.assert_array_equal(s0.codes[h].acts, s1.codes[h].acts)
            assert s0.codes[h].ids.dtype == s1.codes[h].ids.dtype
        for h in a.bias_columns:
            np.testing.assert_array_equal(s0.bias[h], s1.bias[h])
    for h in a.hookpoints:
        np.testing.assert_array_equal(a.doc_freq(h), b.doc_freq(h))
    assert a.stats() == b.stats()


def is_mapped(a: np.ndarray) -> bool:
    """Whether ``a`` views a memory-mapped file (a plain view of a memmap counts)."""
    while a is not None:
        if isinstance(a, (np.memmap, mmap.mmap)):
            return True
        a = getattr(a, "base", None)
    return False


def build_saved(tmp_path: Path, bias: dict[str, int] | None = None
                ) -> tuple[InvertedIndex, Path]:
    rng = np.random.default_rng(7)
    index = InvertedIndex(HOOKS, {HOOKS[0]: L, HOOKS[1]: L}, bias_columns=bias)
    seg, docs, _ = make_batch(rng, ["a", "b"], [5, 4], bias=bias)
    docs[0].metadata = {"title": "Zoë — 東京 🚀", "nested": {"k": [1, 2.5, None]}}
    docs[0].text = "Ünïcode\u2028text\nwith lines"
    index.add_segment(seg, docs)
    seg, docs, _ = make_batch(rng, ["c"], [6], bias=bias)
    index.add_segment(seg, docs)
    index.delete(["b"])
    folder = tmp_path / "idx"
    folder.mkdir()
    write_store(index, folder)
    return index, folder


def _codes_file(folder: Path, part: str, seg: int = 0, hook: str = HOOKS[0]) -> Path:
    return folder / "codes" / f"seg{seg:06d}" / f"{hook}.{part}.npy"


@pytest.mark.parametrize("mapped", [True, False])
def test_write_read_round_trip(tmp_path: Path, mapped: bool) -> None:
    index, folder = build_saved(tmp_path)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == ["codes/seg000000/layers.17.kv0.acts.npy",
                     "codes/seg000000/layers.17.kv0.ids.npy",
                     "codes/seg000000/layers.18.kv2.acts.npy",
                     "codes/seg000000/layers.18.kv2.ids.npy",
                     "codes/seg000001/layers.17.kv0.acts.npy",
                     "codes/seg000001/layers.17.kv0.ids.npy",
                     "codes/seg000001/layers.18.kv2.acts.npy",
                     "codes/seg000001/layers.18.kv2.ids.npy",
                     "docs.jsonl", "segments.json",
                     "tokens/seg000000.char.npy", "tokens/seg000000.doc.npy",
                     "tokens/seg000001.char.npy", "tokens/seg000001.doc.npy"]
    meta = json.loads((folder / "segments.json").read_text())
    assert meta["streams"] == HOOKS
    assert meta["segments"] == [{"n_tokens": 9, "k": {h: 6 for h in HOOKS}},
                                {"n_tokens": 6, "k": {h: 6 for h in HOOKS}}]
    loaded = read_store(folder, mmap=mapped)
    assert_stores_equal(loaded, index)
    assert len(loaded) == 2 and "b" not in loaded and loaded.docs[1].deleted
    assert loaded.get("a").metadata["title"] == "Zoë — 東京 🚀"
    assert loaded.get("a").text == "Ünïcode\u2028text\nwith lines"
    for seg in loaded.segments:
        for h in HOOKS:
            assert is_mapped(seg.codes[h].ids) == is_mapped(seg.codes[h].acts) == mapped
            assert not seg.codes[h].acts.flags.writeable
    # a loaded index keeps working: add, delete, compact, and round-trips again
    seg, docs, _ = make_batch(np.random.default_rng(8), ["b"], [3])
    loaded.add_segment(seg, docs)
    loaded.delete(["a"])
    loaded.compact()
    assert [d.doc_id for d in loaded.docs] == ["c", "b"]
    again = tmp_path / "again"
    again.mkdir()
    write_store(loaded, again)
    assert_stores_equal(read_store(again), loaded)


def test_round_trip_with_bias_columns(tmp_path: Path) -> None:
    index, folder = build_saved(tmp_path, bias={HOOKS[1]: 3})
    assert _codes_file(folder, "bias", 1, HOOKS[1]).is_file()
    assert not _codes_file(folder, "bias", 1, HOOKS[0]).exists()
    loaded = read_store(folder)
    assert loaded.bias_columns == {HOOKS[1]: 3}
    assert_stores_equal(loaded, index)
    p = _codes_file(folder, "bias", 0, HOOKS[1])
    bias = np.load(p)
    bias[0, 0] = np.inf
    np.save(p, bias)
    with pytest.raises(IndexFormatError, match=r"seg000000/layers.18.kv2.bias.npy: .*non-finite"):
        read_store(folder)
    np.save(p, bias[:, :2])
    with pytest.raises(IndexFormatError, match=r"layers.18.kv2.bias.npy: shape"):
        read_store(folder)


def test_round_trip_of_a_large_dictionary(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    index = InvertedIndex(HOOKS, 70_000)
    seg, docs, _ = make_batch(rng, ["a"], [8], num_latents=70_000)
    index.add_segment(seg, docs)
    write_store(index, tmp_path)
    loaded = read_store(tmp_path)
    assert loaded.segments[0].codes[HOOKS[0]].ids.dtype == np.int32
    assert_stores_equal(loaded, index)


def test_round_trip_of_an_empty_index(tmp_path: Path) -> None:
    write_store(InvertedIndex(HOOKS, 16), tmp_path)
    loaded = read_store(tmp_path)
    assert len(loaded) == 0 and loaded.num_latents == {h: 16 for h in HOOKS}
    assert loaded.idf(HOOKS[0]).tolist() == [1.0] * 16


def test_read_detects_missing_file(tmp_path: Path) -> None:
    _, folder = build_saved(tmp_path)
    _codes_file(folder, "acts", 1).unlink()
    with pytest.raises(IndexFormatError, match=r"seg000001/layers.17.kv0.acts.npy: missing"):
        read_store(folder)


def test_read_detects_truncated_npy(tmp_path: Path) -> None:
    _, folder = build_saved(tmp_path)
    p = _codes_file(folder, "ids")
    p.write_bytes(p.read_bytes()[:-8])
    with pytest.raises(IndexFormatError, match=r"layers.17.kv0.ids.npy: truncated"):
        read_store(folder)


def test_read_detects_wrong_dtype_and_shape(tmp_path: Path) -> None:
    _, folder = build_saved(tmp_path)
    p = _codes_file(folder, "acts")
    acts = np.load(p)
    np.save(p, acts.astype(np.float32))
    with pytest.raises(IndexFormatError, match=r"acts.npy: dtype float32, expected float16"):
        read_store(folder)
    np.save(p, acts[:, :4])  # k disagrees with segments.json
    with pytest.raises(IndexFormatError, match=r"acts.npy: shape \(9, 4\), expected \(9, 6\)"):
        read_store(folder)
    np.save(p, acts)
    ids = _codes_file(folder, "ids")
    np.save(ids, np.load(ids).astype(np.int32))  # 64 latents are stored as uint16
    with pytest.raises(IndexFormatError, match=r"ids.npy: dtype int32, expected uint16"):
        read_store(folder)


@pytest.mark.parametrize("damage,part,match", [
    ("id_range", "ids", r"feature ids outside \[0, 64\)"),
    ("unsorted", "acts", "not sorted by activation"),
    ("negative", "acts", "finite and >= 0"),
    ("slot", "ids", "an empty slot"),
    ("repeat", "ids", "a feature repeats"),
])
def test_read_checks_the_codes_content(tmp_path: Path, damage: str, part: str,
                                       match: str) -> None:
    index, folder = build_saved(tmp_path)
    codes = index.segments[1].codes[HOOKS[0]]
    ids, acts = codes.ids.copy(), codes.acts.copy()
    row = int(np.flatnonzero((acts[:, :2] > 0).all(axis=1))[0])  # two live slots
    empty = np.argwhere(acts == 0)
    if damage == "id_range":
        ids[row, 0] = 64
    elif damage == "unsorted":
        acts[row, :2] = acts[row, 1::-1] if acts[row, 0] != acts[row, 1] else (1, 2)
    elif damage == "negative":
        acts[row, 0] = -1
    elif damage == "slot":
        ids[tuple(empty[0])] = 5
    elif damage == "repeat":
        ids[row, 1] = ids[row, 0]
    np.save(_codes_file(folder, "ids", 1), ids)
    np.save(_codes_file(folder, "acts", 1), acts)
    with pytest.raises(IndexFormatError, match=rf"seg000001/layers.17.kv0.{part}.npy: .*{match}"):
        read_store(folder)
    if damage != "id_range":  # check=False skips the O(n k) content checks, nothing else
        assert len(read_store(folder, check=False)) == 2


def test_read_detects_bad_token_tables(tmp_path: Path) -> None:
    _, folder = build_saved(tmp_path)
    doc = folder / "tokens" / "seg000000.doc.npy"
    token_doc = np.load(doc)
    token_doc[0] = 2  # row of document 'c', which lives in segment 1
    np.save(doc, token_doc)
    with pytest.raises(IndexFormatError, match=r"seg000000.doc.npy disagrees with docs.jsonl"):
        read_store(folder)
    token_doc[0] = 99
    np.save(doc, token_doc)
    with pytest.raises(IndexFormatError, match=r"seg000000.doc.npy: refers to doc-table row 99"):
        read_store(folder)
    token_doc[0] = 0
    np.save(doc, token_doc)
    char = folder / "tokens" / "seg000000.char.npy"
    token_char = np.load(char)
    token_char[0] = (3, 1)
    np.save(char, token_char)
    with pytest.raises(IndexFormatError, match=r"seg000000.char.npy: bounds"):
        read_store(folder)


def test_read_detects_bad_docs_and_meta(tmp_path: Path) -> None:
    index, folder = build_saved(tmp_path)
    docs = folder / "docs.jsonl"
    lines = docs.read_text(encoding="utf-8").split("\n")  # not splitlines(): U+2028 in text
    original = docs.read_bytes()
    docs.write_bytes(original.replace(b'"token_end":6', b'"token_end":5'))
    with pytest.raises(IndexFormatError, match=r"seg000001.doc.npy disagrees with docs.jsonl"):
        read_store(folder)
    row = json.loads(lines[1])
    row["segment"] = 7
    docs.write_text("\n".join([lines[0], json.dumps(row), lines[2]]) + "\n", encoding="utf-8")
    with pytest.raises(IndexFormatError, match=r"docs.jsonl line 2: segment 7 does not exist"):
        read_store(folder)
    row = json.loads(lines[1])
    row["deleted"], row["doc_id"] = False, "a"  # two live documents named 'a'
    docs.write_text("\n".join([lines[0], json.dumps(row), lines[2]]) + "\n", encoding="utf-8")
    with pytest.raises(IndexFormatError, match=r"docs.jsonl line 2: live document id 'a'"):
        read_store(folder)
    docs.write_bytes(original[: len(original) // 2])
    with pytest.raises(IndexFormatError, match=r"docs.jsonl line \d+: not valid JSON"):
        read_store(folder)
    docs.write_bytes(original)
    assert snapshot(read_store(folder)) == snapshot(index)

    seg_file = folder / "segments.json"
    meta = json.loads(seg_file.read_text())
    for key, value, match in (("layout_version", 1, "not a layout 2 segments file"),
                              ("streams", ["../x"], "bad hookpoint name"),
                              ("segments", {}, "'segments' must be a list"),
                              ("segments", [{"n_tokens": 9}], "segment 0: bad n_tokens or k")):
        seg_file.write_text(json.dumps({**meta, key: value}))
        with pytest.raises(IndexFormatError, match=match):
            read_store(folder)
    seg_file.unlink()
    with pytest.raises(IndexFormatError, match="segments.json: missing"):
        read_store(folder)
    with pytest.raises(IndexFormatError, match="missing"):
        read_store(tmp_path / "absent")
