"""Serve a sharded index from Ray actors: one actor per shard holds a
:class:`~s3_retriever.distributed.shards.ShardServer`; the driver's
:class:`~s3_retriever.distributed.shards.ShardedIndex` (which encodes each question once and
merges exactly) reaches them through :class:`RayShard` handles.

A shard whose actor dies (a lost node, ``ray.kill``) never yields a partial result: its
handle starts a new actor for the shard and sends the call again (the shard protocol is
stateless, so a repeated call is the same call), once; if that fails too, the search raises
:class:`ShardUnavailableError` naming the shard.

Needs ``pip install "s3-retriever[ray]"``; Ray is imported only when a function here runs.
Every node must see the shard folders (a shared file system).

Example:
    >>> from s3_retriever.distributed.serve import serve_sharded
    >>> index = serve_sharded("corpus.s3", address="auto")  # doctest: +SKIP
    >>> index.search("Who built the first steam engine?", k=3)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from s3_retriever.errors import InvalidInputError, ShardUnavailableError

logger = logging.getLogger(__name__)

__all__ = ["RayShard", "ShardActor", "ShardUnavailableError", "serve_sharded"]


class ShardActor:
    """The body of a shard's Ray actor (``ray.remote(ShardActor)``): loads the shard saved
    in ``folder`` once and answers :data:`~s3_retriever.distributed.shards.SHARD_METHODS`
    calls with plain picklable data."""

    def __init__(self, folder: str, model: str | None = None, device: str | None = None,
                 dtype: str | None = None) -> None:
        from s3_retriever.distributed.shards import ShardServer

        self.folder = folder
        self.server = ShardServer.from_folder(folder, model=model, device=device, dtype=dtype)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``server.method(*args, **kwargs)`` for a protocol method."""
        from s3_retriever.distributed.shards import SHARD_METHODS

        if method not in SHARD_METHODS:
            raise InvalidInputError(f"unknown shard method {method!r}; allowed: "
                                    f"{', '.join(SHARD_METHODS)}")
        return getattr(self.server, method)(*args, **kwargs)

    def pid(self) -> int:
        """The actor's process id (tests kill it)."""
        return os.getpid()


class RayShard:
    """A :class:`~s3_retriever.distributed.shards.ShardHandle` for a shard served by a Ray
    actor.

    Args:
        name: the shard's name (errors name it).
        start: makes a new actor for the shard (called now, and again when the actor dies).
        retries: how many times a call lost with its actor is sent to a new actor (0: raise
            :class:`ShardUnavailableError` at once).
    """

    def __init__(self, name: str, start: Callable[[], Any], *, retries: int = 1) -> None:
        self.name = name
        self.retries = retries
        self._start = start
        self._lock = threading.Lock()
        self.actor = start()

    def submit(self, method: str, *args: Any, **kwargs: Any) -> _RayCall:
        """Send ``method`` to the shard's actor; ``.result()`` on the answer waits for it."""
        return _RayCall(self, self.actor, method, args, kwargs)

    def _replace(self, dead: Any) -> Any:
        """A live actor instead of ``dead`` (started once however many calls lost it)."""
        with self._lock:
            if self.actor is dead:
                import ray

                ray.kill(dead, no_restart=True)
                logger.warning("shard %s: its Ray actor died; starting a new one", self.name)
                self.actor = self._start()
            return self.actor

    def __repr__(self) -> str:
        return f"RayShard({self.name!r}, {self.actor!r})"


class _RayCall:
    """One call in flight: ``result()`` returns its value or raises (the shard's own error
    as raised there; a lost actor as :class:`ShardUnavailableError` after the retries)."""

    def __init__(self, shard: RayShard, actor: Any, method: str, args: tuple,
                 kwargs: dict) -> None:
        self.shard, self.method, self.args, self.kwargs = shard, method, args, kwargs
        self.actor = actor
        self.ref = actor.call.remote(method, *args, **kwargs)

    def result(self, timeout: float | None = None) -> Any:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        for attempt in range(self.shard.retries + 1):
            try:
                return ray.get(self.ref, timeout=timeout)
            except RayTaskError as e:  # the shard raised: raise that, not Ray's wrapper
                cause = getattr(e, "cause", None)
                raise (cause if isinstance(cause, Exception) else e) from None
            except RayActorError as e:
                if attempt == self.shard.retries:
                    detail = _reason(e)
                    raise ShardUnavailableError(
                        f"shard {self.shard.name}: its Ray actor died and the call "
                        f"{self.method!r} could not be completed ({detail}); no partial "
                        "result is returned: check the cluster and search again") from e
                self.actor = self.shard._replace(self.actor)
                self.ref = self.actor.call.remote(self.method, *self.args, **self.kwargs)
        raise AssertionError("unreachable")


def _reason(error: Exception) -> str:
    """The line of Ray's message that says why the actor died (the exception its process
    raised, e.g. a shard that does not verify), else its first line."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Exit)\b[^:]*: ", line):
            return line[:500]
    return lines[0][:300] if lines else type(error).__name__


def serve_sharded(folder: str | os.PathLike, *, address: str | None = None,
                  model: Any = None, device: str | None = None, dtype: str | None = None,
                  num_cpus_per_actor: float = 1, gpus_per_actor: float = 0,
                  retries: int = 1) -> Any:
    """A :class:`~s3_retriever.distributed.shards.ShardedIndex` over the sharded index in
    ``folder``, each shard served by its own Ray actor; the model that encodes questions
    (and answers) runs here, in the driver.

    Args:
        folder: a sharded index (``shards.json``), on a path every node sees.
        address: the Ray cluster (``"auto"``: the one ``ray start`` runs here); default: the
            running Ray session, else a new local one (it lives as long as this process).
        model: the driver's model: a :class:`~s3_retriever.LoadedModel`, or a name or path
            (default: the manifest's); the actors load the same model by name.
        device, dtype: where the driver's model and the actors' run.
        num_cpus_per_actor, gpus_per_actor: what Ray reserves for each shard's actor.
        retries: see :class:`RayShard`.

    Raises:
        IndexNotFoundError, IndexFormatError: as :meth:`ShardedIndex.load
            <s3_retriever.distributed.shards.ShardedIndex.load>`.
        ShardUnavailableError: a shard's actor could not start.
    """
    from s3_retriever.distributed.manifest import read_manifest
    from s3_retriever.distributed.shards import ShardedIndex
    from s3_retriever.errors import IndexFormatError
    from s3_retriever.model.loading import LoadedModel, load_model

    try:
        import ray
    except ImportError:
        raise InvalidInputError('serving shards on Ray needs Ray: pip install '
                                '"s3-retriever[ray]"') from None
    folder = Path(folder).expanduser().resolve()
    manifest = read_manifest(folder)
    mid, mfp = manifest["model"].get("id"), manifest["model"].get("fingerprint")
    lm = model if isinstance(model, LoadedModel) else load_model(model or mid, device, dtype)
    if mfp is not None and lm.fingerprint != mfp:
        raise IndexFormatError(f"{folder}: the shards were built with model {mid!r} ({mfp}) "
                               f"but the loaded model {lm.model_id!r} is {lm.fingerprint}")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    actor_cls = ray.remote(ShardActor).options(num_cpus=num_cpus_per_actor,
                                               num_gpus=gpus_per_actor, max_restarts=0)

    def starter(name: str) -> Callable[[], Any]:
        return lambda: actor_cls.remote(str(folder / name), lm.model_id, device, dtype)

    handles = [RayShard(name, starter(name), retries=retries) for name in manifest["shards"]]
    index = ShardedIndex(lm, handles, names=manifest["shards"])
    if len(index) != manifest["documents"]:
        raise IndexFormatError(f"{folder}: the shards hold {len(index)} documents, the "
                               f"manifest says {manifest['documents']}")
    logger.info("serving %d shard(s) of %s from Ray actors", len(handles), folder)
    return index
