"""s3_retriever.storage: atomic files, committed folders, folder rules, JSON, npy, seals and
manifests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from s3_retriever.errors import IndexFormatError, IndexNotFoundError, OutputExistsError
from s3_retriever.storage import (
    check_folder_output,
    check_output_file,
    check_target,
    commit,
    folder_state,
    load_npy,
    open_committed,
    read_json,
    read_jsonl,
    read_manifest,
    recover_folder,
    replace_folder,
    save_npy,
    seal,
    sha256_file,
    unseal,
    write_bytes_atomic,
    write_json,
    write_jsonl,
    write_manifest,
)


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


KIND = "test-kind"


def _save(path: Path, text: str, *, overwrite: bool = False) -> None:
    with commit(path, KIND, overwrite=overwrite) as c:
        (c.folder / "a.txt").write_text(text)
        c.manifest["format_version"] = 1


def _read(path: Path) -> str:
    with open_committed(path, KIND, format_version=1) as snap:
        return (snap.folder / "a.txt").read_text()


def test_commit_creates_then_replaces_only_with_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "idx"
    _save(target, "one")
    assert _read(target) == "one"
    assert _entries(target) == ["CURRENT", "LOCK", "gen-000001"]
    with pytest.raises(OutputExistsError, match="already holds an index; pass overwrite=True"):
        _save(target, "two")
    assert _read(target) == "one"
    _save(target, "two", overwrite=True)
    assert _read(target) == "two"
    assert _entries(target) == ["CURRENT", "LOCK", "gen-000002"]  # the old generation went
    assert _entries(tmp_path) == ["idx"]


def test_commit_never_touches_other_files(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match=r"folder of other files \(thesis.txt\)"):
            _save(mine, "x", overwrite=overwrite)
    assert _entries(mine) == ["thesis.txt"]
    (tmp_path / "file").write_text("a file")
    with pytest.raises(OutputExistsError, match="is a file"):
        _save(tmp_path / "file", "x", overwrite=True)
    assert (tmp_path / "file").read_text() == "a file"
    # a user's file put beside an index survives replacing the index
    _save(tmp_path / "idx", "one")
    (tmp_path / "idx" / "notes.txt").write_text("keep me")
    _save(tmp_path / "idx", "two", overwrite=True)
    assert (tmp_path / "idx" / "notes.txt").read_text() == "keep me"
    assert _read(tmp_path / "idx") == "two"


def test_commit_leaves_target_intact_on_error(tmp_path: Path) -> None:
    target = tmp_path / "idx"
    _save(target, "old")
    with pytest.raises(RuntimeError, match="boom"):
        with commit(target, KIND, overwrite=True) as c:
            (c.folder / "a.txt").write_text("half-written")
            raise RuntimeError("boom")
    assert _read(target) == "old"
    assert _entries(target) == ["CURRENT", "LOCK", "gen-000001"]
    with pytest.raises(RuntimeError):  # a failed first save leaves nothing behind
        with commit(tmp_path / "new", KIND):
            raise RuntimeError("boom")
    assert not (tmp_path / "new").exists()


def test_commit_through_a_symlink_updates_the_target(tmp_path: Path) -> None:
    real = tmp_path / "real"
    _save(real, "one")
    link = tmp_path / "link"
    link.symlink_to(real)
    _save(link, "two", overwrite=True)
    assert link.is_symlink() and _read(real) == "two" and _read(link) == "two"


def test_open_committed_refuses_what_is_not_an_index(tmp_path: Path) -> None:
    with pytest.raises(IndexNotFoundError, match="no such index folder"):
        _read(tmp_path / "absent")
    (tmp_path / "f").write_text("x")
    with pytest.raises(IndexNotFoundError, match="is a file"):
        _read(tmp_path / "f")
    with pytest.raises(IndexNotFoundError, match="not an s3-retriever index"):
        _read(tmp_path)


def test_pointer_and_manifest_are_checksummed(tmp_path: Path) -> None:
    target = tmp_path / "idx"
    _save(target, "one")
    ptr = json.loads((target / "CURRENT").read_text())
    ptr["generation"] = 2
    (target / "CURRENT").write_text(json.dumps(ptr))
    with pytest.raises(IndexFormatError, match="CURRENT: checksum mismatch"):
        _read(target)
    _save(target, "two", overwrite=True)  # a damaged index of ours can be replaced
    manifest_path = target / "gen-000002" / "manifest.json"
    m = json.loads(manifest_path.read_text())
    m["files"] = {}  # emptying the file list must not turn verification off
    manifest_path.write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="does not match the hash in CURRENT"):
        _read(target)


def test_unlisted_files_are_refused(tmp_path: Path) -> None:
    target = tmp_path / "idx"
    _save(target, "one")
    (target / "gen-000001" / "extra.txt").write_text("sneaked in")
    with pytest.raises(IndexFormatError, match="extra.txt: not listed in manifest.json"):
        _read(target)


def test_leftovers_are_removed_by_the_next_load(tmp_path: Path) -> None:
    target = tmp_path / "idx"
    _save(target, "one")
    (target / ".gen-000002.tmp-abcdef").mkdir()
    (target / "gen-000007").mkdir()
    (target / ".CURRENT.tmp-0123ab").write_text("{")
    assert _read(target) == "one"
    assert _entries(target) == ["CURRENT", "LOCK", "gen-000001"]


def test_replace_folder_rules_and_recovery(tmp_path: Path) -> None:
    out = tmp_path / "saes"
    with replace_folder(out) as tmp:
        (tmp / "x.txt").write_text("1")
    with pytest.raises(OutputExistsError, match="other files"):
        with replace_folder(out, overwrite=True):
            pass
    with replace_folder(out, overwrite=True, recognise=lambda p: True) as tmp:
        (tmp / "x.txt").write_text("2")
    assert (out / "x.txt").read_text() == "2"
    # a crash between the two renames: the old folder is aside, none in place
    out.rename(tmp_path / ".saes.old-123abc")
    recover_folder(out, restore_only=True)
    assert (out / "x.txt").read_text() == "2" and _entries(tmp_path) == ["saes"]


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
    assert read == written and read["model"] == "m" and unseal(read, "m") == written


def test_manifest_detects_edited_byte(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    p = tmp_path / "postings" / "seg000000.npy"
    data = bytearray(p.read_bytes())
    data[-1] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError,
                       match=r"postings/seg000000\.npy: sha256 mismatch \(edited or damaged\)"):
        read_manifest(tmp_path)


def test_manifest_detects_truncation_and_missing_file(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    p = tmp_path / "postings" / "seg000000.npy"
    p.write_bytes(p.read_bytes()[:-4])
    with pytest.raises(IndexFormatError, match=r"postings/seg000000\.npy: .* bytes, the manifest"):
        read_manifest(tmp_path)
    p.unlink()
    with pytest.raises(IndexFormatError, match=r"postings/seg000000\.npy: missing"):
        read_manifest(tmp_path)


def test_manifest_version_and_corruption(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    with pytest.raises(IndexFormatError, match="format version 1, this version reads 2"):
        read_manifest(tmp_path, format_version=2)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["files"]["../../etc/passwd"] = {"sha256": "0" * 64, "bytes": 1}
    (tmp_path / "manifest.json").write_text(json.dumps(seal(manifest)))
    with pytest.raises(IndexFormatError, match="unsafe file path"):
        read_manifest(tmp_path)
    manifest["model"] = "n"  # edited without a new checksum
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="checksum mismatch"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{ truncated")
    with pytest.raises(IndexFormatError, match="manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(IndexFormatError, match="manifest.json: missing"):
        read_manifest(tmp_path)


# ------------------------------------------------------------------ atomic files
def test_write_bytes_atomic_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "a.bin"
    write_bytes_atomic(p, b"first")
    write_bytes_atomic(p, b"2nd")
    assert p.read_bytes() == b"2nd" and _entries(p.parent) == ["a.bin"]
    with pytest.raises(TypeError):
        write_bytes_atomic(p, "not bytes")  # type: ignore[arg-type]
    assert p.read_bytes() == b"2nd" and _entries(p.parent) == ["a.bin"]


# ------------------------------------------------------------------ seals
def test_seal_and_unseal(tmp_path: Path) -> None:
    sealed = seal({"a": 1, "b": ["é", 2.5]})
    assert unseal(json.loads(json.dumps(sealed)), "x") == sealed
    assert seal({"b": ["é", 2.5], "a": 1}) == sealed  # key order does not matter
    with pytest.raises(IndexFormatError, match="x: checksum mismatch"):
        unseal({**sealed, "a": 2}, "x")
    with pytest.raises(IndexFormatError, match="x: no checksum"):
        unseal({"a": 1}, "x")
    with pytest.raises(IndexFormatError, match="x: expected a JSON object"):
        unseal([sealed], "x")
    assert seal(sealed) == sealed  # resealing replaces the checksum, never nests it


# ------------------------------------------------------------------ what a folder holds
def test_folder_state(tmp_path: Path) -> None:
    assert folder_state(tmp_path / "absent", KIND) == "absent"
    (tmp_path / "f").write_text("x")
    assert folder_state(tmp_path / "f", KIND) == "file"
    (tmp_path / "e").mkdir()
    assert folder_state(tmp_path / "e", KIND) == "empty"
    (tmp_path / "e" / ".gen-000001.tmp-abc123").mkdir()
    (tmp_path / "e" / "LOCK").write_text("")
    assert folder_state(tmp_path / "e", KIND) == "empty"  # only leftovers of a failed save
    _save(tmp_path / "ours", "x")
    assert folder_state(tmp_path / "ours", KIND) == "ours"
    assert folder_state(tmp_path / "ours", "another-kind") == "other"
    (tmp_path / "ours" / "CURRENT").write_text("{damaged")
    assert folder_state(tmp_path / "ours", KIND) == "ours"  # damaged, still replaceable
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "a.txt").write_text("x")
    assert folder_state(tmp_path / "user", KIND) == "foreign"
    write_json(tmp_path / "user" / "manifest.json", {"format": KIND})
    assert folder_state(tmp_path / "user", KIND) == "legacy"


def test_check_target_rules(tmp_path: Path) -> None:
    assert check_target(tmp_path / "new", KIND) == (tmp_path / "new").resolve()
    _save(tmp_path / "idx", "x")
    with pytest.raises(OutputExistsError, match="holds another kind"):
        check_target(tmp_path / "idx", "another-kind", overwrite=True)
    with pytest.raises(OutputExistsError, match="already holds an index"):
        check_target(tmp_path / "idx", KIND)
    assert check_target(tmp_path / "idx", KIND, overwrite=True) == (tmp_path / "idx").resolve()
    with pytest.raises(IndexFormatError, match="a 'test-kind' folder, expected 'another-kind'"):
        with open_committed(tmp_path / "idx", "another-kind"):
            pass


def test_replacing_a_format_1_folder_removes_only_its_files(tmp_path: Path) -> None:
    old = tmp_path / "idx"
    (old / "postings").mkdir(parents=True)
    (old / "postings" / "a.npy").write_bytes(b"old")
    (old / "notes.txt").write_text("the user's")
    write_json(old / "manifest.json", {"format": KIND, "files": {"postings/a.npy": {}}})
    with pytest.raises(IndexFormatError, match="format 1"):
        _read(old)
    with pytest.raises(OutputExistsError, match="already holds an index"):
        _save(old, "new")
    _save(old, "new", overwrite=True)
    assert _read(old) == "new"
    assert _entries(old) == ["CURRENT", "LOCK", "gen-000001", "notes.txt"]


def test_leftovers_of_a_failed_first_save_are_not_an_index(tmp_path: Path) -> None:
    target = tmp_path / "idx"
    target.mkdir()
    (target / ".gen-000001.tmp-abc123").mkdir()
    with pytest.raises(IndexNotFoundError, match="leftovers of an interrupted first save"):
        _read(target)
    assert _entries(target) == ["LOCK"]
    _save(target, "x")  # and the folder takes a save without overwrite
    assert _read(target) == "x"


def test_check_output_file(tmp_path: Path) -> None:
    assert check_output_file(tmp_path / "r.json") == tmp_path / "r.json"
    (tmp_path / "r.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="exists; pass --overwrite"):
        check_output_file(tmp_path / "r.json")
    assert check_output_file(tmp_path / "r.json", overwrite=True) == tmp_path / "r.json"
    with pytest.raises(OutputExistsError, match="is a folder"):
        check_output_file(tmp_path, overwrite=True)


def test_check_folder_output(tmp_path: Path) -> None:
    assert check_folder_output(tmp_path / "new") == tmp_path / "new"
    assert check_folder_output(tmp_path) == tmp_path  # empty
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="other files"):
        check_folder_output(tmp_path, overwrite=True)
    with pytest.raises(OutputExistsError, match="exists; pass --overwrite"):
        check_folder_output(tmp_path, recognise=lambda p: True)
    assert check_folder_output(tmp_path, overwrite=True, recognise=lambda p: True) == tmp_path
    with pytest.raises(OutputExistsError, match="is a file"):
        check_folder_output(tmp_path / "a.txt")


def test_replace_folder_leaves_the_old_folder_on_error(tmp_path: Path) -> None:
    out = tmp_path / "saes"
    with replace_folder(out) as tmp:
        (tmp / "x.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with replace_folder(out, overwrite=True, recognise=lambda p: True) as tmp:
            (tmp / "x.txt").write_text("half")
            raise RuntimeError("boom")
    assert (out / "x.txt").read_text() == "old" and _entries(tmp_path) == ["saes"]
