"""Saved indexes: the store's arrays, the SAEs and heads, and the manifest, in one committed
folder (see :mod:`s3_retriever.storage` for the commit protocol and what is verified).

A generation folder holds::

    manifest.json                        format, model, SAE hashes, settings, counts, files
    docs.jsonl                           one DocRecord per line, table order
    segments.json                        layout version, streams, per-segment sizes
    tokens/seg000000.doc.npy             int32 [n]          token -> doc-table row
    tokens/seg000000.char.npy            int32 [n, 2]       token -> char start, end
    codes/seg000000/<stream>.ids.npy     uint16|int32 [n, k]  features per token
    codes/seg000000/<stream>.acts.npy    float16 [n, k]       their activations
    codes/seg000000/<stream>.bias.npy    float16 [n, m]       exact query-mean columns
    saes/<hookpoint>/                    cfg.json + sae.safetensors
    heads.json                           the scoring heads
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from s3_retriever import storage
from s3_retriever.errors import IndexFormatError, SAEError
from s3_retriever.index.codes import Codes, id_dtype
from s3_retriever.index.documents import DocRecord
from s3_retriever.index.segments import InvertedIndex, Segment, _doc_token_problem, _segment_problem
from s3_retriever.sae.coder import TopKSAE
from s3_retriever.sae.io import load_saes, save_saes
from s3_retriever.storage import load_npy, read_json, read_jsonl, save_npy, write_json, write_jsonl
from s3_retriever.validate import is_int

INDEX_KIND = "s3-retriever-index"
FORMAT_VERSION = 3
"""Format 1: one folder with a root manifest; 2: committed generations, CSR postings on
disk; 3: the per-token code store on disk instead of postings."""
LAYOUT_VERSION = 2

__all__ = ["FORMAT_VERSION", "INDEX_KIND", "SavedIndex", "is_saved_index", "open_saved",
           "read_store", "save", "write_store"]


def write_store(store: InvertedIndex, folder: Path) -> None:
    """Write the store's files into ``folder`` (inside a commit; no manifest)."""
    write_jsonl(folder / "docs.jsonl", [d.to_dict() for d in store.docs])
    write_json(folder / "segments.json", {
        "layout_version": LAYOUT_VERSION,
        "streams": list(store.hookpoints),
        "num_latents": store.num_latents,
        "bias_columns": store.bias_columns,
        "segments": [{"n_tokens": seg.n_tokens,
                      "k": {h: seg.codes[h].k for h in store.hookpoints}}
                     for seg in store.segments],
    })
    for s, seg in enumerate(store.segments):
        save_npy(folder / "tokens" / f"seg{s:06d}.doc.npy", seg.token_doc)
        save_npy(folder / "tokens" / f"seg{s:06d}.char.npy", seg.token_char)
        for h in store.hookpoints:
            save_npy(folder / "codes" / f"seg{s:06d}" / f"{h}.ids.npy", seg.codes[h].ids)
            save_npy(folder / "codes" / f"seg{s:06d}" / f"{h}.acts.npy", seg.codes[h].acts)
        for h in store.bias_columns:
            save_npy(folder / "codes" / f"seg{s:06d}" / f"{h}.bias.npy", seg.bias[h])


def read_store(folder: str | os.PathLike, mmap: bool = True, check: bool = True
               ) -> InvertedIndex:
    """Read a store written by :func:`write_store`, validating every array and the doc table
    (``check`` adds the O(n k) content checks of the codes). Arrays are memory-mapped
    read-only with ``mmap``.

    Raises:
        IndexFormatError: a file is missing, corrupt or inconsistent (named in the message),
            or the layout version differs.
    """
    folder = Path(folder)

    def where(rel: str) -> str:
        return (folder / rel).as_posix()

    meta = read_json(folder / "segments.json")
    seg_file = where("segments.json")
    if not isinstance(meta, dict) or meta.get("layout_version") != LAYOUT_VERSION:
        raise IndexFormatError(f"{seg_file}: not a layout {LAYOUT_VERSION} segments file")
    try:
        index = InvertedIndex(meta["streams"], meta["num_latents"], meta.get("bias_columns"))
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise IndexFormatError(f"{seg_file}: {e}") from None
    streams, sizes = index.hookpoints, index.num_latents
    seg_meta = meta.get("segments")
    if not isinstance(seg_meta, list):
        raise IndexFormatError(f"{seg_file}: 'segments' must be a list")
    for s, sm in enumerate(seg_meta):
        if (not isinstance(sm, dict) or not is_int(sm.get("n_tokens"))
                or not 0 <= sm["n_tokens"] < 2**32 or not isinstance(sm.get("k"), dict)
                or set(sm["k"]) != set(streams)
                or not all(is_int(v) and v > 0 for v in sm["k"].values())):
            raise IndexFormatError(f"{seg_file}: segment {s}: bad n_tokens or k")

    docs: list[DocRecord] = []
    for line, row in enumerate(read_jsonl(folder / "docs.jsonl"), start=1):
        try:
            rec = DocRecord.from_dict(row)
        except ValueError as e:
            raise IndexFormatError(f"{where('docs.jsonl')} line {line}: {e}") from None
        if not 0 <= rec.segment < len(seg_meta):
            raise IndexFormatError(f"{where('docs.jsonl')} line {line}: segment "
                                   f"{rec.segment} does not exist ({len(seg_meta)} segments)")
        docs.append(rec)
    live: dict[str, int] = {}
    for row, d in enumerate(docs):
        if not d.deleted:
            if d.doc_id in live:
                raise IndexFormatError(f"{where('docs.jsonl')} line {row + 1}: live document "
                                       f"id {d.doc_id!r} repeated")
            live[d.doc_id] = row

    seg_of_row = np.array([d.segment for d in docs], dtype=np.int64)
    segments = []
    for s, sm in enumerate(seg_meta):
        n = sm["n_tokens"]
        doc_rel, char_rel = f"tokens/seg{s:06d}.doc.npy", f"tokens/seg{s:06d}.char.npy"
        token_doc = load_npy(folder / doc_rel, mmap, np.int32, shape=(n,))
        token_char = load_npy(folder / char_rel, mmap, np.int32, shape=(n, 2))
        codes = {}
        for h in streams:
            rel = f"codes/seg{s:06d}/{h}"
            k = sm["k"][h]
            ids = load_npy(folder / f"{rel}.ids.npy", mmap, id_dtype(sizes[h]), shape=(n, k))
            acts = load_npy(folder / f"{rel}.acts.npy", mmap, np.float16, shape=(n, k))
            try:
                codes[h] = Codes(ids, acts, sizes[h], check=check)
            except ValueError as e:
                part = str(e).split(":", 1)[0]
                raise IndexFormatError(f"{where(f'{rel}.{part}.npy')}: "
                                       f"{str(e).split(': ', 1)[-1]}") from None
        bias = {h: load_npy(folder / f"codes/seg{s:06d}/{h}.bias.npy", mmap, np.float16,
                            shape=(n, m)) for h, m in index.bias_columns.items()}
        problem = _segment_problem(codes, token_doc, token_char, bias if check else None)
        if problem is not None:
            part = problem[0]
            rel = (char_rel if part == "token_char" else doc_rel if part == "token_doc"
                   else f"codes/seg{s:06d}/{part}.bias.npy")
            raise IndexFormatError(f"{where(rel)}: {problem[1]}")
        if n and int(token_doc.max()) >= len(docs):
            raise IndexFormatError(f"{where(doc_rel)}: refers to doc-table row "
                                   f"{int(token_doc.max())}, docs.jsonl has {len(docs)}")
        rows = np.flatnonzero(seg_of_row == s)
        local = np.full(len(docs), -1, dtype=np.int64)
        local[rows] = np.arange(len(rows))
        seg_docs = [docs[r] for r in rows]
        problem = _doc_token_problem(
            local[token_doc] if n else np.zeros(0, dtype=np.int64), token_char,
            [d.doc_id for d in seg_docs],
            np.array([d.token_start for d in seg_docs], dtype=np.int64),
            np.array([d.token_end for d in seg_docs], dtype=np.int64),
            np.array([len(d.text) for d in seg_docs], dtype=np.int64),
        )
        if problem is not None:
            raise IndexFormatError(f"{where(doc_rel)} disagrees with docs.jsonl: {problem}")
        segments.append(Segment._trusted(codes, token_doc, token_char, bias))
    index._restore(segments, docs)
    return index


def save(path: str | os.PathLike, store: InvertedIndex, saes: dict[str, TopKSAE],
         heads: list[list[Any]], manifest: dict[str, Any], *, overwrite: bool = False) -> Path:
    """Commit an index folder at ``path``: the store, the SAEs, the heads file and the
    manifest entries given (format, counts and SAE hashes are added here).

    Raises:
        OutputExistsError: see :func:`s3_retriever.storage.check_target`.
    """
    with storage.commit(path, INDEX_KIND, overwrite=overwrite) as c:
        write_store(store, c.folder)
        save_saes(saes, c.folder / "saes")
        write_json(c.folder / "heads.json", {"heads": heads})
        c.manifest.update({
            "format_version": FORMAT_VERSION, **manifest,
            "saes": {hp: sae.content_hash() for hp, sae in sorted(saes.items())},
            "documents": len(store), "tokens": int(store.n_tokens),
        })
    return Path(path)


def is_saved_index(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds an index folder of ours (not verified)."""
    return storage.folder_state(path, INDEX_KIND) == "ours"


class SavedIndex:
    """A verified saved index, open for reading (see :func:`open_saved`)."""

    def __init__(self, snapshot: storage.Snapshot, shown: str) -> None:
        self.folder = snapshot.folder
        self.manifest = snapshot.manifest
        self.where = f"{shown}/{snapshot.folder.name}/{storage.MANIFEST_NAME}"

    def entry(self, *keys: str) -> Any:
        """A manifest entry (``entry("model", "id")``), or IndexFormatError naming it."""
        value: Any = self.manifest
        try:
            for key in keys:
                value = value[key]
        except (KeyError, TypeError):
            raise IndexFormatError(f"{self.where}: no {'.'.join(keys)} entry") from None
        return value

    def saes(self) -> dict[str, TopKSAE]:
        """The SAEs, checked against the manifest's hashes."""
        try:
            saes = load_saes(self.folder / "saes", device="cpu")
        except SAEError as e:
            raise IndexFormatError(f"{self.folder / 'saes'}: {e}") from None
        if {hp: sae.content_hash() for hp, sae in saes.items()} != self.entry("saes"):
            raise IndexFormatError(f"{self.folder / 'saes'}: the SAEs do not match the "
                                   "manifest's hashes")
        return saes

    def heads(self) -> list[list[Any]]:
        heads = read_json(self.folder / "heads.json")
        if not isinstance(heads, dict) or not isinstance(heads.get("heads"), list):
            raise IndexFormatError(f"{self.folder / 'heads.json'}: no 'heads' list")
        return heads["heads"]

    def store(self, mmap: bool = True) -> InvertedIndex:
        """The store, with its counts checked against the manifest's."""
        store = read_store(self.folder, mmap=mmap)
        counts = (self.entry("documents"), self.entry("tokens"))
        if (len(store), store.n_tokens) != counts:
            raise IndexFormatError(f"{self.where}: says {counts[0]} documents and {counts[1]} "
                                   f"tokens, the data holds {len(store)} and {store.n_tokens}")
        return store


@contextlib.contextmanager
def open_saved(path: str | os.PathLike) -> Iterator[SavedIndex]:
    """Open the index folder at ``path``, verified byte for byte (no save runs meanwhile).

    Raises:
        IndexNotFoundError: nothing at ``path``, a file, or a folder without an index.
        IndexFormatError: anything that does not verify, or another format version.
    """
    with storage.open_committed(path, INDEX_KIND, format_version=FORMAT_VERSION) as snap:
        yield SavedIndex(snap, Path(path).as_posix())
