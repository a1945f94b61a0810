"""The document table: one :class:`DocRecord` per document (id, text, metadata, token range,
sentence bounds, tombstone), validated so that it always saves as UTF-8 JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from s3_retriever.validate import is_int as _is_int

__all__ = ['DocRecord']


_DOC_KEYS = ("doc_id", "text", "metadata", "segment", "token_start", "token_end", "sentences",
             "deleted")

def _check_jsonable(value: Any, what: str) -> None:
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} is not JSON-serialisable ({e})") from None

@dataclass
class DocRecord:
    """One document of the doc table.

    Attributes:
        doc_id: unique among live documents.
        text: the full text; ``token_char`` bounds and ``sentences`` index into it.
        metadata: JSON-serialisable, string keys.
        segment: the segment holding its tokens (set by :meth:`InvertedIndex.add_segment`).
        token_start, token_end: its token range within the segment (end exclusive).
        sentences: character bounds ``(start, end)`` of its sentences.
        deleted: tombstone.

    Example:
        >>> d = DocRecord("a", "Hé.", {"lang": "fr"}, 0, 0, 2, [(0, 3)])
        >>> DocRecord.from_dict(d.to_dict()) == d
        True
    """

    doc_id: str
    text: str
    metadata: dict = field(default_factory=dict)
    segment: int = -1
    token_start: int = 0
    token_end: int = 0
    sentences: list[tuple[int, int]] = field(default_factory=list)
    deleted: bool = False

    def validate(self) -> None:
        """Check types, bounds and that the record can be saved as UTF-8 JSON.

        Raises:
            ValueError: naming the document id and the field (or metadata key).

        Example:
            >>> try:
            ...     DocRecord("a", "x", {"v": object()}).validate()
            ... except ValueError as e:
            ...     print(str(e)[:35])
            document 'a': metadata key 'v' is n
        """
        if not isinstance(self.doc_id, str) or not self.doc_id:
            raise ValueError(f"document id must be a non-empty str, got {self.doc_id!r}")
        who = f"document {self.doc_id!r}"
        _check_jsonable(self.doc_id, f"{who}: the id")
        if not isinstance(self.text, str):
            raise ValueError(f"{who}: text must be a str, got {type(self.text).__name__}")
        _check_jsonable(self.text, f"{who}: text")
        if not isinstance(self.metadata, dict):
            raise ValueError(f"{who}: metadata must be a dict, got {type(self.metadata).__name__}")
        for key, value in self.metadata.items():
            if not isinstance(key, str):
                raise ValueError(f"{who}: metadata key {key!r} is not a str")
            _check_jsonable(value, f"{who}: metadata key {key!r}")
        for name in ("segment", "token_start", "token_end"):
            if not _is_int(getattr(self, name)):
                raise ValueError(f"{who}: {name} must be an int, got {getattr(self, name)!r}")
        if not 0 <= self.token_start <= self.token_end:
            raise ValueError(f"{who}: bad token range [{self.token_start}, {self.token_end})")
        if not isinstance(self.deleted, bool):
            raise ValueError(f"{who}: deleted must be a bool")
        for s in self.sentences:
            if (not isinstance(s, (tuple, list)) or len(s) != 2 or not all(map(_is_int, s))
                    or not 0 <= s[0] <= s[1] <= len(self.text)):
                raise ValueError(f"{who}: bad sentence bounds {s!r} for a text of "
                                 f"{len(self.text)} characters")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (validated; see :meth:`validate`).

        Example:
            >>> DocRecord("a", "x").to_dict()["sentences"]
            []
        """
        self.validate()
        return {
            "doc_id": self.doc_id,
            "text": self.text,
            "metadata": self.metadata,
            "segment": int(self.segment),
            "token_start": int(self.token_start),
            "token_end": int(self.token_end),
            "sentences": [[int(a), int(b)] for a, b in self.sentences],
            "deleted": self.deleted,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DocRecord:
        """Inverse of :meth:`to_dict`; every key is required, unknown keys are refused.

        Raises:
            ValueError: missing/unknown keys or bad values.

        Example:
            >>> DocRecord.from_dict(DocRecord("a", "xy", sentences=[(0, 2)]).to_dict()).sentences
            [(0, 2)]
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        missing = [k for k in _DOC_KEYS if k not in d]
        unknown = [k for k in d if k not in _DOC_KEYS]
        if missing or unknown:
            raise ValueError(f"document record: missing keys {missing}, unknown keys {unknown}")
        sentences = d["sentences"]
        if not isinstance(sentences, list):
            raise ValueError(f"document {d['doc_id']!r}: sentences must be a list")
        rec = cls(
            doc_id=d["doc_id"], text=d["text"], metadata=d["metadata"], segment=d["segment"],
            token_start=d["token_start"], token_end=d["token_end"],
            sentences=[tuple(s) if isinstance(s, list) else s for s in sentences],
            deleted=d["deleted"],
        )
        rec.validate()
        return rec
