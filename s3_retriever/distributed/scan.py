"""Index a corpus on a Ray cluster: Ray Data feeds batches of documents to a pool of actors,
each of which loads the model and SAEs once and writes every batch it scans as an ordinary
saved index (a shard); the driver then checks that every document landed exactly once and
writes the sharded index's ``shards.json`` (:mod:`s3_retriever.distributed.manifest`).

Documents are scanned independently of each other, so a shard holds exactly the codes a
single-process index would hold for its documents: the sharded index (and the index
:func:`~s3_retriever.distributed.merge.merge_shards` makes of it) ranks exactly as one
``S3Index`` over the same documents in the same order.

The driver cuts the documents into batches, in order (Ray Data's own batches need not be
contiguous runs of the input), and each batch becomes the shard named after its number:
the shards in order hold the documents in input order.

Faults: a worker that dies is restarted by Ray and its batch is scanned again (Ray Data's
default for actor pools: actors restart and their tasks are retried without a limit). A
retried batch overwrites its own shard folder, and the driver keeps only the folders of
batches that finished.

Needs ``pip install "s3-retriever[ray]"``; Ray is imported only when a function here runs.

Example:
    >>> from s3_retriever.distributed.scan import index_corpus
    >>> index_corpus(["a.txt", "b.txt"], "corpus.s3", workers=2)  # doctest: +SKIP
    PosixPath('corpus.s3')
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from s3_retriever import validate
from s3_retriever.config import DEFAULT_MODEL
from s3_retriever.distributed.manifest import (
    MANIFEST_FILE,
    is_sharded_index,
    shard_name,
    write_manifest,
)
from s3_retriever.errors import InvalidInputError, OutputExistsError, S3Error, ScanError

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_BATCH_DOCS", "KILL_MARKER_ENV", "ScanError", "document_id", "index_corpus"]

#: Documents per batch (one shard each) unless ``batch_size`` says otherwise.
DEFAULT_BATCH_DOCS = 64
#: Tests only: a worker that finds the file this variable names removes it and dies
#: (``os._exit``) before scanning its batch, as a killed machine would.
KILL_MARKER_ENV = "S3_RETRIEVER_TEST_KILL_MARKER"
_SHARD_RE = re.compile(r"^shard-[0-9]{5,}$")


def document_id(text: str) -> str:
    """The id a document without one gets: a stable hash of its text (the same text gets
    the same id on every run and machine).

    >>> document_id("Marie Curie was born in Warsaw.")
    'doc-e708d4b87ace1b5170e9d791'
    """
    return "doc-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


# ---------------------------------------------------------------------------- the inputs
def _rows(data: Sequence[Any]) -> list[dict[str, str]]:
    """Rows ``{"id", "text", "path", "metadata"}`` (metadata as JSON) for a list of file
    paths or of dicts with ``text`` (or ``path``), ``id`` and ``metadata``; checked here,
    before anything runs on the cluster."""
    if isinstance(data, (str, bytes, os.PathLike, Mapping)) or not isinstance(data, Iterable):
        raise InvalidInputError("data must be a list of file paths or of dicts, or a "
                                f"ray.data.Dataset, not {type(data).__name__}")
    rows = []
    for i, d in enumerate(data):
        if isinstance(d, (str, os.PathLike)):
            d = {"path": d}
        if not isinstance(d, Mapping):
            raise InvalidInputError(f"data[{i}] must be a file path or a dict with 'text', "
                                    f"got {type(d).__name__}")
        unknown = sorted(set(d) - {"text", "path", "id", "metadata"})
        if unknown:
            raise InvalidInputError(f"data[{i}]: unknown keys {unknown} (text, path, id, "
                                    "metadata)")
        text, path = d.get("text"), d.get("path")
        if (text is None) == (path is None):
            raise InvalidInputError(f"data[{i}]: give 'text' or 'path' (one of them)")
        meta = validate.metadata(d.get("metadata"), f"data[{i}] metadata")
        if path is not None:
            p = Path(path).expanduser()
            if not p.is_file():
                raise InvalidInputError(f"{path}: no such file")
            path = str(p.resolve())
            meta = {"source": str(Path(d["path"])), **meta} if "metadata" not in d else meta
            doc = d.get("id", str(d["path"]))
        else:
            text = validate.text(text, f"data[{i}] text")
            doc = d.get("id") if d.get("id") is not None else document_id(text)
        rows.append({"id": validate.doc_id(doc, f"data[{i}] id"), "text": text or "",
                     "path": path or "", "metadata": json.dumps(meta, ensure_ascii=False)})
    return rows


def _check_unique(ids: Sequence[str]) -> None:
    dup = sorted(i for i, c in Counter(ids).items() if c > 1)
    if dup:
        raise InvalidInputError(
            f"{len(dup)} document id(s) repeat: {dup[:5]}; give every document its own id "
            "(documents without one are named by a hash of their text, so a text that "
            "appears twice needs ids)")


def _dataset_rows(ds: Any) -> list[dict[str, str]]:
    """The rows of a Ray Dataset with columns ``text`` (+ ``id``, ``metadata``: a dict or
    its JSON) in the dataset's order, as :func:`_rows` makes them."""
    columns = set(ds.columns() or [])
    if "text" not in columns:
        raise InvalidInputError(f"the dataset needs a 'text' column, it has {sorted(columns)}")
    unknown = sorted(columns - {"text", "id", "metadata"})
    if unknown:
        raise InvalidInputError(f"the dataset has unknown columns {unknown} (text, id, "
                                "metadata)")
    rows = []
    for batch in ds.iter_batches(batch_format="numpy", batch_size=1024):
        for j, text in enumerate(batch["text"]):
            doc: dict[str, Any] = {"text": text}
            if "id" in batch and batch["id"][j] is not None and str(batch["id"][j]):
                doc["id"] = str(batch["id"][j])
            meta = batch["metadata"][j] if "metadata" in batch else None
            if isinstance(meta, str):
                meta = json.loads(meta)
            if meta is not None:
                doc["metadata"] = meta
            rows.append(doc)
    return _rows(rows)


def _batches(rows: list[dict[str, str]], batch_size: int) -> list[dict[str, Any]]:
    """The documents cut into batches, in order: ``{"shard": name, "docs": JSON}``."""
    return [{"shard": shard_name(i), "docs": json.dumps(rows[at:at + batch_size],
                                                        ensure_ascii=False)}
            for i, at in enumerate(range(0, len(rows), batch_size))]


# ---------------------------------------------------------------------------- the workers
class _ScanWorker:
    """A Ray Data actor: the model and SAEs loaded once; each batch -> one saved shard."""

    def __init__(self, out: str, model: str, saes: str | None, device: str | None,
                 dtype: str | None, settings: dict[str, Any]) -> None:
        from s3_retriever.engine import S3Index
        from s3_retriever.model.loading import load_model

        lm = load_model(model, device, dtype)
        self.proto = S3Index.from_model(lm, saes=saes, **settings)
        self.heads = [h.to_entry() for h in self.proto.heads]
        self.out = Path(out)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _die_if_marked()
        rows = [self._scan(str(name), json.loads(docs))
                for name, docs in zip(batch["shard"], batch["docs"])]
        return {k: np.array([r[k] for r in rows]) for k in rows[0]}

    def _scan(self, name: str, docs: list[dict[str, str]]) -> dict[str, Any]:
        """Scan one batch into the shard folder ``name``; what the driver checks."""
        from s3_retriever.cli import read_text_file
        from s3_retriever.engine import S3Index

        ids = [d["id"] for d in docs]
        lm = self.proto.lm
        row = {"shard": name, "ids": json.dumps(ids), "documents": len(ids), "tokens": 0,
               "model_id": lm.model_id, "fingerprint": lm.fingerprint, "error": ""}
        try:
            texts = [validate.text(read_text_file(d["path"]) if d["path"] else d["text"],
                                   f"document {d['id']!r}") for d in docs]
            metas = [json.loads(d["metadata"]) for d in docs]
            index = S3Index(lm, self.proto.saes, self.proto.settings, heads=self.heads)
            index.add_texts(texts, metas, ids, show_progress=False)
            index.save(self.out / name, overwrite=True)
            row["tokens"] = int(index.index.n_tokens)
        except S3Error as e:  # a bad document: reported to the driver, not retried
            row["error"] = f"{type(e).__name__}: {e}"
        return row


def _die_if_marked() -> None:
    """Tests only (see :data:`KILL_MARKER_ENV`): die once, as a killed worker would."""
    marker = os.environ.get(KILL_MARKER_ENV)
    if not marker:
        return
    try:
        os.remove(marker)
    except FileNotFoundError:
        return
    Path(marker + ".fired").write_text(str(os.getpid()))
    os._exit(1)


# ---------------------------------------------------------------------------- the driver
@contextlib.contextmanager
def _ray_session(address: str | None) -> Iterator[Any]:
    """Ray, connected to ``address`` (or the running session, or a new local one); a
    session started here is shut down after."""
    try:
        import ray
    except ImportError:
        raise InvalidInputError('the distributed scan needs Ray: pip install '
                                '"s3-retriever[ray]"') from None
    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        started = True
    elif address not in (None, "auto"):
        logger.warning("Ray is already initialized; ignoring address=%r", address)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _check_out(out: Path, overwrite: bool) -> list[Path]:
    """The shard folders already in ``out`` (leftovers); refuses a folder of other files,
    and a sharded index unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: is a file; give a new or empty folder")
    if not out.exists():
        return []
    if is_sharded_index(out) and not overwrite:
        raise OutputExistsError(f"{out}: already holds a sharded index; pass overwrite=True "
                                "(--overwrite on the command line) to replace it")
    entries = [e for e in out.iterdir() if e.name != MANIFEST_FILE]
    foreign = sorted(e.name for e in entries if not (e.is_dir() and _SHARD_RE.match(e.name)))
    if foreign:
        raise OutputExistsError(f"{out}: holds other files ({', '.join(foreign[:3])}); "
                                "refusing to write a sharded index there: choose a new or "
                                "empty folder")
    return entries


def _collect(results: list[dict[str, Any]], ids: list[str]) -> tuple[list[str], int, dict]:
    """The shard names in input order, the token count and the model, after checking that
    every input document is in exactly one shard."""
    errors = [r["error"] for r in results if r["error"]]
    if errors:
        kind, _, message = errors[0].partition(": ")
        more = f" (and {len(errors) - 1} more batch(es))" if len(errors) > 1 else ""
        cls = InvalidInputError if kind == "InvalidInputError" else ScanError
        raise cls(f"{message}{more}")
    shards: dict[str, dict[str, Any]] = {}
    for r in results:  # a batch reported twice wrote one folder: count it once
        if r["shard"] in shards and shards[r["shard"]]["ids"] != r["ids"]:
            raise ScanError(f"two batches wrote shard {r['shard']} with different documents")
        shards[r["shard"]] = r
    position = {d: i for i, d in enumerate(ids)}
    seen = Counter(d for r in shards.values() for d in json.loads(r["ids"]))
    twice = sorted((d for d, c in seen.items() if c > 1), key=lambda d: position.get(d, -1))
    missing = [d for d in ids if d not in seen]
    unknown = sorted(d for d in seen if d not in position)
    if twice or missing or unknown:
        raise ScanError(f"the scan did not index every document exactly once: "
                        f"{len(missing)} missing {missing[:5]}, {len(twice)} repeated "
                        f"{twice[:5]}, {len(unknown)} unknown {unknown[:5]}")
    models = {(r["model_id"], r["fingerprint"]) for r in shards.values()}
    if len(models) != 1:
        raise ScanError(f"the workers loaded different models: {sorted(models)}")
    (mid, fp), = models
    order = sorted(shards, key=lambda s: int(s.split("-")[1]))  # batch number = input order
    tokens = sum(int(shards[s]["tokens"]) for s in order)
    return order, tokens, {"id": mid, "fingerprint": fp}


def index_corpus(data: Any, out: str | os.PathLike, *, model: str = DEFAULT_MODEL,
                 saes: str | os.PathLike | None = None, workers: int = 2,
                 gpus_per_worker: float = 0, cpus_per_worker: float = 1,
                 batch_size: int = DEFAULT_BATCH_DOCS, address: str | None = None,
                 overwrite: bool = False, show_progress: bool = True, merge: bool = False,
                 device: str | None = None, dtype: str | None = None,
                 **settings: Any) -> Path:
    """Scan ``data`` on Ray into a sharded index at ``out`` (or, with ``merge``, one
    ordinary index); returns ``out``.

    Args:
        data: file paths (UTF-8 text; id = the path as given, metadata ``{"source": path}``),
            dicts ``{"text", "id"?, "metadata"?}`` (or ``"path"`` instead of ``"text"``), or
            a ``ray.data.Dataset`` with those columns (metadata: dicts or their JSON; its
            rows pass through the driver, which cuts them into batches in order: for a
            corpus larger than the driver's memory, give file paths). Documents without an
            id get :func:`document_id`; ids must be unique (checked before the scan).
        out: a new or empty folder (or, with ``overwrite``, a sharded index to replace).
            Every worker writes its shards there: on a cluster, a path every node sees
            (a shared file system); so must the input files and ``saes`` be.
        model, saes, device, dtype: as for :meth:`S3Index.from_model
            <s3_retriever.S3Index.from_model>` (a model name or path, loaded by each worker).
        workers: actors scanning in parallel (each holds a copy of the model).
        gpus_per_worker, cpus_per_worker: what Ray reserves for each actor.
        batch_size: documents per batch; each batch becomes one shard.
        address: the Ray cluster (``"auto"``: the one ``ray start`` runs here); default: the
            running Ray session, else a new local one (shut down afterwards).
        merge: write one ordinary index (:func:`~s3_retriever.distributed.merge.merge_shards`)
            at ``out`` instead of a sharded one; the shards live beside it meanwhile.
        **settings: any :class:`~s3_retriever.config.S3Settings` field.

    Raises:
        InvalidInputError: bad data (a repeated id, an empty text, a missing file); when the
            problem is only found by a worker (an empty file), the shards written are
            removed.
        OutputExistsError: ``out`` holds other files, or an index without ``overwrite``.
        ScanError: the scan failed, or did not account for every document exactly once.
    """
    from s3_retriever import storage
    from s3_retriever.config import S3Settings
    from s3_retriever.index.persistence import INDEX_KIND

    if not isinstance(model, str):
        raise InvalidInputError("model must be a name or path (each worker loads it), not "
                                f"{type(model).__name__}")
    if saes is not None and not isinstance(saes, (str, os.PathLike)):
        raise InvalidInputError("saes must be a folder (each worker loads it), not "
                                f"{type(saes).__name__}")
    workers = validate.positive_int(workers, "workers")
    batch_size = validate.positive_int(batch_size, "batch_size")
    S3Settings.from_dict(settings)  # a bad setting fails here, not in every worker
    out = Path(out).expanduser().resolve()
    if merge:
        storage.check_target(out, INDEX_KIND, overwrite)
        shards_out = out.with_name(out.name + ".shards")
        leftovers = _check_out(shards_out, True)
    else:
        shards_out = out
        leftovers = _check_out(out, overwrite)
    saes = str(Path(saes).expanduser().resolve()) if saes is not None else None

    with _ray_session(address) as ray:
        ctx = ray.data.DataContext.get_current()
        before = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = show_progress
        try:
            rows = _dataset_rows(data) if isinstance(data, ray.data.Dataset) else _rows(data)
            ids = [r["id"] for r in rows]
            if not ids:
                raise InvalidInputError("nothing to index (no documents)")
            _check_unique(ids)
            batches = _batches(rows, batch_size)
            del rows
            workers = min(workers, len(batches))  # no idle actors
            ds = ray.data.from_items(batches, override_num_blocks=len(batches))
            shards_out.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                (shards_out / MANIFEST_FILE).unlink()  # a half-replaced index is no index
            scanned = ds.map_batches(
                _ScanWorker, batch_size=1, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=workers),
                fn_constructor_kwargs={"out": str(shards_out), "model": model, "saes": saes,
                                       "device": device, "dtype": dtype,
                                       "settings": dict(settings)},
                num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)
            logger.info("scanning %d documents on %d worker(s), batches of %d", len(ids),
                        workers, batch_size)
            try:
                results = scanned.take_all()
            except Exception as e:  # Ray's errors (a worker that failed for good)
                raise ScanError(f"the distributed scan failed: {type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}") from e
        finally:
            ctx.execution_options.preserve_order, ctx.enable_progress_bars = before

    try:
        names, tokens, model_entry = _collect(results, ids)
    except S3Error:
        for r in results:  # this run's shards: no use without a complete scan
            shutil.rmtree(shards_out / r["shard"], ignore_errors=True)
        raise
    for entry in [*leftovers, *shards_out.iterdir()]:
        if entry.is_dir() and _SHARD_RE.match(entry.name) and entry.name not in names:
            shutil.rmtree(entry, ignore_errors=True)  # a batch that did not finish
    write_manifest(shards_out, names, documents=len(ids), tokens=tokens, model=model_entry)
    logger.info("%d documents, %d tokens in %d shard(s) -> %s", len(ids), tokens, len(names),
                shards_out)
    if not merge:
        return out
    from s3_retriever.distributed.merge import merge_shards

    merge_shards(shards_out, out, overwrite=overwrite, show_progress=show_progress)
    shutil.rmtree(shards_out)
    return out
