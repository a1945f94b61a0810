"""Tests for s3_retriever.storage: atomic folders, JSON, npy and manifests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from s3_retriever.storage import (
    IndexFormatError,
    atomic_folder,
    load_npy,
    read_json,
    read_jsonl,
    read_manifest,
    save_npy,
    sha256_file,
    write_json,
    write_jsonl,
    write_manifest,
)


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_folder_creates_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "idx"
    with atomic_folder(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".idx.tmp-")
        assert not target.exists()
        (tmp / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"

    with atomic_folder(target) as tmp:
        (tmp / "b.txt").write_text("two")
        # the old folder is intact while the new one is being written
        assert (target / "a.txt").read_text() == "one"
    assert _entries(target) == ["b.txt"]
    assert _entries(tmp_path) == ["idx"]  # no temp or old folder left behind


def test_atomic_folder_leaves_target_intact_on_error(tmp_path: Path) -> None:
    target = tmp_path / "idx"
    target.mkdir()
    (target / "a.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_folder(target) as tmp:
            (tmp / "a.txt").write_text("half-written")
            raise RuntimeError("boom")
    assert (target / "a.txt").read_text() == "old"
    assert _entries(tmp_path) == ["idx"]


def test_atomic_folder_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        with atomic_folder(tmp_path / "f"):
            pass
    assert (tmp_path / "f").read_text() == "x"


def test_json_round_trip_unicode(tmp_path: Path) -> None:
    obj = {"name": "Zoë 東京 🚀", "line\u2028sep": [1, 2.5, None, True]}
    write_json(tmp_path / "a.json", obj)
    assert read_json(tmp_path / "a.json") == obj
    rows = [{"t": "a\nb"}, {"t": "c\u2028d"}, [1, 2], "s"]
    write_jsonl(tmp_path / "r.jsonl", rows)
    assert read_jsonl(tmp_path / "r.jsonl") == rows
    assert (tmp_path / "r.jsonl").read_bytes().count(b"\n") == len(rows)


def test_write_json_refuses_nan(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_json(tmp_path / "a.json", {"x": float("nan")})


def test_read_json_errors_name_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "m.json"
    p.write_text('{\n "a": 1,\n "b": \n}')
    with pytest.raises(IndexFormatError, match=r"m\.json line 4: not valid JSON"):
        read_json(p)
    with pytest.raises(IndexFormatError, match=r"missing"):
        read_json(tmp_path / "nope.json")


def test_read_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    p = tmp_path / "docs.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": \n')
    with pytest.raises(IndexFormatError, match=r"docs\.jsonl line 3: not valid JSON"):
        read_jsonl(p)
    p.write_bytes(b'{"a": 1}\n\n{"a": 2}\n')
    with pytest.raises(IndexFormatError, match=r"line 2: blank line"):
        read_jsonl(p)
    p.write_bytes(b'{"a": 1}\n"\xff"\n')
    with pytest.raises(IndexFormatError, match=r"line 2: not valid UTF-8"):
        read_jsonl(p)


def test_npy_round_trip_and_checks(tmp_path: Path) -> None:
    p = tmp_path / "a.npy"
    a = np.arange(12, dtype=np.int32).reshape(6, 2)
    save_npy(p, a)
    for mmap in (True, False):
        b = load_npy(p, mmap=mmap, dtype=np.int32, ndim=2, shape=(None, 2))
        np.testing.assert_array_equal(a, b)
    assert isinstance(load_npy(p), np.memmap)
    with pytest.raises(IndexFormatError, match="dtype int32, expected int64"):
        load_npy(p, dtype=np.int64)
    with pytest.raises(IndexFormatError, match="2 dimensions, expected 1"):
        load_npy(p, ndim=1)
    with pytest.raises(IndexFormatError, match=r"shape \(6, 2\), expected \(5, \*\)"):
        load_npy(p, shape=(5, None))
    with pytest.raises(IndexFormatError, match="missing"):
        load_npy(tmp_path / "none.npy")
    empty = tmp_path / "e.npy"
    save_npy(empty, np.zeros(0, dtype=np.uint32))
    assert load_npy(empty, dtype=np.uint32).shape == (0,)


def test_npy_truncated_trailing_garbage_and_pickle(tmp_path: Path) -> None:
    p = tmp_path / "a.npy"
    save_npy(p, np.arange(100, dtype=np.int64))
    data = p.read_bytes()
    p.write_bytes(data[:-3])
    for mmap in (True, False):
        with pytest.raises(IndexFormatError, match="truncated"):
            load_npy(p, mmap=mmap)
    p.write_bytes(data + b"xx")
    with pytest.raises(IndexFormatError, match="trailing bytes"):
        load_npy(p)
    p.write_bytes(b"not an npy file at all")
    with pytest.raises(IndexFormatError, match="not a valid .npy"):
        load_npy(p)
    obj = np.array([{"a": 1}, None], dtype=object)
    with open(p, "wb") as fh:
        np.save(fh, obj, allow_pickle=True)
    with pytest.raises(IndexFormatError, match="object array"):
        load_npy(p)
    with pytest.raises(ValueError, match="object array"):
        save_npy(tmp_path / "o.npy", obj)


def _make_folder(folder: Path) -> dict:
    (folder / "postings").mkdir(parents=True)
    save_npy(folder / "postings" / "seg000000.npy", np.arange(50, dtype=np.uint32))
    write_json(folder / "segments.json", {"n": 1})
    return write_manifest(folder, {"format_version": 1, "model": "m"})


def test_manifest_round_trip(tmp_path: Path) -> None:
    written = _make_folder(tmp_path)
    assert set(written["files"]) == {"postings/seg000000.npy", "segments.json"}
    entry = written["files"]["postings/seg000000.npy"]
    assert entry["sha256"] == sha256_file(tmp_path / "postings" / "seg000000.npy")
    assert entry["bytes"] == (tmp_path / "postings" / "seg000000.npy").stat().st_size
    read = read_manifest(tmp_path, format_version=1)
    assert read == written and read["model"] == "m"
    (tmp_path / "notes.txt").write_text("unlisted files are fine")
    read_manifest(tmp_path)


def test_manifest_detects_edited_byte(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    p = tmp_path / "postings" / "seg000000.npy"
    data = bytearray(p.read_bytes())
    data[-1] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError,
                       match=r"postings/seg000000\.npy: sha256 mismatch \(edited or truncated\?\)"):
        read_manifest(tmp_path)
    read_manifest(tmp_path, verify=False)  # the manifest itself is fine


def test_manifest_detects_truncation_and_missing_file(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    p = tmp_path / "postings" / "seg000000.npy"
    p.write_bytes(p.read_bytes()[:-4])
    with pytest.raises(IndexFormatError, match=r"postings/seg000000\.npy: .* bytes, manifest says"):
        read_manifest(tmp_path)
    p.unlink()
    with pytest.raises(IndexFormatError, match=r"postings/seg000000\.npy: missing"):
        read_manifest(tmp_path)


def test_manifest_version_and_corruption(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    with pytest.raises(IndexFormatError, match="index format 1, this version reads 2"):
        read_manifest(tmp_path, format_version=2)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["files"]["../../etc/passwd"] = {"sha256": "0" * 64, "bytes": 1}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="unsafe file path"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{ truncated")
    with pytest.raises(IndexFormatError, match="manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(IndexFormatError, match="manifest.json: missing"):
        read_manifest(tmp_path)
    with pytest.raises(FileNotFoundError, match="index folder not found"):
        read_manifest(tmp_path / "absent")


def test_manifest_write_inside_atomic_folder(tmp_path: Path) -> None:
    target = tmp_path / "idx"
    with atomic_folder(target) as tmp:
        save_npy(tmp / "a.npy", np.ones(3))
        write_manifest(tmp, {"format_version": 1})
    assert set(read_manifest(target, format_version=1)["files"]) == {"a.npy"}
