"""SAE folders: one sub-folder per hookpoint (``layers.17/cfg.json`` + ``sae.safetensors``),
beside the retrieval heads file (``heads.json``); and the SAEs shipped in this package.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from s3_retriever import storage
from s3_retriever.errors import SAEError
from s3_retriever.sae.coder import CFG_FILE, WEIGHTS_FILE, TopKSAE

__all__ = ['HEADS_FILE', 'is_sae_folder', 'load_saes', 'read_heads', 'save_saes', 'shipped_sae_dir']


# files an SAE folder may hold beside its hookpoint folders (see is_sae_folder)
HEADS_FILE = "heads.json"
SAE_FOLDER_FILES = (HEADS_FILE, "calibration.json", "README.md", "LICENSE")

def is_sae_folder(folder: Path) -> bool:
    """Whether ``folder`` looks like one :func:`save_saes` wrote (so it may be replaced):
    hookpoint folders of ``cfg.json`` + ``sae.safetensors``, and our JSON / README files."""
    entries = list(folder.iterdir())
    subs = [e for e in entries if e.is_dir()]
    return bool(subs) and all(
        {p.name for p in e.iterdir()} <= {CFG_FILE, WEIGHTS_FILE} for e in subs) and all(
        e.name in SAE_FOLDER_FILES for e in entries if not e.is_dir())

def save_saes(saes: dict[str, TopKSAE], folder: str | os.PathLike, *,
              overwrite: bool = False) -> Path:
    """Save each SAE to ``folder/<hookpoint>/``; dict keys must equal the SAEs' hookpoints.

    The folder is built aside and moved into place whole. ``folder`` must be new or empty,
    or (with ``overwrite``) an SAE folder: a folder of other files is refused, never
    replaced.

    >>> import tempfile
    >>> from s3_retriever.sae.coder import SAEConfig
    >>> saes = {"layers.1": TopKSAE(SAEConfig(d_in=4, num_latents=8, k=2, hookpoint="layers.1"))}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     list(load_saes(save_saes(saes, tmp)))
    ['layers.1']
    """
    folder = Path(folder)
    if not saes:
        raise SAEError("save_saes: no SAEs to save")
    for name, sae in saes.items():
        if name != sae.cfg.hookpoint:
            raise SAEError(f"save_saes: key {name!r} differs from the SAE's hookpoint "
                           f"{sae.cfg.hookpoint!r}")
    with storage.replace_folder(folder, overwrite=overwrite, recognise=is_sae_folder) as tmp:
        for name, sae in saes.items():
            sae.save(tmp / name)
    return folder

def load_saes(
    folder: str | os.PathLike,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, TopKSAE]:
    """Load every ``folder/<hookpoint>/`` SAE (sorted by name) as ``{hookpoint: sae}``.

    A folder that is itself an SAE folder (has ``cfg.json``) loads as a single entry.
    Sub-folders without either SAE file are skipped; no SAE at all raises :class:`SAEError`.
    See :func:`save_saes` for an example.
    """
    folder = Path(folder)
    storage.recover_folder(folder, restore_only=True)
    if not folder.is_dir():
        raise SAEError(f"SAE folder not found: {folder}")
    if (folder / CFG_FILE).exists() or (folder / WEIGHTS_FILE).exists():
        sae = TopKSAE.load(folder, device=device, dtype=dtype)
        return {sae.cfg.hookpoint: sae}
    out: dict[str, TopKSAE] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if not ((sub / CFG_FILE).exists() or (sub / WEIGHTS_FILE).exists()):
            continue
        sae = TopKSAE.load(sub, device=device, dtype=dtype)
        if sae.cfg.hookpoint != sub.name:
            raise SAEError(
                f"{sub / CFG_FILE}: hookpoint {sae.cfg.hookpoint!r} differs from its folder name"
            )
        out[sub.name] = sae
    if not out:
        raise SAEError(f"no SAE found in {folder} (expected <hookpoint>/{CFG_FILE})")
    return out


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
