"""DocRecord: the document table's rows (JSON round trip and validation)."""

from __future__ import annotations

import json

import pytest

from s3_retriever.index.documents import DocRecord


def test_docrecord_round_trip() -> None:
    d = DocRecord("ü-1", "Ça va? 東京.", {"src": "wiki", "tags": ["a", "é"], "n": 3}, 2, 4, 9,
                  [(0, 6), (7, 10)], deleted=True)
    row = d.to_dict()
    assert list(row) == ["doc_id", "text", "metadata", "segment", "token_start", "token_end",
                         "sentences", "deleted"]
    assert row["sentences"] == [[0, 6], [7, 10]]
    back = DocRecord.from_dict(json.loads(json.dumps(row, ensure_ascii=False)))
    assert back == d and back.sentences == [(0, 6), (7, 10)]


def test_metadata_must_be_json() -> None:
    with pytest.raises(ValueError, match=r"document 'bad': metadata key 'when'"):
        DocRecord("bad", "t", {"when": object()}).to_dict()
    with pytest.raises(ValueError, match=r"document 'bad': metadata key 'x'"):
        DocRecord("bad", "t", {"x": float("nan")}).to_dict()
    with pytest.raises(ValueError, match=r"metadata key 1 is not a str"):
        DocRecord("bad", "t", {1: "x"}).validate()
    with pytest.raises(ValueError, match="metadata must be a dict"):
        DocRecord("bad", "t", ["x"]).validate()  # type: ignore[arg-type]


@pytest.mark.parametrize("kw,match", [
    ({"doc_id": ""}, "non-empty str"),
    ({"doc_id": 3}, "non-empty str"),
    ({"text": b"x"}, "text must be a str"),
    ({"text": "\ud800"}, "text is not JSON-serialisable"),  # a lone surrogate: not UTF-8
    ({"token_start": 5, "token_end": 2}, r"bad token range \[5, 2\)"),
    ({"token_start": 1.5}, "token_start must be an int"),
    ({"segment": True}, "segment must be an int"),
    ({"sentences": [(0, 5)]}, "sentence bounds"),
    ({"sentences": [(2, 1)]}, "sentence bounds"),
    ({"sentences": [(0,)]}, "sentence bounds"),
    ({"deleted": 1}, "deleted must be a bool"),
])
def test_validation_names_the_document_and_field(kw, match) -> None:
    d = DocRecord(**{"doc_id": "s", "text": "ab", **kw})
    with pytest.raises(ValueError, match=match):
        d.validate()


def test_from_dict_requires_exactly_the_keys() -> None:
    row = DocRecord("a", "xy", sentences=[(0, 2)]).to_dict()
    with pytest.raises(ValueError, match="unknown keys"):
        DocRecord.from_dict({**row, "extra": 1})
    with pytest.raises(ValueError, match=r"missing keys \['deleted'\]"):
        DocRecord.from_dict({k: v for k, v in row.items() if k != "deleted"})
    with pytest.raises(ValueError, match="sentences must be a list"):
        DocRecord.from_dict({**row, "sentences": "0-2"})
    with pytest.raises(ValueError, match="sentence bounds"):
        DocRecord.from_dict({**row, "sentences": [[0, 3]]})
    with pytest.raises(ValueError, match="JSON object"):
        DocRecord.from_dict([row])  # type: ignore[arg-type]
