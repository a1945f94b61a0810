"""The only file writer: atomic files, verified index folders, JSON / JSON Lines and ``.npy``.

An index folder is committed like Lucene's ``segments_N`` or LevelDB's ``CURRENT``: each
save writes a new ``gen-NNNNNN/`` folder (data files plus a ``manifest.json`` that lists
every file's size and SHA-256 and carries its own checksum), then publishes it by
atomically replacing the small, checksummed ``CURRENT`` pointer. A reader always finds the
complete old or the complete new index; leftovers of an interrupted save are removed by
the next save or load. Nothing that is not an index folder of ours is ever deleted or
replaced. Arrays are ``.npy`` (never pickle), text UTF-8 JSON. docs/guarantees.md lists
every guarantee with the test that checks it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.lib.format as npy_format

from s3_retriever.errors import IndexFormatError, IndexNotFoundError, OutputExistsError

try:  # POSIX advisory locks; elsewhere saves and loads are not serialised across processes
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "MANIFEST_NAME",
    "POINTER_NAME",
    "IndexFormatError",
    "check_folder_output",
    "check_output_file",
    "check_target",
    "commit",
    "folder_state",
    "load_npy",
    "open_committed",
    "read_json",
    "read_jsonl",
    "replace_folder",
    "save_npy",
    "seal",
    "sha256_file",
    "unseal",
    "write_json",
    "write_jsonl",
]

MANIFEST_NAME = "manifest.json"
POINTER_NAME = "CURRENT"
LOCK_NAME = "LOCK"
_CHUNK = 1 << 20
_GEN = re.compile(r"^gen-(\d{6,})$")
_LEFTOVER = re.compile(r"^\.(gen-\d{6,}|CURRENT)\.tmp-[0-9a-f]+$")
_OLD_FOLDER = re.compile(r"^\.(?P<name>.+)\.old-[0-9a-f]+$")


def _name(path: Path) -> str:
    """The file as messages name it: the path as given (so relative paths stay short)."""
    return Path(path).as_posix()


def _fsync_dir(path: Path) -> None:
    # Makes a rename durable on POSIX; directories cannot be opened on Windows.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_sibling(path: Path, tag: str = "tmp") -> Path:
    return path.parent / f".{path.name}.{tag}-{secrets.token_hex(6)}"


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` all or nothing: a durable temporary sibling, then a rename.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "a.bin"
        >>> write_bytes_atomic(p, b"abc"); p.read_bytes()
        b'abc'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as UTF-8 JSON, atomically (indented; NaN/inf refused: not JSON).

    Raises:
        ValueError: ``obj`` holds NaN or infinity.
        TypeError: ``obj`` holds something JSON cannot represent.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "a.json"
        >>> write_json(p, {"name": "café"})
        >>> read_json(p)
        {'name': 'café'}
    """
    text = json.dumps(obj, ensure_ascii=False, indent=2, allow_nan=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    """Write one compact UTF-8 JSON value per line (``\\n`` line ends), atomically.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "rows.jsonl"
        >>> write_jsonl(p, [{"a": 1}, {"a": 2}])
        >>> read_jsonl(p)
        [{'a': 1}, {'a': 2}]
    """
    lines = [json.dumps(row, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
             for row in rows]  # json escapes control characters: a row never spans two lines
    write_bytes_atomic(path, "".join(line + "\n" for line in lines).encode("utf-8"))


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise IndexFormatError(f"{_name(path)}: missing") from None
    except IsADirectoryError:
        raise IndexFormatError(f"{_name(path)}: is a folder, expected a file") from None


def read_json(path: str | os.PathLike) -> Any:
    """Read a UTF-8 JSON file.

    Raises:
        IndexFormatError: the file is missing, not UTF-8 or not valid JSON (the message
            names the file and the line).

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "bad.json"
        >>> _ = p.write_text('{"a": 1,\\n  oops}')
        >>> try:
        ...     read_json(p)
        ... except IndexFormatError as e:
        ...     print(str(e).split("/")[-1])
        bad.json line 2: not valid JSON (Expecting property name enclosed in double quotes)
    """
    path = Path(path)
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise IndexFormatError(f"{_name(path)} line {line}: not valid UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise IndexFormatError(
            f"{_name(path)} line {e.lineno}: not valid JSON ({e.msg})"
        ) from None


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """Read a JSON Lines file written by :func:`write_jsonl`.

    Raises:
        IndexFormatError: the file is missing, a line is not UTF-8, blank, or not valid
            JSON (the message names the file and the 1-based line number).

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "rows.jsonl"
        >>> _ = p.write_text('{"a": 1}\\n{"a": \\n')
        >>> try:
        ...     read_jsonl(p)
        ... except IndexFormatError as e:
        ...     print(str(e).split("/")[-1])
        rows.jsonl line 2: not valid JSON (Expecting value)
    """
    path = Path(path)
    data = _read_bytes(path)
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    rows = []
    for number, raw in enumerate(lines, start=1):
        where = f"{_name(path)} line {number}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise IndexFormatError(f"{where}: not valid UTF-8") from None
        if not text.strip():
            raise IndexFormatError(f"{where}: blank line")
        try:
            rows.append(json.loads(text))
        except json.JSONDecodeError as e:
            raise IndexFormatError(f"{where}: not valid JSON ({e.msg})") from None
    return rows


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save one array as ``.npy`` (never pickled: object arrays are refused).

    Raises:
        ValueError: the array has an object dtype.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "a.npy"
        >>> save_npy(p, np.array([1, 2], dtype=np.uint32))
        >>> load_npy(p, mmap=False, dtype=np.uint32, shape=(None,)).tolist()
        [1, 2]
    """
    path = Path(path)
    array = np.asanyarray(array)
    if array.dtype.hasobject:
        raise ValueError(f"{_name(path)}: refusing to save an object array (would need pickle)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.save(fh, np.asarray(array), allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of an ``.npy`` file, without reading the data."""
    with open(path, "rb") as fh:
        version = npy_format.read_magic(fh)
        if version == (1, 0):
            shape, _fortran, dtype = npy_format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _fortran, dtype = npy_format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        return tuple(shape), np.dtype(dtype), fh.tell()


def load_npy(
    path: str | os.PathLike,
    mmap: bool = True,
    dtype: Any = None,
    ndim: int | None = None,
    shape: tuple[int | None, ...] | None = None,
) -> np.ndarray:
    """Load an ``.npy`` file safely (``allow_pickle=False``), memory-mapped read-only by default.

    The file size is checked against its header first, so a truncated file (or one with
    trailing bytes) is an error rather than a short or garbage array. ``dtype``, ``ndim``
    and ``shape`` are checked when given; ``None`` in ``shape`` matches any length.

    Raises:
        IndexFormatError: missing, not a valid ``.npy``, truncated, or not the expected
            dtype / ndim / shape (the message names the file).

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "a.npy"
        >>> save_npy(p, np.zeros((3, 2), dtype=np.int32))
        >>> load_npy(p, dtype=np.int32, shape=(None, 2)).shape
        (3, 2)
        >>> try:
        ...     load_npy(p, dtype=np.float16)
        ... except IndexFormatError as e:
        ...     print(str(e).split("/")[-1])
        a.npy: dtype int32, expected float16
    """
    path = Path(path)
    name = _name(path)
    if not path.exists():
        raise IndexFormatError(f"{name}: missing")
    if not path.is_file():
        raise IndexFormatError(f"{name}: is not a file")
    try:
        file_shape, file_dtype, offset = _npy_header(path)
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise IndexFormatError(f"{name}: not a valid .npy file ({e})") from None
    if file_dtype.hasobject:
        raise IndexFormatError(f"{name}: object array (needs pickle); refused")
    expected = offset + math.prod(file_shape) * file_dtype.itemsize
    actual = path.stat().st_size
    if actual != expected:
        problem = "truncated" if actual < expected else "trailing bytes after the data"
        raise IndexFormatError(
            f"{name}: {problem} ({actual} bytes, header says {expected})"
        )
    if dtype is not None and file_dtype != np.dtype(dtype):
        raise IndexFormatError(f"{name}: dtype {file_dtype}, expected {np.dtype(dtype)}")
    if ndim is not None and len(file_shape) != ndim:
        raise IndexFormatError(f"{name}: {len(file_shape)} dimensions, expected {ndim}")
    if shape is not None:
        ok = len(shape) == len(file_shape) and all(
            want is None or want == got for want, got in zip(shape, file_shape, strict=False)
        )
        if not ok:
            want = ", ".join("*" if s is None else str(s) for s in shape)
            want += "," if len(shape) == 1 else ""
            raise IndexFormatError(f"{name}: shape {file_shape}, expected ({want})")
    try:
        if mmap and math.prod(file_shape) > 0:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise IndexFormatError(f"{name}: cannot be read ({e})") from None


def sha256_file(path: str | os.PathLike, chunk_size: int = _CHUNK) -> str:
    """Hex SHA-256 of a file, read in chunks (constant memory).

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = p.write_bytes(b"abc")
        >>> sha256_file(p)[:16]
        'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()




# ------------------------------------------------------------------ self-checksums
def _canonical(obj: dict) -> bytes:
    body = {k: v for k, v in obj.items() if k != "checksum"}
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode("utf-8")


def seal(obj: dict) -> dict:
    """A copy of ``obj`` with ``"checksum"``: the SHA-256 of its canonical JSON without it.

    Example:
        >>> unseal(seal({"a": 1}), "x.json")
        {'a': 1, 'checksum': '...'}
    """
    return {**obj, "checksum": hashlib.sha256(_canonical(obj)).hexdigest()}


def unseal(obj: Any, where: str) -> dict:
    """``obj`` if it is a JSON object whose ``"checksum"`` matches its content.

    Raises:
        IndexFormatError: not an object, no checksum, or a checksum that does not match
            (the file was edited or damaged).
    """
    if not isinstance(obj, dict):
        raise IndexFormatError(f"{where}: expected a JSON object")
    if not isinstance(obj.get("checksum"), str):
        raise IndexFormatError(f"{where}: no checksum (not written by this library?)")
    try:
        want = hashlib.sha256(_canonical(obj)).hexdigest()
    except (TypeError, ValueError) as e:
        raise IndexFormatError(f"{where}: cannot be checked ({e})") from None
    if obj["checksum"] != want:
        raise IndexFormatError(f"{where}: checksum mismatch (edited or damaged)")
    return obj


# ------------------------------------------------------------------ manifests
def _files_below(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() or p.is_symlink())


def write_manifest(folder: str | os.PathLike, manifest: dict) -> dict:
    """Write ``folder/manifest.json``: ``manifest``, the size and SHA-256 of every other file
    below ``folder``, and the manifest's own checksum. Call it after every other file.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "a.txt").write_bytes(b"abc")
        >>> write_manifest(d, {"format_version": 1})["files"]["a.txt"]["bytes"]
        3
    """
    folder = Path(folder)
    files = {rel: {"sha256": sha256_file(folder / rel), "bytes": (folder / rel).stat().st_size}
             for rel in _files_below(folder) if rel != MANIFEST_NAME}
    out = seal({**{k: v for k, v in manifest.items() if k != "checksum"}, "files": files})
    write_json(folder / MANIFEST_NAME, out)
    return out


def _check_files_entry(files: Any, where: str) -> dict[str, dict]:
    if not isinstance(files, dict):
        raise IndexFormatError(f"{where}: 'files' is missing or not an object")
    for rel, entry in files.items():
        parts = rel.split("/")
        if rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
            raise IndexFormatError(f"{where}: unsafe file path {rel!r}")
        if (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
                or type(entry.get("bytes")) is not int):
            raise IndexFormatError(f"{where}: bad entry for {rel!r} (need sha256 and bytes)")
    return files


def read_manifest(folder: str | os.PathLike, *, format_version: int | None = None,
                  sha256: str | None = None) -> dict:
    """Read ``folder/manifest.json`` and verify the folder against it, byte for byte.

    Checks the manifest's own checksum (and its file hash when ``sha256`` is given), the
    format version, that every listed file has its recorded size and SHA-256, and that the
    folder holds no file the manifest does not list, so nothing unverified is ever read.

    Raises:
        IndexFormatError: any mismatch (the message names the file).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "a.txt").write_bytes(b"abc")
        >>> _ = write_manifest(d, {"format_version": 1})
        >>> _ = (d / "a.txt").write_bytes(b"abd")
        >>> try:
        ...     read_manifest(d)
        ... except IndexFormatError as e:
        ...     print(str(e).split("/")[-1])
        a.txt: sha256 mismatch (edited or damaged)
    """
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    where = _name(path)
    if sha256 is not None and path.is_file() and sha256_file(path) != sha256:
        raise IndexFormatError(f"{where}: does not match the hash in {POINTER_NAME} "
                               "(edited or damaged)")
    manifest = unseal(read_json(path), where)
    if format_version is not None and manifest.get("format_version") != format_version:
        raise IndexFormatError(f"{where}: format version {manifest.get('format_version')!r}, "
                               f"this version reads {format_version}")
    files = _check_files_entry(manifest.get("files"), where)
    for rel, entry in files.items():
        file = folder / rel
        name = _name(file)
        if file.is_symlink() or not file.is_file():
            raise IndexFormatError(f"{name}: missing (listed in {MANIFEST_NAME})")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise IndexFormatError(f"{name}: {size} bytes, the manifest says {entry['bytes']} "
                                   "(edited or truncated)")
        if sha256_file(file) != entry["sha256"]:
            raise IndexFormatError(f"{name}: sha256 mismatch (edited or damaged)")
    extra = [rel for rel in _files_below(folder) if rel != MANIFEST_NAME and rel not in files]
    if extra:
        raise IndexFormatError(f"{_name(folder / extra[0])}: not listed in {MANIFEST_NAME} "
                               f"({len(extra)} unlisted file(s); an edited index?)")
    return manifest


# ------------------------------------------------------------------ committed folders
@contextlib.contextmanager
def _locked(target: Path, shared: bool) -> Iterator[bool]:
    """Hold ``target/LOCK`` (shared for readers, exclusive for writers); yields whether a lock
    is held (False where locks are unavailable, e.g. a read-only folder)."""
    if fcntl is None:
        yield False
        return
    try:
        fd = os.open(target / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        if not shared:
            raise
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def _pointer(target: Path, kind: str) -> dict:
    """The verified ``CURRENT`` of ``target`` (raises IndexFormatError)."""
    where = _name(target / POINTER_NAME)
    ptr = unseal(read_json(target / POINTER_NAME), where)
    if ptr.get("format") != kind:
        raise IndexFormatError(f"{where}: a {ptr.get('format')!r} folder, expected {kind!r}")
    gen = ptr.get("generation")
    if type(gen) is not int or gen < 1 or ptr.get("folder") != f"gen-{gen:06d}" or \
            not isinstance(ptr.get("manifest_sha256"), str):
        raise IndexFormatError(f"{where}: bad generation entry")
    return ptr


def _ours(entry: Path) -> bool:
    return entry.name in (POINTER_NAME, LOCK_NAME) or bool(
        _GEN.match(entry.name) or _LEFTOVER.match(entry.name))


def folder_state(path: str | os.PathLike, kind: str) -> str:
    """What ``path`` holds, for the save rules: ``"absent"``, ``"file"``, ``"empty"`` (no
    entries, or only leftovers of an interrupted first save), ``"ours"`` (a ``kind`` folder
    this library committed, maybe with other files beside it), ``"legacy"`` (an older
    format of ours, a root ``manifest.json`` naming ``kind``), ``"other"`` (a committed
    folder of another kind) or ``"foreign"`` (files that are not ours).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> folder_state(d / "x", "s3-retriever-index"), folder_state(d, "s3-retriever-index")
        ('absent', 'empty')
    """
    target = Path(os.path.realpath(path))
    if not target.exists():
        return "absent"
    if not target.is_dir():
        return "file"
    entries = list(target.iterdir())
    if (target / POINTER_NAME).is_file():
        try:
            found = read_json(target / POINTER_NAME).get("format")
        except (IndexFormatError, AttributeError):
            found = kind  # a damaged pointer of ours: replaceable with overwrite
        return "ours" if found == kind else "other"
    if not [e for e in entries if not _ours(e)]:
        return "empty"
    if (target / MANIFEST_NAME).is_file():
        with contextlib.suppress(IndexFormatError, AttributeError):
            if read_json(target / MANIFEST_NAME).get("format") == kind:
                return "legacy"
    return "foreign"


def check_target(path: str | os.PathLike, kind: str, overwrite: bool = False) -> Path:
    """The folder a save to ``path`` writes (a symlink's target), or the reason it may not.

    Call it before expensive work; :func:`commit` checks again under the lock.

    Raises:
        OutputExistsError: ``path`` is a file, a folder of files that are not ours, a
            folder of another kind, or (without ``overwrite``) an index already.
    """
    target = Path(os.path.realpath(path))
    state = folder_state(target, kind)
    shown = _name(Path(path))
    if state == "file":
        raise OutputExistsError(f"{shown}: is a file; save an index to a new or empty folder")
    if state == "foreign":
        names = sorted(e.name for e in target.iterdir() if not _ours(e))
        listing = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise OutputExistsError(
            f"{shown}: is a folder of other files ({listing}); refusing to write an index "
            "there (nothing is ever deleted): choose a new or empty folder")
    if state == "other":
        raise OutputExistsError(f"{shown}: holds another kind of s3-retriever folder, not "
                                f"a {kind!r}; choose a new or empty folder")
    if state in ("ours", "legacy") and not overwrite:
        raise OutputExistsError(f"{shown}: already holds an index; pass overwrite=True "
                                "(--overwrite on the command line) to replace it")
    return target


@dataclass
class Commit:
    """The folder a :func:`commit` body writes into, and the manifest entries to record."""

    folder: Path
    manifest: dict = field(default_factory=dict)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _clean(target: Path, keep: str | None) -> None:
    """Remove the leftovers of interrupted saves: temporary entries and every generation
    folder but ``keep``. Call it holding the lock."""
    for entry in target.iterdir():
        if _LEFTOVER.match(entry.name) or (_GEN.match(entry.name) and entry.name != keep):
            _remove(entry)


def _remove_legacy(target: Path) -> None:
    """Remove the files of a format-1 index (a root manifest.json and what it lists)."""
    try:
        listed = read_json(target / MANIFEST_NAME).get("files") or {}
    except (IndexFormatError, AttributeError):
        return
    for rel in listed:
        if isinstance(rel, str) and ".." not in rel.split("/") and not rel.startswith("/"):
            _remove(target / rel)
    _remove(target / MANIFEST_NAME)
    for sub in sorted((p for p in target.rglob("*") if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()  # only the now-empty folders of the old layout


@contextlib.contextmanager
def _undo_mkdir(target: Path, created: bool) -> Iterator[None]:
    """If a first save into a folder it created fails, remove the folder again."""
    try:
        yield
    except BaseException:
        if created and not (target / POINTER_NAME).exists():
            _clean(target, keep=None)
            with contextlib.suppress(OSError):
                (target / LOCK_NAME).unlink()
                target.rmdir()
        raise


@contextlib.contextmanager
def commit(path: str | os.PathLike, kind: str, *, overwrite: bool = False) -> Iterator[Commit]:
    """Write a new generation of the ``kind`` folder at ``path`` and publish it atomically.

    The body writes data files into ``commit.folder`` and fills ``commit.manifest``. On
    success the manifest (with every file's hash and its own checksum) is written, the
    generation folder renamed into place, and ``CURRENT`` replaced in one rename; then the
    old generation goes. If the body raises, nothing at ``path`` changes. Saving through a
    symlink writes into its target.

    Raises:
        OutputExistsError: see :func:`check_target`.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> with commit(root / "idx", "demo") as c:
        ...     _ = (c.folder / "a.txt").write_text("new")
        ...     c.manifest["format_version"] = 1
        >>> sorted(p.name for p in (root / "idx").iterdir())
        ['CURRENT', 'LOCK', 'gen-000001']
        >>> with open_committed(root / "idx", "demo", format_version=1) as snap:
        ...     (snap.folder / "a.txt").read_text()
        'new'
    """
    target = check_target(path, kind, overwrite)
    created = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputExistsError(f"{_name(Path(path))}: a parent folder is a file; choose "
                                "another path") from None
    with _locked(target, shared=False), _undo_mkdir(target, created):
        state = folder_state(target, kind)  # again, now that no other save runs
        check_target(target, kind, overwrite)
        current = 0
        if state == "ours":
            with contextlib.suppress(IndexFormatError):
                current = _pointer(target, kind)["generation"]
            gens = [int(m.group(1)) for e in target.iterdir() if (m := _GEN.match(e.name))]
            current = max([current, *gens])
        name = f"gen-{current + 1:06d}"
        tmp = target / f".{name}.tmp-{secrets.token_hex(6)}"
        tmp.mkdir()
        try:
            c = Commit(tmp)
            yield c
            write_manifest(tmp, {"format": kind, **c.manifest})
            for sub in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
                _fsync_dir(sub)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        os.replace(tmp, target / name)
        _fsync_dir(target)
        write_bytes_atomic(target / POINTER_NAME, (json.dumps(seal({
            "format": kind, "generation": current + 1, "folder": name,
            "manifest_sha256": sha256_file(target / name / MANIFEST_NAME)}), indent=1)
            + "\n").encode("utf-8"))
        _clean(target, keep=name)
        if state == "legacy":
            _remove_legacy(target)


@dataclass
class Snapshot:
    """A verified generation of a committed folder: where its files are and its manifest."""

    folder: Path
    manifest: dict


@contextlib.contextmanager
def open_committed(path: str | os.PathLike, kind: str, *,
                   format_version: int | None = None) -> Iterator[Snapshot]:
    """Open the current generation of the ``kind`` folder at ``path``, verified byte for byte.

    The pointer and the manifest are checked against their checksums, every file against
    the manifest, and a file the manifest does not list is refused (see
    :func:`read_manifest`). Leftovers of an interrupted save are removed. No save to
    ``path`` runs while the body reads (a shared lock).

    Raises:
        IndexNotFoundError: nothing at ``path``, a file, or a folder without an index.
        IndexFormatError: anything that does not verify, or another format version.
    """
    target = Path(os.path.realpath(path))
    shown = _name(Path(path))
    if not target.exists():
        raise IndexNotFoundError(f"{shown}: no such index folder")
    if not target.is_dir():
        raise IndexNotFoundError(f"{shown}: is a file, not an index folder")
    with _locked(target, shared=True) as locked:
        if not (target / POINTER_NAME).is_file():
            state = folder_state(target, kind)
            if state == "legacy":
                raise IndexFormatError(
                    f"{_name(Path(path) / MANIFEST_NAME)}: an index of format 1, written by an "
                    "older s3-retriever; build it again (or load it with that version and "
                    "save it with overwrite=True)")
            if state == "empty" and any(target.iterdir()):
                if locked:
                    _clean(target, keep=None)
                raise IndexNotFoundError(f"{shown}: holds only the leftovers of an interrupted "
                                         "first save (removed); there is no index to load")
            raise IndexNotFoundError(f"{shown}: not an s3-retriever index (no {POINTER_NAME})")
        ptr = _pointer(target, kind)
        folder = target / ptr["folder"]
        if not folder.is_dir():
            raise IndexFormatError(f"{_name(Path(path) / ptr['folder'])}: missing (named by "
                                   f"{POINTER_NAME})")
        manifest = read_manifest(folder, format_version=format_version,
                                 sha256=ptr["manifest_sha256"])
        if manifest.get("format") != kind:
            raise IndexFormatError(f"{_name(folder / MANIFEST_NAME)}: a "
                                   f"{manifest.get('format')!r} folder, expected {kind!r}")
        if locked:
            _clean(target, keep=ptr["folder"])
        yield Snapshot(folder, manifest)


# ------------------------------------------------------------------ other outputs
def check_output_file(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """``path`` as a file this call may write: absent, or (with ``overwrite``) a file.

    Raises:
        OutputExistsError: ``path`` is a folder, or a file and ``overwrite`` is False.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputExistsError(f"{_name(p)}: is a folder; give a file name to write")
    if p.exists() and not overwrite:
        raise OutputExistsError(f"{_name(p)}: exists; pass --overwrite (overwrite=True) to "
                                "replace it")
    return p


def recover_folder(path: str | os.PathLike, *, restore_only: bool = False) -> None:
    """Finish what an interrupted :func:`replace_folder` left: bring back the old folder
    if the new one never arrived, and (writers only, not ``restore_only`` readers) remove
    temporary and old siblings."""
    path = Path(os.path.realpath(path))
    if restore_only and path.exists():
        return
    if not path.parent.is_dir():
        return
    for entry in path.parent.iterdir():
        m = _OLD_FOLDER.match(entry.name)
        if m and m.group("name") == path.name:
            if path.exists():
                _remove(entry)
            else:
                os.replace(entry, path)
        elif entry.name.startswith(f".{path.name}.tmp-") and not restore_only:
            _remove(entry)


def check_folder_output(path: str | os.PathLike, *, overwrite: bool = False,
                        recognise: Callable[[Path], bool] = lambda _: False) -> Path:
    """``path`` as a plain folder this call may write (see :func:`replace_folder`); call it
    before expensive work.

    Raises:
        OutputExistsError: a file, a folder of other files, or one of ours without
            ``overwrite``.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise OutputExistsError(f"{_name(path)}: is a file; give a new or empty folder")
        if any(path.iterdir()):
            if not recognise(Path(os.path.realpath(path))):
                raise OutputExistsError(f"{_name(path)}: is a folder of other files; refusing "
                                        "to replace it: give a new or empty folder")
            if not overwrite:
                raise OutputExistsError(f"{_name(path)}: exists; pass --overwrite "
                                        "(overwrite=True) to replace it")
    return path


@contextlib.contextmanager
def replace_folder(path: str | os.PathLike, *, overwrite: bool = False,
                   recognise: Callable[[Path], bool] = lambda _: False) -> Iterator[Path]:
    """Build a plain folder (e.g. SAEs) in a temporary sibling and move it to ``path``.

    ``path`` must be absent or empty, or, with ``overwrite``, a folder ``recognise`` accepts
    as one this library wrote; anything else is refused and kept. Replacing renames the old
    folder aside, the new one in, then deletes the old; :func:`recover_folder` (run here
    and by readers) undoes a crash between the two renames.

    Raises:
        OutputExistsError: ``path`` is a file, a folder that is not empty and not
            recognised, or recognised but ``overwrite`` is False.
    """
    path = Path(os.path.realpath(path))
    recover_folder(path)
    check_folder_output(path, overwrite=overwrite, recognise=recognise)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = _tmp_sibling(path, "old")
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old is not None:
        _remove(old)
