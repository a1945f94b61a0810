"""Merge a sharded index into one ordinary index (one that opens with
:meth:`S3Index.load <s3_retriever.S3Index.load>`).

Each shard's segments and document records are appended in the manifest's order, so the
merged index holds the same documents, in the same order, with the same codes: it ranks
exactly as the sharded index. The model is not loaded: the shards' files already say
everything (model fingerprint, SAEs, heads, settings), and all shards must agree on them.
The codes are read memory-mapped and streamed into the new folder; the merge needs memory
for the token tables and the document texts, not for the codes.

Example:
    >>> from s3_retriever.distributed.merge import merge_shards
    >>> merge_shards("corpus.s3", "corpus-merged.s3")  # doctest: +SKIP
    PosixPath('corpus-merged.s3')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from s3_retriever.distributed.manifest import read_manifest
from s3_retriever.errors import IndexFormatError

__all__ = ["merge_shards"]


def merge_shards(sharded: str | os.PathLike, out: str | os.PathLike, *,
                 overwrite: bool = False, show_progress: bool = True) -> Path:
    """Write the sharded index in the folder ``sharded`` as one index at ``out``; returns
    ``out``.

    Deleted documents of a shard are dropped (its segments compacted in memory first).

    Raises:
        IndexNotFoundError: ``sharded`` holds no ``shards.json``.
        IndexFormatError: a shard does not verify, or the shards disagree on the model, the
            SAEs, the heads or the settings.
        OutputExistsError: ``out`` holds other files, or an index without ``overwrite``.
    """
    from s3_retriever import storage
    from s3_retriever.index import persistence
    from s3_retriever.index.segments import InvertedIndex, Segment

    sharded = Path(sharded)
    manifest = read_manifest(sharded)
    storage.check_target(out, persistence.INDEX_KIND, overwrite)  # before the long part
    merged: InvertedIndex | None = None
    first: dict[str, Any] = {}
    for name in tqdm(manifest["shards"], desc="merging", unit="shard",
                     disable=not show_progress):
        with persistence.open_saved(sharded / name) as saved:
            same = {"model": saved.entry("model"), "settings": saved.entry("settings"),
                    "saes": saved.entry("saes"), "heads": saved.heads()}
            if not first:
                first = {**same, "sae_objects": saved.saes()}
            for key, value in same.items():
                if value != first[key]:
                    raise IndexFormatError(f"{sharded / name}: its {key} differ from the "
                                           f"first shard's ({manifest['shards'][0]}); shards "
                                           "of one index share model, SAEs, heads, settings")
            store = saved.store(mmap=True)
        if len(store.live_rows()) != len(store.docs):
            store.compact()  # drop tombstoned documents
        if merged is None:
            merged = InvertedIndex(list(store.hookpoints), store.num_latents,
                                   store.bias_columns)
        _append(merged, store, Segment)
    assert merged is not None  # read_manifest: at least one shard
    if len(merged) != manifest["documents"]:
        raise IndexFormatError(f"{sharded / 'shards.json'}: says {manifest['documents']} "
                               f"documents, the shards hold {len(merged)}")
    return persistence.save(out, merged, first["sae_objects"], first["heads"],
                            {"model": first["model"], "settings": first["settings"]},
                            overwrite=overwrite)


def _append(merged: Any, store: Any, segment_cls: Any) -> None:
    """Append every segment of ``store`` (with its documents) to ``merged``."""
    docs = store.docs
    for s, seg in enumerate(store.segments):
        rows = [r for r, d in enumerate(docs) if d.segment == s]
        if not rows:
            continue
        local = np.full(len(docs), -1, dtype=np.int64)
        local[rows] = np.arange(len(rows))
        piece = segment_cls(dict(seg.codes), local[np.asarray(seg.token_doc)],
                            seg.token_char, dict(seg.bias))
        merged.add_segment(piece, [docs[r] for r in rows])
