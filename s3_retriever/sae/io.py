"""SAE folders: one sub-folder per hookpoint (``layers.17/cfg.json`` + ``sae.safetensors``),
beside the retrieval heads file (``heads.json``); the SAEs shipped in this package; and
the converters to and from EleutherAI *sparsify* folders (same file names, other fields and
tensor names: ``encoder.weight`` ``[num_latents, d_in]`` where ours has ``W_enc``
``[d_in, num_latents]``).
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from s3_retriever import storage
from s3_retriever.errors import SAEError
from s3_retriever.sae.coder import (
    CFG_FILE,
    WEIGHTS_FILE,
    SAEConfig,
    TopKSAE,
    read_sae_folder,
)

__all__ = ['HEADS_FILE', 'SAE_FOLDER_FILES', 'export_sparsify', 'import_sparsify',
           'is_sae_folder', 'load_saes', 'read_heads', 'save_saes', 'shipped_sae_dir']


# files an SAE folder may hold beside its hookpoint folders (see is_sae_folder)
HEADS_FILE = "heads.json"
RERANK_HEADS_FILE = "rerank_heads.json"  # in-context rerank heads (retrieval.rerank)
SAE_FOLDER_FILES = (HEADS_FILE, RERANK_HEADS_FILE, "calibration.json", "README.md", "LICENSE")

def is_sae_folder(folder: Path) -> bool:
    """Whether ``folder`` looks like one :func:`save_saes` or :func:`export_sparsify` wrote
    (so it may be replaced): hookpoint folders of ``cfg.json`` + ``sae.safetensors``, and our
    JSON / README files."""
    entries = list(folder.iterdir())
    subs = [e for e in entries if e.is_dir()]
    return bool(subs) and all(
        {p.name for p in e.iterdir()} <= {CFG_FILE, WEIGHTS_FILE} for e in subs) and all(
        e.name in SAE_FOLDER_FILES for e in entries if not e.is_dir())

def _check_saes(saes: Mapping[str, TopKSAE], extra_files: Mapping[str, bytes] | None,
                what: str) -> None:
    if not saes:
        raise SAEError(f"{what}: no SAEs to save")
    for name, sae in saes.items():
        if not isinstance(sae, TopKSAE):
            raise SAEError(f"{what}: {name!r} is a {type(sae).__name__}, not a TopKSAE")
        if name != sae.cfg.hookpoint:
            raise SAEError(f"{what}: key {name!r} differs from the SAE's hookpoint "
                           f"{sae.cfg.hookpoint!r}")
    for name, data in (extra_files or {}).items():
        if name not in SAE_FOLDER_FILES or not isinstance(data, bytes):
            raise SAEError(f"{what}: extra file {name!r} must be one of {SAE_FOLDER_FILES}, "
                           "given as bytes")


def _write_extra_files(tmp: Path, extra_files: Mapping[str, bytes] | None) -> None:
    for name, data in (extra_files or {}).items():
        storage.write_bytes_atomic(tmp / name, data)


def save_saes(saes: dict[str, TopKSAE], folder: str | os.PathLike, *,
              overwrite: bool = False, extra_files: Mapping[str, bytes] | None = None) -> Path:
    """Save each SAE to ``folder/<hookpoint>/``; dict keys must equal the SAEs' hookpoints.

    The folder is built aside and moved into place whole. ``folder`` must be new or empty,
    or (with ``overwrite``) an SAE folder: a folder of other files is refused, never
    replaced. ``extra_files`` (``{"heads.json": bytes, ...}``, names from
    ``SAE_FOLDER_FILES``) are written beside the hookpoint folders.

    >>> import tempfile
    >>> from s3_retriever.sae.coder import SAEConfig
    >>> saes = {"layers.1": TopKSAE(SAEConfig(d_in=4, num_latents=8, k=2, hookpoint="layers.1"))}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     list(load_saes(save_saes(saes, tmp)))
    ['layers.1']
    """
    folder = Path(folder)
    _check_saes(saes, extra_files, "save_saes")
    with storage.replace_folder(folder, overwrite=overwrite, recognise=is_sae_folder) as tmp:
        for name, sae in saes.items():
            sae.save(tmp / name)
        _write_extra_files(tmp, extra_files)
    return folder

def load_saes(
    folder: str | os.PathLike,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, TopKSAE]:
    """Load every ``folder/<hookpoint>/`` SAE (sorted by name) as ``{hookpoint: sae}``.

    A folder that is itself an SAE folder (has ``cfg.json``) loads as a single entry.
    Sub-folders without either SAE file are skipped; no SAE at all raises :class:`SAEError`
    (so does a sparsify folder: read it with :func:`import_sparsify`). See :func:`save_saes`
    for an example.
    """
    folder = Path(folder)
    storage.recover_folder(folder, restore_only=True)
    if not folder.is_dir():
        raise SAEError(f"SAE folder not found: {folder}")
    if _has_sae_file(folder):
        sae = _load_ours(folder, device, dtype)
        return {sae.cfg.hookpoint: sae}
    out: dict[str, TopKSAE] = {}
    for sub in _hookpoint_folders(folder):
        sae = _load_ours(sub, device, dtype)
        if sae.cfg.hookpoint != sub.name:
            raise SAEError(
                f"{sub / CFG_FILE}: hookpoint {sae.cfg.hookpoint!r} differs from its folder name"
            )
        out[sub.name] = sae
    if not out:
        raise SAEError(f"no SAE found in {folder} (expected <hookpoint>/{CFG_FILE})")
    return out


def _has_sae_file(folder: Path) -> bool:
    return (folder / CFG_FILE).exists() or (folder / WEIGHTS_FILE).exists()


def _hookpoint_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _has_sae_file(p))


def _load_ours(folder: Path, device: Any, dtype: Any) -> TopKSAE:
    try:
        return TopKSAE.load(folder, device=device, dtype=dtype)
    except SAEError:
        if _layout(folder) == "sparsify":
            raise SAEError(f"{folder}: an EleutherAI sparsify SAE, not an s3-retriever one; "
                           "read it with import_sparsify() or convert it with "
                           "`s3-retriever sae-convert --from sparsify`") from None
        raise


# ------------------------------------------------------------------ EleutherAI sparsify
#: sparsify's tensor names (``SparseCoder.state_dict()`` of a plain top-k SAE)
SPARSIFY_TENSORS = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")
# the key of our SAEConfig (JSON) in the safetensors metadata of a folder export_sparsify
# wrote: sparsify ignores it, import_sparsify restores scales, layer and provenance from it
_META_KEY = "s3_retriever"
# sparsify's SparseCoderConfig defaults for fields a cfg.json may leave out
_SPARSIFY_DEFAULTS = {"activation": "topk", "expansion_factor": 32, "num_latents": 0, "k": 32}
_LAYERS = re.compile(r"layers\.(\d+)")


def _safetensors_header(data: bytes, path: Path) -> tuple[set[str], dict[str, str]]:
    """The tensor names and the ``__metadata__`` of a safetensors file's bytes."""
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n].decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise SAEError(f"{path}: corrupt or truncated safetensors file ({e})") from None
    meta = header.pop("__metadata__", None)
    return set(header), meta if isinstance(meta, dict) else {}


def _layout(folder: Path) -> str | None:
    """``"s3"`` / ``"sparsify"`` by the tensor names of ``folder/sae.safetensors``; None when
    unreadable or neither."""
    try:
        with open(folder / WEIGHTS_FILE, "rb") as f:
            head = f.read(8)
            (n,) = struct.unpack("<Q", head)
            names, _ = _safetensors_header(head + f.read(min(n, 1 << 26)), folder)
    except (OSError, struct.error, SAEError):
        return None
    if "W_enc" in names:
        return "s3"
    if "encoder.weight" in names:
        return "sparsify"
    return None


def export_sparsify(saes: dict[str, TopKSAE], folder: str | os.PathLike, *,
                    overwrite: bool = False,
                    extra_files: Mapping[str, bytes] | None = None) -> Path:
    """Write ``saes`` as an EleutherAI sparsify folder that ``SparseCoder.load_many`` reads.

    Per hookpoint: ``cfg.json`` with sparsify's ``SparseCoderConfig`` fields and ``d_in``,
    and ``sae.safetensors`` (fp32) with ``encoder.weight`` ``[num_latents, d_in]``,
    ``encoder.bias``, ``W_dec`` and ``b_dec``. Our own config (key/query scales, layer,
    provenance) rides in the safetensors metadata, which sparsify ignores, so that
    :func:`import_sparsify` gives back the same SAEs. Folder rules as :func:`save_saes`.

    >>> import tempfile
    >>> sae = TopKSAE(SAEConfig(d_in=4, num_latents=8, k=2, hookpoint="layers.1", layer=1))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     back = import_sparsify(export_sparsify({"layers.1": sae}, tmp))
    ...     back["layers.1"].content_hash() == sae.content_hash()
    True
    """
    folder = Path(folder)
    _check_saes(saes, extra_files, "export_sparsify")
    with storage.replace_folder(folder, overwrite=overwrite, recognise=is_sae_folder) as tmp:
        for name, sae in saes.items():
            cfg = sae.cfg
            sparsify_cfg = {  # SparseCoderConfig.to_dict() order, then d_in (as its save_to_disk)
                "activation": "topk",
                "expansion_factor": max(1, cfg.num_latents // cfg.d_in),  # unused: num_latents
                "normalize_decoder": True,  # train_sae keeps decoder rows unit-norm
                "num_latents": cfg.num_latents,
                "k": cfg.k,
                "multi_topk": False,
                "skip_connection": False,
                "transcode": False,
                "d_in": cfg.d_in,
            }
            t = {n: getattr(sae, n).detach().to("cpu", torch.float32)
                 for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
            tensors = {"encoder.weight": t["W_enc"].t().contiguous(),
                       "encoder.bias": t["b_enc"].contiguous(),
                       "W_dec": t["W_dec"].contiguous(), "b_dec": t["b_dec"].contiguous()}
            meta = {"format": "pt", _META_KEY: json.dumps(cfg.to_dict(), sort_keys=True)}
            (tmp / name).mkdir()
            storage.write_bytes_atomic(tmp / name / WEIGHTS_FILE, st_save(tensors, meta))
            storage.write_bytes_atomic(tmp / name / CFG_FILE,
                                       (json.dumps(sparsify_cfg, indent=2) + "\n").encode())
        _write_extra_files(tmp, extra_files)
    return folder


def import_sparsify(
    folder: str | os.PathLike,
    *,
    key_scale: float | None = None,
    query_scale: float | None = None,
    layer: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, TopKSAE]:
    """Read an EleutherAI sparsify folder (one hookpoint, or a folder of hookpoint folders)
    as ``{hookpoint: TopKSAE}``, sorted by name; the SAEs encode and decode as sparsify's.

    The hookpoint is the folder's name (as in sparsify). sparsify stores no input scales:
    ``key_scale`` / ``query_scale`` (what keys / queries are divided by before encoding)
    default to the ones :func:`export_sparsify` stored, else 1.0; ``layer`` (one hookpoint
    only) defaults to the stored one, else N of a ``layers.N`` hookpoint. Only plain top-k
    SAEs convert: transcoders, skip connections and groupmax raise :class:`SAEError`, as
    does a folder in neither layout. See :func:`export_sparsify` for an example.
    """
    folder = Path(folder)
    storage.recover_folder(folder, restore_only=True)
    if not folder.is_dir():
        raise SAEError(f"SAE folder not found: {folder}")
    if _has_sae_file(folder):
        sae = _import_one(folder, key_scale, query_scale, layer, device, dtype)
        return {sae.cfg.hookpoint: sae}
    subs = _hookpoint_folders(folder)
    if not subs:
        raise SAEError(f"no SAE found in {folder} (expected <hookpoint>/{CFG_FILE} + "
                       f"{WEIGHTS_FILE}, as sparsify saves them)")
    if layer is not None and len(subs) > 1:
        raise SAEError(f"layer={layer!r} names the layer of one SAE, but {folder} holds "
                       f"{len(subs)}; import them one at a time")
    out: dict[str, TopKSAE] = {}
    for sub in subs:
        sae = _import_one(sub, key_scale, query_scale, layer, device, dtype)
        if sae.cfg.hookpoint != sub.name:
            raise SAEError(f"{sub / WEIGHTS_FILE}: hookpoint {sae.cfg.hookpoint!r} differs "
                           "from its folder name")
        out[sub.name] = sae
    return out


def _import_one(folder: Path, key_scale: float | None, query_scale: float | None,
                layer: int | None, device: Any, dtype: Any) -> TopKSAE:
    cfg_path, w_path = folder / CFG_FILE, folder / WEIGHTS_FILE
    raw, data = read_sae_folder(folder)
    names, meta = _safetensors_header(data, w_path)
    if "W_enc" in names:
        raise SAEError(f"{folder}: an s3-retriever SAE folder (tensor W_enc), not a sparsify "
                       "one; read it with load_saes() or convert it with --from s3")
    if "encoder.weight" not in names or not isinstance(raw, dict) or "d_in" not in raw:
        raise SAEError(
            f"{folder}: neither an EleutherAI sparsify SAE (cfg.json with d_in; tensors "
            f"{', '.join(SPARSIFY_TENSORS)}) nor an s3-retriever one (tensors W_enc, b_enc, "
            f"W_dec, b_dec); {WEIGHTS_FILE} holds {sorted(names)}")
    raw = {**_SPARSIFY_DEFAULTS, **raw}
    for flag, why in (("transcode", "a transcoder predicts another module's output"),
                      ("skip_connection", "a skip connection (W_skip) adds x @ W_skip.T"),
                      ("signed", "a signed SAE keeps negative activations")):
        if raw.get(flag):
            raise SAEError(f"{cfg_path}: {flag}=true is not supported ({why}); only plain "
                           "top-k SAEs convert")
    if raw["activation"] != "topk":
        raise SAEError(f"{cfg_path}: activation {raw['activation']!r} is not supported; only "
                       "'topk' SAEs convert")
    d_in, n_lat, factor = raw["d_in"], raw["num_latents"], raw["expansion_factor"]
    for name, v in (("d_in", d_in), ("num_latents", n_lat), ("expansion_factor", factor),
                    ("k", raw["k"])):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise SAEError(f"{cfg_path}: {name} must be a non-negative int, got {v!r}")
    ours: dict[str, Any] = {}
    if _META_KEY in meta:
        try:
            ours = json.loads(meta[_META_KEY])
            if not isinstance(ours, dict):
                raise ValueError("not a JSON object")
        except (TypeError, ValueError) as e:
            raise SAEError(f"{w_path}: corrupt {_META_KEY!r} metadata ({e})") from None
    hookpoint = ours.get("hookpoint") or folder.resolve().name
    if layer is None and "layer" not in ours:
        m = _LAYERS.fullmatch(hookpoint)
        layer = int(m.group(1)) if m else None
    fields = {**ours, "d_in": d_in, "num_latents": n_lat or d_in * factor, "k": raw["k"],
              "hookpoint": hookpoint}
    for name, v in (("layer", layer), ("key_scale", key_scale), ("query_scale", query_scale)):
        if v is not None:
            fields[name] = v
    try:
        cfg = SAEConfig.from_dict(fields)
    except (SAEError, TypeError) as e:
        raise SAEError(f"{cfg_path}: {e}") from None
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error types for bad files
        raise SAEError(f"{w_path}: corrupt or truncated safetensors file ({e})") from None
    D, d = cfg.num_latents, cfg.d_in
    expected = {"encoder.weight": (D, d), "encoder.bias": (D,), "W_dec": (D, d), "b_dec": (d,)}
    if "W_skip" in tensors:
        raise SAEError(f"{w_path}: a skip connection (W_skip) is not supported; only plain "
                       "top-k SAEs convert")
    missing = [n for n in expected if n not in tensors]
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise SAEError(f"{w_path}: missing tensor(s) {missing}, unexpected {extra}")
    for name, shape in expected.items():
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise SAEError(f"{w_path}: tensor {name} has shape {tuple(t.shape)} but "
                           f"{CFG_FILE} (d_in={d}, num_latents={D}) implies {shape}")
        if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            raise SAEError(f"{w_path}: tensor {name} must hold finite floats")
    sae = TopKSAE(cfg, device=device, dtype=dtype)
    with torch.no_grad():
        sae.W_enc.copy_(tensors["encoder.weight"].t())
        sae.b_enc.copy_(tensors["encoder.bias"])
        sae.W_dec.copy_(tensors["W_dec"])
        sae.b_dec.copy_(tensors["b_dec"])
    sae.requires_grad_(False)
    return sae.eval()


def shipped_sae_dir(model_id: str) -> Path | None:
    """The folder of the SAEs shipped in the package for ``model_id``, if any."""
    folder = Path(str(resources.files("s3_retriever") / "saes" / model_id))
    return folder if folder.is_dir() else None


def read_heads(folder: str | os.PathLike) -> list[list[Any]] | None:
    """The scoring heads of an SAE folder (its ``heads.json``), or None when it has none.

    Raises:
        SAEError: a ``heads.json`` without a ``heads`` list.
    """
    path = Path(folder) / HEADS_FILE
    if not path.is_file():
        return None
    try:
        heads = storage.read_json(path)
    except ValueError as e:
        raise SAEError(str(e)) from None
    if not isinstance(heads, dict) or not isinstance(heads.get("heads"), list):
        raise SAEError(f"{path}: no 'heads' list")
    return heads["heads"]
