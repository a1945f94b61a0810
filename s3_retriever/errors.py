"""The library's exceptions: one base, :class:`S3Error`, and one class per kind of problem.

Each also derives from the builtin a caller would catch without knowing this library
(``ValueError``, ``TypeError``, ``KeyError``, ``FileNotFoundError``, ``FileExistsError``),
and each message names the problem and says what to do.

Example:
    >>> from s3_retriever.errors import InvalidInputError, S3Error
    >>> issubclass(InvalidInputError, S3Error) and issubclass(InvalidInputError, ValueError)
    True
"""

from __future__ import annotations


class S3Error(Exception):
    """Base class of every exception this library raises on purpose."""


class InvalidInputError(S3Error, TypeError, ValueError):
    """An argument of the wrong type or value; nothing was changed.

    It is both a ``TypeError`` and a ``ValueError``, so code written against either keeps
    working."""


class UnknownDocumentError(S3Error, KeyError):
    """A document id that is not (or no longer) in the index; nothing was changed."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class EmptyIndexError(S3Error, ValueError):
    """A search or answer on an index that holds no documents."""


class IndexFormatError(S3Error, ValueError):
    """A stored folder is corrupt, truncated, edited or of another format version.

    The message starts with the file concerned, then the problem.

    Example:
        >>> str(IndexFormatError("docs.jsonl line 3: not valid JSON"))
        'docs.jsonl line 3: not valid JSON'
    """


class IndexNotFoundError(S3Error, FileNotFoundError):
    """No index at the path given to a loader (missing, a file, or a folder of other files)."""


class OutputExistsError(S3Error, FileExistsError):
    """A save or ``--out`` target holds something this call may not replace: files that
    are not ours (never replaced), or an index of ours without ``overwrite=True``."""


class ModelLoadError(S3Error, ValueError):
    """A model could not be found or loaded; the message says what to do instead."""


class SAEError(S3Error, ValueError):
    """Any problem with an SAE: corrupt or missing file, bad config, shape or model mismatch."""


class ScanError(S3Error, RuntimeError):
    """A distributed scan failed or did not account for every document (the message says
    which); the output folder holds no ``shards.json``."""


class ShardUnavailableError(S3Error, RuntimeError):
    """A shard's Ray actor died (or could not start) and its call could not be completed:
    the search is abandoned rather than answered from the other shards."""


__all__ = [
    "EmptyIndexError", "IndexFormatError", "IndexNotFoundError", "InvalidInputError",
    "ModelLoadError", "OutputExistsError", "S3Error", "SAEError", "ScanError",
    "ShardUnavailableError", "UnknownDocumentError",
]
