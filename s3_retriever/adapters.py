"""What the LangChain and LlamaIndex adapters share, so both behave the same way.

A saved retriever is a folder holding the index (``s3_index/``, written by
:meth:`S3Index.save <s3_retriever.S3Index.save>`) and the retriever's own settings
(``s3_retriever.json``: ``k``, filters, ...), so that loading it gives back the retriever
as it was. Either adapter also opens a bare index folder (then with default settings).

Example:
    >>> from s3_retriever import S3Index
    >>> index = S3Index.from_model("smollm2-135m")
    >>> save_retriever(index, "kb", adapter="langchain", settings={"k": 3})
    PosixPath('kb')
    >>> path, settings = open_retriever("kb", adapter="langchain")
    >>> path.name, settings
    ('s3_index', {'k': 3})
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s3_retriever.errors import IndexNotFoundError, InvalidInputError, OutputExistsError
from s3_retriever.storage import read_json, write_json

if TYPE_CHECKING:
    from s3_retriever.distributed.shards import ShardedIndex
    from s3_retriever.engine import S3Index

#: The file beside the saved index that holds the retriever's settings.
RETRIEVER_FILE = "s3_retriever.json"
#: The sub-folder of a saved retriever that holds the :class:`~s3_retriever.S3Index`.
INDEX_FOLDER = "s3_index"
_FORMAT = "s3-retriever-settings"
_FORMAT_VERSION = 1


def _read_settings(path: Path) -> dict[str, Any] | None:
    """The settings file at ``path``, or None when it is not one of ours."""
    try:
        stored = read_json(path)
    except ValueError:
        return None
    if isinstance(stored, dict) and stored.get("format") == _FORMAT:
        return stored
    return None


def save_retriever(index: S3Index, folder: str | os.PathLike, *, adapter: str,
                   settings: Mapping[str, Any], overwrite: bool = True) -> Path:
    """Save ``index`` to ``folder/s3_index`` (atomic) and ``settings`` to
    ``folder/s3_retriever.json``; returns ``folder``.

    Other files in ``folder`` are kept, and neither name is replaced when it holds something
    that is not ours. ``overwrite=False`` refuses a folder that already holds a saved
    retriever.

    Raises:
        OutputExistsError: ``folder`` is a file, a name holds something else, or (with
            ``overwrite=False``) a retriever is already saved there.
        InvalidInputError: ``settings`` cannot be stored as JSON.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{folder}: exists and is not a folder")
    settings_file = folder / RETRIEVER_FILE
    if settings_file.exists():
        if _read_settings(settings_file) is None:
            raise OutputExistsError(f"{settings_file}: not a retriever settings file; "
                                    "refusing to replace it")
        if not overwrite:
            raise OutputExistsError(f"{folder}: a retriever is already saved there; pass "
                                    "overwrite=True to replace it")
    body = {"format": _FORMAT, "format_version": _FORMAT_VERSION, "adapter": adapter,
            "settings": dict(settings)}
    try:
        json.dumps(body, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"retriever settings cannot be stored as JSON ({e})") from None
    index.save(folder / INDEX_FOLDER, overwrite=True)  # only ever an index of ours
    write_json(settings_file, body)
    return folder


def open_retriever(folder: str | os.PathLike, *, adapter: str) -> tuple[Path, dict[str, Any]]:
    """The index folder and the stored settings of a retriever saved by
    :func:`save_retriever`; a bare index folder (or a sharded index folder) gives itself
    and ``{}``.

    Raises:
        IndexNotFoundError: ``folder`` holds neither.
        ValueError: the settings file is of another version, or was written by the other
            framework's adapter (whose settings do not carry over: open the index folder
            inside it instead).
    """
    from s3_retriever.distributed.manifest import is_sharded_index
    from s3_retriever.engine import S3Index  # the engine imports the model stack

    folder = Path(folder)
    settings_file = folder / RETRIEVER_FILE
    if settings_file.is_file():
        stored = _read_settings(settings_file)
        if stored is None:
            raise ValueError(f"{settings_file}: not a retriever settings file")
        if stored.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"{settings_file}: format version "
                             f"{stored.get('format_version')!r}, expected {_FORMAT_VERSION}")
        if stored.get("adapter") != adapter:
            raise ValueError(f"{folder}: saved by the {stored.get('adapter')!r} adapter, whose "
                             f"settings do not apply here; open its index, "
                             f"{folder / INDEX_FOLDER}, instead")
        settings = stored.get("settings")
        if not isinstance(settings, dict):
            raise ValueError(f"{settings_file}: settings must be a JSON object")
        return folder / INDEX_FOLDER, settings
    if S3Index.exists(folder) or is_sharded_index(folder):
        return folder, {}
    raise IndexNotFoundError(f"{folder}: neither a saved retriever ({RETRIEVER_FILE}) nor an "
                             "index")


def load_index(path: str | os.PathLike, *, model: Any = None, device: str | None = None,
               dtype: str | None = None) -> S3Index | ShardedIndex:
    """Open the index at ``path``: an :class:`~s3_retriever.S3Index` folder, or a sharded
    index folder (``shards.json``) as a :class:`~s3_retriever.distributed.shards.ShardedIndex`
    searched in this process."""
    from s3_retriever.distributed.manifest import is_sharded_index
    from s3_retriever.distributed.shards import ShardedIndex
    from s3_retriever.engine import S3Index

    if is_sharded_index(path):
        return ShardedIndex.load(path, model=model, device=device, dtype=dtype)
    return S3Index.load(path, model=model, device=device, dtype=dtype)


def is_index(obj: Any) -> bool:
    """Whether the adapters can search ``obj``: an S3Index or a ShardedIndex."""
    from s3_retriever.distributed.shards import ShardedIndex
    from s3_retriever.engine import S3Index

    return isinstance(obj, (S3Index, ShardedIndex))


def split_settings(kwargs: Mapping[str, Any],
                   retriever_fields: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ``from_model`` call's keyword arguments as ``(index settings, retriever fields)``:
    the :class:`~s3_retriever.S3Settings` field names configure the new index (and are saved
    with it), the rest must be the adapter's ``retriever_fields``.

    Raises:
        TypeError: a name that is neither, listing both kinds.

    Example:
        >>> split_settings({"k": 3, "span_tokens": 64}, ["k", "filter"])
        ({'span_tokens': 64}, {'k': 3})
    """
    from s3_retriever.config import S3Settings

    names = {f.name for f in dataclasses.fields(S3Settings)}
    fields = set(retriever_fields)
    settings = {n: v for n, v in kwargs.items() if n in names}
    rest = {n: v for n, v in kwargs.items() if n not in names}
    unknown = sorted(set(rest) - fields)
    if unknown:
        raise TypeError(f"unknown arguments {unknown}: give retriever fields {sorted(fields)} "
                        f"or index settings {sorted(names)}")
    return settings, rest


def source_offset(metadata: Mapping[str, Any], key: str) -> int:
    """Where a pre-chunked text starts in its source document: ``metadata[key]`` when it is
    a non-negative int (e.g. ``start_index`` of LangChain's splitters), else 0."""
    value = metadata.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return 0


__all__ = ["INDEX_FOLDER", "RETRIEVER_FILE", "is_index", "load_index", "open_retriever",
           "save_retriever", "source_offset", "split_settings"]
