"""A sharded index on disk: a folder of ordinary saved indexes (one per shard, each written
by :meth:`S3Index.save <s3_retriever.S3Index.save>`) and ``shards.json``, which names them in
order. The shard order is the document order: a search of the sharded index ranks exactly
as one index holding the shards' documents in that order.

``shards.json`` is written last, atomically: a folder without it is not (yet) a sharded
index, and shard folders it does not name are leftovers (of a retried batch) and ignored.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name in ("shard-00000", "shard-00001"):  # the shards, saved first
    ...     (folder / name).mkdir()
    >>> _ = write_manifest(folder, ["shard-00000", "shard-00001"], documents=3, tokens=120,
    ...                    model={"id": "smollm2-135m", "fingerprint": "abc"})
    >>> read_manifest(folder)["shards"]
    ['shard-00000', 'shard-00001']
    >>> is_sharded_index(folder)
    True
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from s3_retriever.errors import IndexFormatError, IndexNotFoundError
from s3_retriever.storage import read_json, write_json

#: The manifest's file name inside a sharded index folder.
MANIFEST_FILE = "shards.json"
SHARDED_KIND = "s3-retriever-sharded"
FORMAT_VERSION = 1
_SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

__all__ = ["FORMAT_VERSION", "MANIFEST_FILE", "SHARDED_KIND", "is_sharded_index",
           "read_manifest", "shard_name", "write_manifest"]


def shard_name(i: int) -> str:
    """The folder name of shard ``i``: ``shard-00000``, ``shard-00001``, ..."""
    return f"shard-{i:05d}"


def write_manifest(folder: str | os.PathLike, shards: Sequence[str], *, documents: int,
                   tokens: int, model: dict[str, Any],
                   extra: dict[str, Any] | None = None) -> Path:
    """Write ``folder/shards.json`` (atomic) naming ``shards`` (folder names inside
    ``folder``, in document order); returns its path.

    Raises:
        IndexFormatError: a shard name is not a plain folder name, or repeats.
    """
    folder = Path(folder)
    bad = [s for s in shards if not isinstance(s, str) or not _SHARD_NAME.match(s)]
    if bad or len(set(shards)) != len(shards):
        raise IndexFormatError(f"shard names must be distinct plain folder names, got "
                               f"{list(shards)[:5]}")
    body = {"format": SHARDED_KIND, "format_version": FORMAT_VERSION, "shards": list(shards),
            "documents": int(documents), "tokens": int(tokens), "model": dict(model),
            **(extra or {})}
    path = folder / MANIFEST_FILE
    write_json(path, body)
    return path


def is_sharded_index(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a ``shards.json`` (not verified: see :func:`read_manifest`)."""
    return (Path(folder) / MANIFEST_FILE).is_file()


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the sharded index in ``folder``, checked: format, version, shard
    names, and that every shard folder exists.

    Raises:
        IndexNotFoundError: no ``shards.json`` in ``folder``.
        IndexFormatError: anything else that does not check.
    """
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise IndexNotFoundError(f"{folder}: not a sharded index (no {MANIFEST_FILE})")
    body = read_json(path)
    if not isinstance(body, dict) or body.get("format") != SHARDED_KIND:
        raise IndexFormatError(f"{path}: not a sharded index manifest")
    if body.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(f"{path}: format version {body.get('format_version')!r}, "
                               f"expected {FORMAT_VERSION}")
    shards = body.get("shards")
    if not isinstance(shards, list) or not shards or \
            not all(isinstance(s, str) and _SHARD_NAME.match(s) for s in shards) or \
            len(set(shards)) != len(shards):
        raise IndexFormatError(f"{path}: 'shards' must be a non-empty list of distinct "
                               "folder names")
    missing = [s for s in shards if not (folder / s).is_dir()]
    if missing:
        raise IndexFormatError(f"{path}: shard folder(s) missing: {missing[:5]}")
    for key in ("documents", "tokens"):
        if not isinstance(body.get(key), int) or body[key] < 0:
            raise IndexFormatError(f"{path}: {key!r} must be a non-negative integer")
    if not isinstance(body.get("model"), dict):
        raise IndexFormatError(f"{path}: 'model' must be an object")
    return body
