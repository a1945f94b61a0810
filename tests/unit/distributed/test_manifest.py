"""s3_retriever.distributed.manifest: the sharded index's shards.json, and the promise that
the core never imports Ray."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from s3_retriever.distributed.manifest import (
    MANIFEST_FILE,
    is_sharded_index,
    read_manifest,
    shard_name,
    write_manifest,
)
from s3_retriever.errors import IndexFormatError, IndexNotFoundError

MODEL = {"id": "m", "fingerprint": "f"}


def _folder(tmp_path, names=("shard-00000", "shard-00001")):
    for n in names:
        (tmp_path / n).mkdir()
    write_manifest(tmp_path, list(names), documents=3, tokens=10, model=MODEL)
    return tmp_path


def test_round_trip_and_names(tmp_path):
    folder = _folder(tmp_path)
    body = read_manifest(folder)
    assert body["shards"] == ["shard-00000", "shard-00001"]
    assert (body["documents"], body["tokens"], body["model"]) == (3, 10, MODEL)
    assert is_sharded_index(folder) and not is_sharded_index(tmp_path / "shard-00000")
    assert shard_name(12) == "shard-00012"


@pytest.mark.parametrize("names", [["a", "a"], ["../up"], [""], ["x/y"]])
def test_bad_shard_names_are_refused(tmp_path, names):
    with pytest.raises(IndexFormatError, match="shard names"):
        write_manifest(tmp_path, names, documents=0, tokens=0, model=MODEL)
    assert not (tmp_path / MANIFEST_FILE).exists()


@pytest.mark.parametrize(("edit", "message"), [
    ({"format": "other"}, "not a sharded index manifest"),
    ({"format_version": 9}, "format version 9"),
    ({"shards": []}, "non-empty list"),
    ({"shards": ["shard-00000", "shard-00009"]}, "missing"),
    ({"documents": -1}, "'documents'"),
    ({"model": "m"}, "'model'"),
])
def test_a_damaged_manifest_is_named(tmp_path, edit, message):
    folder = _folder(tmp_path)
    path = folder / MANIFEST_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    with pytest.raises(IndexFormatError, match=message):
        read_manifest(folder)


def test_no_manifest(tmp_path):
    with pytest.raises(IndexNotFoundError, match="not a sharded index"):
        read_manifest(tmp_path)


def test_the_core_never_imports_ray():
    code = ("import sys, s3_retriever, s3_retriever.distributed, s3_retriever.distributed.scan, "
            "s3_retriever.distributed.serve, s3_retriever.distributed.merge; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
