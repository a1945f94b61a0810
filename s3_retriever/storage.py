"""Safe, reusable folder I/O: atomic folders, JSON / JSON Lines, ``.npy`` and manifests.

Everything an index folder is made of goes through this module, so that a corrupt,
truncated or mismatched folder is always reported as an :class:`IndexFormatError` that
names the file and the problem, never read as wrong data. Arrays are stored as ``.npy``
files (never pickle); text as UTF-8 JSON.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> root = Path(tempfile.mkdtemp())
    >>> with atomic_folder(root / "index") as tmp:
    ...     save_npy(tmp / "a.npy", np.arange(3, dtype=np.int64))
    ...     _ = write_manifest(tmp, {"format_version": 1})
    >>> sorted(read_manifest(root / "index", format_version=1)["files"])
    ['a.npy']
    >>> load_npy(root / "index" / "a.npy", dtype=np.int64).tolist()
    [0, 1, 2]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.lib.format as npy_format

__all__ = [
    "MANIFEST_NAME",
    "IndexFormatError",
    "atomic_folder",
    "load_npy",
    "read_json",
    "read_jsonl",
    "read_manifest",
    "save_npy",
    "sha256_file",
    "write_json",
    "write_jsonl",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
_CHUNK = 1 << 20


class IndexFormatError(ValueError):
    """A stored folder is corrupt, truncated, edited or of another format version.

    The message always starts with the file concerned, then the problem.

    Example:
        >>> str(IndexFormatError("docs.jsonl line 3: not valid JSON"))
        'docs.jsonl line 3: not valid JSON'
    """


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


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder in a temporary sibling and move it into place only on success.

    Yields an empty temporary folder ``.{name}.tmp-<random>`` in the same parent as
    ``path`` (the parent is created if needed). When the ``with`` body finishes without
    an exception, the temporary folder replaces ``path``: an existing ``path`` is first
    renamed aside, the new folder is renamed into place, then the old one is removed, so
    at every moment ``path`` is either the complete old folder or the complete new one
    (a crash between the two renames leaves the old folder beside it as
    ``.{name}.old-<random>``). When the body raises, the temporary folder is removed and
    ``path`` is untouched.

    Raises:
        NotADirectoryError: ``path`` exists and is not a folder.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> with atomic_folder(root / "out") as tmp:
        ...     _ = (tmp / "x.txt").write_text("new")
        >>> (root / "out" / "x.txt").read_text()
        'new'
        >>> try:
        ...     with atomic_folder(root / "out") as tmp:
        ...         raise RuntimeError("boom")
        ... except RuntimeError:
        ...     pass
        >>> (root / "out" / "x.txt").read_text(), sorted(p.name for p in root.iterdir())
        ('new', ['out'])
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path}: exists and is not a folder; refusing to replace it")
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{path.name}.tmp-{secrets.token_hex(6)}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old: Path | None = None
    try:
        if path.exists():
            old = parent / f".{path.name}.old-{secrets.token_hex(6)}"
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)
                old = None
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_bytes_durable(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as UTF-8 JSON (indented; NaN/inf refused as they are not JSON).

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
    _write_bytes_durable(Path(path), text.encode("utf-8"))


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    """Write one compact UTF-8 JSON value per line (``\\n`` line ends).

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "rows.jsonl"
        >>> write_jsonl(p, [{"a": 1}, {"a": 2}])
        >>> read_jsonl(p)
        [{'a': 1}, {'a': 2}]
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            # json escapes control characters, so a row never spans two lines.
            fh.write(json.dumps(row, ensure_ascii=False, separators=(",", ":"), allow_nan=False))
            fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


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


def _listed_files(folder: Path) -> list[str]:
    out = []
    for p in folder.rglob("*"):
        if p.is_file():
            rel = p.relative_to(folder).as_posix()
            if rel != MANIFEST_NAME:
                out.append(rel)
    return sorted(out)


def write_manifest(folder: str | os.PathLike, manifest: dict) -> dict:
    """Write ``folder/manifest.json``: ``manifest`` plus a size and hash for every file.

    Adds (or replaces) ``manifest["files"]`` with ``{relpath: {"sha256", "bytes"}}`` for
    every file below ``folder`` except ``manifest.json`` itself (paths use ``/``).
    Call it last, after every other file is written. Returns the written dict (a copy;
    ``manifest`` is not modified).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "a.txt").write_bytes(b"abc")
        >>> write_manifest(d, {"format_version": 1})["files"]["a.txt"]["bytes"]
        3
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found; cannot write a manifest into it")
    out = dict(manifest)
    out["files"] = {
        rel: {"sha256": sha256_file(folder / rel), "bytes": (folder / rel).stat().st_size}
        for rel in _listed_files(folder)
    }
    write_json(folder / MANIFEST_NAME, out)
    return out


def _check_manifest_files(files: Any) -> dict[str, dict]:
    where = MANIFEST_NAME
    if not isinstance(files, dict):
        raise IndexFormatError(f"{where}: 'files' is missing or not an object")
    for rel, entry in files.items():
        parts = rel.split("/")
        if rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
            raise IndexFormatError(f"{where}: unsafe file path {rel!r}")
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not isinstance(entry.get("bytes"), int)
            or isinstance(entry.get("bytes"), bool)
        ):
            raise IndexFormatError(f"{where}: bad entry for {rel!r} (need sha256 and bytes)")
    return files


def read_manifest(
    folder: str | os.PathLike, *, verify: bool = True, format_version: int | None = None
) -> dict:
    """Read ``folder/manifest.json`` and (by default) verify every file it lists.

    With ``format_version``, the manifest's ``"format_version"`` must equal it. With
    ``verify=True`` every listed file must exist with the recorded size and SHA-256
    (the whole folder is read once). Files present in the folder but *not* listed in
    the manifest are ignored (they are not part of the index: e.g. a user's notes).
    With ``verify=False`` only the manifest itself is read and checked.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        NotADirectoryError: ``folder`` is a file.
        IndexFormatError: the manifest is missing or corrupt, the format version differs,
            or a listed file is missing, of another size, or has another hash.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "a.txt").write_bytes(b"abc")
        >>> _ = write_manifest(d, {"format_version": 1})
        >>> _ = (d / "a.txt").write_bytes(b"abd")
        >>> try:
        ...     read_manifest(d)
        ... except IndexFormatError as e:
        ...     print(e)
        a.txt: sha256 mismatch (edited or truncated?)
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: index folder not found")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: is a file, expected an index folder")
    path = folder / MANIFEST_NAME
    if not path.exists():
        raise IndexFormatError(
            f"{MANIFEST_NAME}: missing in {folder} (not an index folder, or an interrupted write)"
        )
    manifest = read_json(path)
    if not isinstance(manifest, dict):
        raise IndexFormatError(f"{MANIFEST_NAME}: expected a JSON object")
    if format_version is not None:
        found = manifest.get("format_version")
        if found is None:
            raise IndexFormatError(f"{MANIFEST_NAME}: no format_version")
        if found != format_version:
            raise IndexFormatError(
                f"{MANIFEST_NAME}: index format {found}, this version reads {format_version}"
            )
    files = _check_manifest_files(manifest.get("files"))
    if verify:
        for rel, entry in files.items():
            file = folder / rel
            if not file.is_file():
                raise IndexFormatError(f"{rel}: missing (listed in {MANIFEST_NAME})")
            size = file.stat().st_size
            if size != entry["bytes"]:
                raise IndexFormatError(
                    f"{rel}: {size} bytes, manifest says {entry['bytes']} (edited or truncated?)"
                )
            if sha256_file(file) != entry["sha256"]:
                raise IndexFormatError(f"{rel}: sha256 mismatch (edited or truncated?)")
    return manifest
