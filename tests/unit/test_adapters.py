"""s3_retriever.adapters: a retriever saved as its index plus its settings, and offsets of
pre-chunked text (the parts the LangChain and LlamaIndex adapters share)."""

from __future__ import annotations

import json

import pytest

from s3_retriever import S3Index
from s3_retriever.adapters import (
    INDEX_FOLDER,
    RETRIEVER_FILE,
    open_retriever,
    save_retriever,
    source_offset,
)
from s3_retriever.config import S3Settings
from s3_retriever.errors import IndexNotFoundError, InvalidInputError, OutputExistsError
from tests.helpers import TEXTS, tiny_lm, tiny_saes


@pytest.fixture(scope="module")
def index(lm):
    idx = S3Index(tiny_lm(lm.tokenizer), tiny_saes(), S3Settings(chunk_tokens=16,
                                                                 context_tokens=4))
    idx.add_texts(TEXTS, ids=["curie", "amazon", "bach"], show_progress=False)
    return idx


def test_saved_settings_come_back_with_the_index(index, tmp_path):
    settings = {"k": 3, "filter": {"$or": [{"topic": "music"}, {"year": {"$gte": 1900}}]}}
    folder = save_retriever(index, tmp_path / "kb", adapter="langchain", settings=settings)
    assert sorted(p.name for p in folder.iterdir()) == [INDEX_FOLDER, RETRIEVER_FILE]
    path, stored = open_retriever(folder, adapter="langchain")
    assert path == folder / INDEX_FOLDER and stored == settings
    again = S3Index.load(path, model=index.lm)
    assert len(again) == len(index)
    assert [s.id for s in again.search("Who composed music?", k=2)] == \
        [s.id for s in index.search("Who composed music?", k=2)]


def test_overwrite_and_what_is_not_ours(index, tmp_path):
    folder = save_retriever(index, tmp_path / "kb", adapter="llamaindex", settings={"a": 1})
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        save_retriever(index, folder, adapter="llamaindex", settings={"a": 2}, overwrite=False)
    assert open_retriever(folder, adapter="llamaindex")[1] == {"a": 1}  # unchanged
    save_retriever(index, folder, adapter="llamaindex", settings={"a": 2})
    assert open_retriever(folder, adapter="llamaindex")[1] == {"a": 2}
    assert (folder / "notes.txt").read_text() == "mine"  # other files are kept

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / RETRIEVER_FILE).write_text('{"mine": true}')
    with pytest.raises(OutputExistsError, match="not a retriever settings file"):
        save_retriever(index, theirs, adapter="langchain", settings={})
    assert not (theirs / INDEX_FOLDER).exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputExistsError, match="not a folder"):
        save_retriever(index, a_file, adapter="langchain", settings={})
    with pytest.raises(InvalidInputError, match="JSON"):
        save_retriever(index, tmp_path / "nan", adapter="langchain",
                       settings={"w": float("nan")})
    assert not (tmp_path / "nan").exists()  # checked before anything is written


def test_open_refuses_what_it_cannot_read(index, tmp_path):
    folder = save_retriever(index, tmp_path / "kb", adapter="langchain", settings={"k": 2})
    with pytest.raises(ValueError, match="saved by the 'langchain' adapter.*s3_index"):
        open_retriever(folder, adapter="llamaindex")
    body = json.loads((folder / RETRIEVER_FILE).read_text())
    (folder / RETRIEVER_FILE).write_text(json.dumps({**body, "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99"):
        open_retriever(folder, adapter="langchain")
    (folder / RETRIEVER_FILE).write_text(json.dumps({**body, "settings": [1]}))
    with pytest.raises(ValueError, match="JSON object"):
        open_retriever(folder, adapter="langchain")
    (folder / RETRIEVER_FILE).write_text("{oops")
    with pytest.raises(ValueError, match="not a retriever settings file"):
        open_retriever(folder, adapter="langchain")
    with pytest.raises(IndexNotFoundError, match="neither a saved retriever"):
        open_retriever(tmp_path / "missing", adapter="langchain")
    # a bare index folder opens with no settings
    bare = index.save(tmp_path / "bare")
    assert open_retriever(bare, adapter="llamaindex") == (bare, {})


@pytest.mark.parametrize(("meta", "offset"), [
    ({"start_index": 519}, 519), ({"start_index": 0}, 0), ({}, 0),
    ({"start_index": -3}, 0), ({"start_index": True}, 0), ({"start_index": "7"}, 0),
    ({"start_index": 7.0}, 0),
])
def test_source_offset_takes_only_a_non_negative_int(meta, offset):
    assert source_offset(meta, "start_index") == offset
