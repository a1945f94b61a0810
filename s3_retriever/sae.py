"""Top-k sparse autoencoders (SAEs) over attention key/query vectors.

One :class:`TopKSAE` per hookpoint (e.g. ``"layers.17"``) turns a ``head_dim`` vector into
``k`` sparse latent ids + activations (the postings of the inverted index). Keys and queries
share the SAE; each stream is divided by its own RMS norm (``key_scale`` / ``query_scale``)
first, so both look alike to the encoder.

On disk an SAE is a folder with ``cfg.json`` + ``sae.safetensors`` (fp32 tensors ``W_enc``
``[d_in, D]``, ``b_enc`` ``[D]``, ``W_dec`` ``[D, d_in]``, ``b_dec`` ``[d_in]``), in the spirit
of the EleutherAI sparsify layout. Every problem with an SAE raises :class:`SAEError`.

>>> import torch
>>> sae = TopKSAE(SAEConfig(d_in=8, num_latents=32, k=4, hookpoint="layers.0"))
>>> acts, ids = sae.encode(torch.randn(3, 8))
>>> acts.shape, ids.shape, sae.decode(acts, ids).shape
(torch.Size([3, 4]), torch.Size([3, 4]), torch.Size([3, 8]))
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from tqdm.auto import tqdm

from s3_retriever import storage
from s3_retriever.errors import SAEError
from s3_retriever.kernels import topk_encode

__all__ = [
    "SAEConfig",
    "SAEError",
    "TopKSAE",
    "evaluate_sae",
    "load_saes",
    "save_saes",
    "train_sae",
]

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
# files an SAE folder may hold beside its hookpoint folders (see is_sae_folder)
SAE_FOLDER_FILES = ("heads.json", "fusion.json", "calibration.json", "README.md", "LICENSE")
FORMAT_VERSION = 1
_TENSOR_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")
_KINDS = (None, "key", "query")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclasses.dataclass
class SAEConfig:
    """Everything needed to rebuild an SAE besides its tensors.

    ``key_scale`` / ``query_scale`` divide key / query vectors before encoding (and multiply
    the reconstruction back). Invalid values raise :class:`SAEError` at construction.

    >>> cfg = SAEConfig(d_in=64, num_latents=4096, k=16, hookpoint="layers.17", layer=17)
    >>> SAEConfig.from_dict(cfg.to_dict()) == cfg
    True
    >>> try:
    ...     SAEConfig(d_in=64, num_latents=8, k=16, hookpoint="layers.17")
    ... except SAEError as e:
    ...     print(e)
    SAE config: k=16 must be <= num_latents=8
    """

    d_in: int
    num_latents: int
    k: int
    hookpoint: str
    layer: int | None = None
    key_scale: float = 1.0
    query_scale: float = 1.0
    model_id: str | None = None
    trained_on: str = ""
    train_stats: dict = dataclasses.field(default_factory=dict)
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`SAEError` naming the first invalid field."""

        def bad(msg: str) -> SAEError:
            return SAEError(f"SAE config: {msg}")

        for name in ("d_in", "num_latents", "k"):
            v = getattr(self, name)
            if not _is_int(v) or v <= 0:
                raise bad(f"{name} must be a positive int, got {v!r}")
        if self.k > self.num_latents:
            raise bad(f"k={self.k} must be <= num_latents={self.num_latents}")
        if not isinstance(self.hookpoint, str) or not self.hookpoint.strip():
            raise bad(f"hookpoint must be a non-empty string, got {self.hookpoint!r}")
        # The hookpoint names a sub-folder in save_saes; keep it a plain single path segment.
        if any(c in self.hookpoint for c in "/\\\0") or self.hookpoint in (".", ".."):
            raise bad(f"hookpoint {self.hookpoint!r} must not contain path separators")
        if self.layer is not None and (not _is_int(self.layer) or self.layer < 0):
            raise bad(f"layer must be a non-negative int or None, got {self.layer!r}")
        for name in ("key_scale", "query_scale"):
            v = getattr(self, name)
            if not _is_number(v) or not math.isfinite(v) or v <= 0:
                raise bad(f"{name} must be a positive finite number, got {v!r}")
            setattr(self, name, float(v))
        if self.model_id is not None and not isinstance(self.model_id, str):
            raise bad(f"model_id must be a string or None, got {self.model_id!r}")
        if not isinstance(self.trained_on, str):
            raise bad(f"trained_on must be a string, got {self.trained_on!r}")
        if not isinstance(self.train_stats, dict):
            raise bad(f"train_stats must be a dict, got {type(self.train_stats).__name__}")
        if not _is_int(self.version) or not 1 <= self.version <= FORMAT_VERSION:
            raise bad(f"unsupported version {self.version!r} (this code reads {FORMAT_VERSION})")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field.

        >>> SAEConfig(d_in=4, num_latents=8, k=2, hookpoint="layers.1").to_dict()["k"]
        2
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAEConfig:
        """Build and validate a config; unknown or missing required fields raise SAEError.

        >>> SAEConfig.from_dict({"d_in": 4, "num_latents": 8, "k": 2, "hookpoint": "h"}).k
        2
        """
        if not isinstance(d, dict):
            raise SAEError(f"SAE config: expected a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise SAEError(f"SAE config: unknown field(s) {unknown}")
        missing = [n for n in ("d_in", "num_latents", "k", "hookpoint") if n not in d]
        if missing:
            raise SAEError(f"SAE config: missing field(s) {missing}")
        return cls(**d)


def _scale_for(cfg: SAEConfig, kind: str | None) -> float:
    if kind is None:
        return 1.0
    if kind == "key":
        return cfg.key_scale
    if kind == "query":
        return cfg.query_scale
    raise SAEError(f"kind must be one of {_KINDS}, got {kind!r}")


class TopKSAE(torch.nn.Module):
    """Top-k SAE: ``z = topk(relu(W_enc^T (x - b_dec) + b_enc))``, ``x_hat = W_dec^T z + b_dec``.

    ``encode`` / ``decode`` / ``forward`` are inference methods (run under ``no_grad``);
    :func:`train_sae` trains through a separate differentiable path. A fresh SAE has random
    unit-norm decoder rows, ``W_enc = W_dec.T`` and zero biases.

    >>> sae = TopKSAE(SAEConfig(d_in=8, num_latents=16, k=2, hookpoint="h", key_scale=2.0))
    >>> x = torch.randn(5, 3, 8)
    >>> acts, ids = sae.encode(x, kind="key")
    >>> tuple(ids.shape), ids.dtype, acts.dtype, sae(x, kind="key").shape
    ((5, 3, 2), torch.int64, torch.float32, torch.Size([5, 3, 8]))
    """

    def __init__(
        self,
        cfg: SAEConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        D, d = cfg.num_latents, cfg.d_in
        W_dec = torch.randn(D, d, generator=generator, dtype=torch.float32)
        W_dec /= W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        kw = {"device": device, "dtype": dtype or torch.float32}
        self.W_enc = torch.nn.Parameter(W_dec.t().contiguous().to(**kw))
        self.b_enc = torch.nn.Parameter(torch.zeros(D, **kw))
        self.W_dec = torch.nn.Parameter(W_dec.to(**kw))
        self.b_dec = torch.nn.Parameter(torch.zeros(d, **kw))

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def num_latents(self) -> int:
        return self.cfg.num_latents

    @property
    def k(self) -> int:
        return self.cfg.k

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise SAEError(f"SAE {self.cfg.hookpoint}: input must be a float tensor")
        if x.dim() == 0 or x.shape[-1] != self.cfg.d_in:
            raise SAEError(
                f"SAE {self.cfg.hookpoint} expects vectors of size d_in={self.cfg.d_in}, "
                f"got shape {tuple(x.shape)}"
            )

    @torch.no_grad()
    def encode(
        self, x: torch.Tensor, kind: str | None = None, *, block_size: int = 16384
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse codes of ``x`` ``[..., d_in]``: ``(acts float32 [..., k], ids int64 [..., k])``.

        ``kind`` ``"key"`` / ``"query"`` divides ``x`` by ``cfg.key_scale`` /
        ``cfg.query_scale`` first; ``None`` uses ``x`` as is. Runs on the SAE's device and in
        its dtype; each row's codes are sorted by activation, descending.

        >>> sae = TopKSAE(SAEConfig(d_in=4, num_latents=8, k=3, hookpoint="h"))
        >>> acts, ids = sae.encode(torch.ones(2, 4))
        >>> bool((acts[:, :-1] >= acts[:, 1:]).all()), ids.shape
        (True, torch.Size([2, 3]))
        """
        self._check_input(x)
        scale = _scale_for(self.cfg, kind)
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.cfg.d_in).to(device=self.W_enc.device, dtype=self.W_enc.dtype)
        if scale != 1.0:
            flat = flat / scale
        acts, ids = topk_encode(
            flat - self.b_dec, self.W_enc, self.b_enc, self.cfg.k, block_size=block_size
        )
        return acts.reshape(*lead, self.cfg.k), ids.reshape(*lead, self.cfg.k)

    @torch.no_grad()
    def decode(
        self, acts: torch.Tensor, ids: torch.Tensor, kind: str | None = None
    ) -> torch.Tensor:
        """Reconstruction ``[..., d_in]`` from codes ``[..., k]`` (any k), in the SAE's dtype.

        ``sum_i acts_i * W_dec[ids_i] + b_dec``, multiplied back by the ``kind``'s scale.

        >>> sae = TopKSAE(SAEConfig(d_in=4, num_latents=8, k=2, hookpoint="h"))
        >>> x_hat = sae.decode(torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.long))
        >>> bool((x_hat == sae.b_dec).all())
        True
        """
        scale = _scale_for(self.cfg, kind)
        if acts.shape != ids.shape or acts.dim() == 0:
            raise SAEError(
                f"SAE {self.cfg.hookpoint}: acts {tuple(acts.shape)} and ids "
                f"{tuple(ids.shape)} must have the same non-scalar shape"
            )
        lead, kk = acts.shape[:-1], acts.shape[-1]
        out = _sparse_decode(
            ids.reshape(-1, kk).to(self.W_dec.device, torch.int64),
            acts.reshape(-1, kk).to(self.W_dec.device, self.W_dec.dtype),
            self.W_dec,
        )
        out = out + self.b_dec
        if scale != 1.0:
            out = out * scale
        return out.reshape(*lead, self.cfg.d_in)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, kind: str | None = None) -> torch.Tensor:
        """``decode(*encode(x, kind), kind)``: the reconstruction of ``x``.

        >>> sae = TopKSAE(SAEConfig(d_in=4, num_latents=8, k=2, hookpoint="h"))
        >>> sae(torch.randn(6, 4)).shape
        torch.Size([6, 4])
        """
        acts, ids = self.encode(x, kind)
        return self.decode(acts, ids, kind)

    def check_compatible(self, d_in: int, layer: int | None = None) -> None:
        """Raise :class:`SAEError` unless this SAE fits a model with head_dim ``d_in``.

        ``layer`` is compared too when both it and ``cfg.layer`` are set.

        >>> sae = TopKSAE(SAEConfig(d_in=4, num_latents=8, k=2, hookpoint="layers.3", layer=3))
        >>> sae.check_compatible(4, layer=3)
        >>> try:
        ...     sae.check_compatible(8)
        ... except SAEError as e:
        ...     print(e)
        SAE layers.3 expects d_in=4 but the model's head_dim is 8
        """
        name = self.cfg.hookpoint
        if d_in != self.cfg.d_in:
            raise SAEError(
                f"SAE {name} expects d_in={self.cfg.d_in} but the model's head_dim is {d_in}"
            )
        if layer is not None and self.cfg.layer is not None and layer != self.cfg.layer:
            raise SAEError(
                f"SAE {name} was trained on layer {self.cfg.layer} but is used at layer {layer}"
            )

    def _fp32_tensors(self) -> dict[str, torch.Tensor]:
        return {
            n: getattr(self, n).detach().to("cpu", torch.float32).contiguous()
            for n in _TENSOR_NAMES
        }

    def content_hash(self) -> str:
        """sha256 hex digest of the config and the fp32 tensor values.

        Stable across :meth:`save` / :meth:`load` (an SAE loaded in a lower-precision dtype
        hashes its rounded values, so compare SAEs loaded the same way).

        >>> sae = TopKSAE(SAEConfig(d_in=4, num_latents=8, k=2, hookpoint="h"))
        >>> len(sae.content_hash())
        64
        """
        h = hashlib.sha256()
        h.update(json.dumps(self.cfg.to_dict(), sort_keys=True).encode())
        for name, t in self._fp32_tensors().items():
            h.update(f"{name}:{tuple(t.shape)}:".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``cfg.json`` + ``sae.safetensors`` (fp32) into ``folder`` (created if needed).

        Each file is written to a temp file in the folder and moved into place, so a crash
        never leaves a half-written file. Returns the folder.

        >>> import tempfile
        >>> sae = TopKSAE(SAEConfig(d_in=4, num_latents=8, k=2, hookpoint="h"))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     sorted(p.name for p in sae.save(tmp).iterdir())
        ['cfg.json', 'sae.safetensors']
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = st_save(self._fp32_tensors(), metadata={"format": "pt"})
        cfg_bytes = (json.dumps(self.cfg.to_dict(), indent=2, sort_keys=True) + "\n").encode()
        # Tensors first: a crash between the two renames leaves the old cfg with new tensors,
        # which load() still verifies against each other.
        storage.write_bytes_atomic(folder / WEIGHTS_FILE, weights)
        storage.write_bytes_atomic(folder / CFG_FILE, cfg_bytes)
        return folder

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> TopKSAE:
        """Load and verify an SAE folder written by :meth:`save`.

        Checks that both files exist and parse, that the config is valid and that every
        tensor is present, finite and has exactly the shape the config implies; anything
        else raises :class:`SAEError` naming the file.

        >>> import tempfile
        >>> sae = TopKSAE(SAEConfig(d_in=4, num_latents=8, k=2, hookpoint="h"))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     TopKSAE.load(sae.save(tmp)).content_hash() == sae.content_hash()
        True
        """
        folder = Path(folder)
        cfg_path, w_path = folder / CFG_FILE, folder / WEIGHTS_FILE
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise SAEError(f"SAE file missing: {p}")
        try:
            cfg_dict = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SAEError(f"{cfg_path}: corrupt SAE config ({e})") from e
        try:
            cfg = SAEConfig.from_dict(cfg_dict)
        except TypeError as e:
            raise SAEError(f"{cfg_path}: {e}") from e
        except SAEError as e:
            raise SAEError(f"{cfg_path}: {e}") from e
        try:
            tensors = st_load(w_path.read_bytes())
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise SAEError(f"{w_path}: corrupt or truncated safetensors file ({e})") from e
        expected = {
            "W_enc": (cfg.d_in, cfg.num_latents),
            "b_enc": (cfg.num_latents,),
            "W_dec": (cfg.num_latents, cfg.d_in),
            "b_dec": (cfg.d_in,),
        }
        missing = [n for n in expected if n not in tensors]
        if missing:
            raise SAEError(f"{w_path}: missing tensor(s) {missing}")
        extra = sorted(set(tensors) - set(expected))
        if extra:
            raise SAEError(f"{w_path}: unexpected tensor(s) {extra}")
        for name, shape in expected.items():
            t = tensors[name]
            if tuple(t.shape) != shape:
                raise SAEError(
                    f"{w_path}: tensor {name} has shape {tuple(t.shape)} but {cfg_path.name} "
                    f"(d_in={cfg.d_in}, num_latents={cfg.num_latents}) implies {shape}"
                )
            if not t.is_floating_point():
                raise SAEError(f"{w_path}: tensor {name} has non-float dtype {t.dtype}")
            if not torch.isfinite(t).all():
                raise SAEError(f"{w_path}: tensor {name} has non-finite values")
        sae = cls(cfg, device=device, dtype=dtype)
        with torch.no_grad():
            for name in _TENSOR_NAMES:
                getattr(sae, name).copy_(tensors[name])
        sae.requires_grad_(False)
        return sae.eval()


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


# ---------------------------------------------------------------------------------------------
# Training


def _sparse_decode(ids: torch.Tensor, acts: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """``sum_i acts[:, i] * W_dec[ids[:, i]]`` without materialising ``[n, k, d]``."""
    if ids.shape[0] == 0:
        return W_dec.new_zeros(0, W_dec.shape[1])
    return F.embedding_bag(ids, W_dec, per_sample_weights=acts, mode="sum")


class _SelectedPreacts(torch.autograd.Function):
    """Pre-activations of the selected latents ``[n, m]``, with a sparse backward.

    Forward just returns the values already computed by the dense (no-grad) matmul.
    Backward touches only the ``n * m`` selected (row, latent) pairs, i.e. O(n * m * d) work
    instead of the O(n * D * d) of differentiating the dense ``x_in @ W_enc``.
    """

    @staticmethod
    def forward(ctx, x_in, W_enc, b_enc, ids, vals):
        ctx.save_for_backward(x_in, W_enc, ids)
        return vals

    @staticmethod
    def backward(ctx, g):
        x_in, W_enc, ids = ctx.saved_tensors
        d, D = W_enc.shape
        flat = ids.reshape(-1)
        g_x = None
        if ctx.needs_input_grad[0]:
            g_x = F.embedding_bag(ids, W_enc.t().contiguous(), per_sample_weights=g, mode="sum")
        outer = (g.unsqueeze(-1) * x_in.unsqueeze(1)).reshape(-1, d)
        g_W = x_in.new_zeros(D, d).index_add_(0, flat, outer).t()
        g_b = x_in.new_zeros(D).index_add_(0, flat, g.reshape(-1))
        return g_x, g_W, g_b, None, None


def _training_losses(
    sae: TopKSAE,
    x: torch.Tensor,
    dead: torch.Tensor | None,
    total_var: float,
) -> dict[str, torch.Tensor]:
    """One training forward pass on (already scaled) ``x`` ``[n, d_in]``.

    Returns ``fvu`` (reconstruction MSE / ``total_var``), ``ids`` / ``acts`` of the top-k,
    and ``auxk`` when ``dead`` (bool mask ``[D]``) marks any latent dead: the top
    ``min(d_in // 2, n_dead)`` dead latents reconstruct the detached residual, MSE divided
    by the residual's variance.
    """
    cfg = sae.cfg
    x_in = x - sae.b_dec
    n_dead = int(dead.sum()) if dead is not None else 0
    with torch.no_grad():
        pre = torch.addmm(sae.b_enc, x_in, sae.W_enc)
        vals, ids = pre.topk(cfg.k, dim=1, sorted=False)
        sel_ids, sel_vals = ids, vals
        if n_dead > 0:
            k_aux = min(max(cfg.d_in // 2, 1), n_dead)
            dead_idx = dead.nonzero().squeeze(1)
            aux_vals, local = pre.index_select(1, dead_idx).topk(k_aux, dim=1, sorted=False)
            aux_ids = dead_idx[local]
            sel_ids, sel_vals = torch.cat([ids, aux_ids], 1), torch.cat([vals, aux_vals], 1)
        del pre
    sel = F.relu(_SelectedPreacts.apply(x_in, sae.W_enc, sae.b_enc, sel_ids, sel_vals))
    acts = sel[:, : cfg.k]
    x_hat = _sparse_decode(ids, acts, sae.W_dec) + sae.b_dec
    fvu = (x_hat - x).pow(2).sum(-1).mean() / total_var
    out = {"fvu": fvu, "ids": ids, "acts": acts.detach()}
    if n_dead > 0:
        resid = (x - x_hat).detach()
        resid_var = (resid - resid.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
        resid_hat = _sparse_decode(aux_ids, sel[:, cfg.k :], sae.W_dec)
        out["auxk"] = (resid_hat - resid).pow(2).sum(-1).mean() / resid_var
    return out


def _rms_norm_and_mean(
    x: torch.Tensor, name: str, chunk: int = 1 << 18
) -> tuple[float, torch.Tensor]:
    """RMS vector norm and mean vector of ``x`` [n, d], in float64, chunked (x may be huge)."""
    sq = 0.0
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    for s in range(0, x.shape[0], chunk):
        c = x[s : s + chunk].to("cpu", torch.float64)
        sq += float(c.pow(2).sum())
        total += c.sum(0)
    if not math.isfinite(sq) or not torch.isfinite(total).all():
        raise SAEError(f"train_sae: {name} contains non-finite values")
    if sq == 0:
        raise SAEError(f"train_sae: {name} are all zero")
    return math.sqrt(sq / x.shape[0]), total / x.shape[0]


def _check_stream(x: torch.Tensor | None, name: str, d: int | None) -> None:
    if x is None:
        return
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise SAEError(f"train_sae: {name} must be a 2-D float tensor [n, d]")
    if x.shape[0] == 0:
        raise SAEError(f"train_sae: {name} is empty")
    if d is not None and x.shape[1] != d:
        raise SAEError(f"train_sae: {name} has d={x.shape[1]} but keys have d={d}")


class _Sampler:
    """Endless shuffled batches from one stream: a fresh permutation each pass."""

    def __init__(self, x: torch.Tensor, gen: torch.Generator) -> None:
        self.x, self.gen = x, gen
        self.perm = torch.randperm(x.shape[0], generator=gen)
        self.pos = 0

    def take(self, m: int) -> torch.Tensor:
        parts = []
        while m > 0:
            if self.pos == self.perm.numel():
                self.perm = torch.randperm(self.x.shape[0], generator=self.gen)
                self.pos = 0
            n = min(m, self.perm.numel() - self.pos)
            parts.append(self.perm[self.pos : self.pos + n])
            self.pos += n
            m -= n
        idx = parts[0] if len(parts) == 1 else torch.cat(parts)
        return self.x[idx.to(self.x.device)]


def default_lr(num_latents: int) -> float:
    """Adam learning rate ``2e-4 / sqrt(num_latents / 16384)`` (the Top-k SAE scaling rule).

    >>> round(default_lr(16384), 6), round(default_lr(4096), 6)
    (0.0002, 0.0004)
    """
    return 2e-4 / math.sqrt(num_latents / 2**14)


def default_dead_after(num_latents: int, k: int, batch_size: int) -> int:
    """Vectors without firing after which a latent counts as dead (for AuxK).

    A latent used uniformly fires once every ``num_latents / k`` vectors; silence for 10 times
    that means dead, but never before 10 batches. The floor matters: on small synthetic runs a
    one-batch threshold flagged merely rare latents and AuxK then shrank them for good.

    >>> default_dead_after(4096, 16, 512)
    5120
    >>> default_dead_after(16384, 8, 4096)
    40960
    """
    return max(10 * num_latents // k, 10 * batch_size)


def train_sae(
    keys: torch.Tensor,
    queries: torch.Tensor | None = None,
    *,
    num_latents: int,
    k: int,
    hookpoint: str,
    layer: int | None = None,
    model_id: str | None = None,
    trained_on: str = "",
    steps: int | None = None,
    epochs: float = 1.0,
    batch_size: int = 4096,
    lr: float | None = None,
    auxk_alpha: float = 1 / 32,
    dead_after: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    show_progress: bool = True,
) -> TopKSAE:
    """Train a :class:`TopKSAE` on key (and optionally query) vectors.

    Each stream is divided by its RMS vector norm (stored as ``key_scale`` / ``query_scale``);
    with queries, every batch is half keys, half queries. Loss: reconstruction MSE divided by
    the data's total variance (reads as FVU) + ``auxk_alpha`` * AuxK (dead latents'
    top-``d_in // 2`` reconstruct the residual, normalised by its variance). Adam; decoder rows
    kept unit-norm (gradient parallel to each row removed before the step, rows renormalised
    after).

    Args:
        keys: ``[Nk, d]`` key vectors; queries: ``[Nq, d]`` query vectors or None.
        num_latents, k, hookpoint, layer, model_id, trained_on: go into the config.
        steps: optimizer steps; default ``ceil(epochs * (Nk + Nq) / batch_size)`` (with
            queries the smaller stream is cycled more often, each pass freshly shuffled).
        batch_size: vectors per step (capped at the data size).
        lr: Adam learning rate; default :func:`default_lr` (``2e-4 / sqrt(D / 16384)``).
            Short runs on small data want more: D=512 on synthetic data reached FVU 0.11
            in 200 steps with lr=1e-2 but stayed at 0.43 with the default (~1.1e-3).
        dead_after: see :func:`default_dead_after`.
        seed: seeds the init and the batch order (runs are reproducible on CPU).
        device: where to train; default ``keys.device``. Data stays where it is; only
            batches move.

    ``cfg.train_stats`` gets ``steps``, ``fvu`` (mean training FVU over the last steps),
    ``dead_fraction`` and the hyper-parameters. Returns the SAE in eval mode.

    >>> g = torch.Generator().manual_seed(0)
    >>> data = torch.randn(512, 8, generator=g)
    >>> sae = train_sae(data, num_latents=32, k=4, hookpoint="h", steps=5, batch_size=128,
    ...                 show_progress=False)
    >>> sorted(sae.cfg.train_stats)[:3], sae.cfg.key_scale > 0
    (['auxk_alpha', 'batch_size', 'dead_after'], True)
    """
    _check_stream(keys, "keys", None)
    d = keys.shape[1]
    _check_stream(queries, "queries", d)
    nk = keys.shape[0]
    nq = 0 if queries is None else queries.shape[0]
    for name, v in (("num_latents", num_latents), ("k", k), ("batch_size", batch_size)):
        if not _is_int(v) or v <= 0:
            raise SAEError(f"train_sae: {name} must be a positive int, got {v!r}")
    if steps is not None and (not _is_int(steps) or steps <= 0):
        raise SAEError(f"train_sae: steps must be a positive int, got {steps!r}")
    if steps is None and not (_is_number(epochs) and epochs > 0):
        raise SAEError(f"train_sae: epochs must be positive, got {epochs!r}")
    if dead_after is not None and (not _is_int(dead_after) or dead_after <= 0):
        raise SAEError(f"train_sae: dead_after must be a positive int, got {dead_after!r}")
    if auxk_alpha < 0:
        raise SAEError(f"train_sae: auxk_alpha must be >= 0, got {auxk_alpha!r}")
    batch_size = min(batch_size, nk + nq)
    if steps is None:
        steps = max(1, math.ceil(epochs * (nk + nq) / batch_size))
    lr = default_lr(num_latents) if lr is None else float(lr)
    dead_after = dead_after or default_dead_after(num_latents, k, batch_size)
    device = torch.device(device) if device is not None else keys.device

    key_scale, key_mean = _rms_norm_and_mean(keys, "keys")
    query_scale, query_mean = 1.0, None
    if queries is not None:
        query_scale, query_mean = _rms_norm_and_mean(queries, "queries")
    mu = key_mean / key_scale
    if query_mean is not None:
        mu = 0.5 * (mu + query_mean / query_scale)
    # Each normalised stream has E||x||^2 = 1, so the mixture's total variance is 1 - ||mu||^2.
    total_var = max(1.0 - float(mu.pow(2).sum()), 1e-6)

    cfg = SAEConfig(
        d_in=d, num_latents=num_latents, k=k, hookpoint=hookpoint, layer=layer,
        key_scale=key_scale, query_scale=query_scale, model_id=model_id,
        trained_on=trained_on,
    )
    gen = torch.Generator().manual_seed(seed)
    sae = TopKSAE(cfg, generator=gen).to(device)
    with torch.no_grad():
        sae.b_dec.copy_(mu.to(device, torch.float32))
    sae.train()
    opt = torch.optim.Adam(sae.parameters(), lr=lr)

    key_sampler = _Sampler(keys, gen)
    query_sampler = _Sampler(queries, gen) if queries is not None else None
    nk_batch = batch_size if query_sampler is None else max(1, batch_size // 2)
    since_fired = torch.zeros(num_latents, dtype=torch.int64, device=device)
    recent: collections.deque[float] = collections.deque(maxlen=max(1, min(50, steps // 10)))
    bar = tqdm(range(steps), desc=f"SAE {hookpoint}", disable=not show_progress)
    for step in bar:
        x = key_sampler.take(nk_batch).to(device, torch.float32) / key_scale
        if query_sampler is not None:
            q = query_sampler.take(batch_size - nk_batch).to(device, torch.float32)
            x = torch.cat([x, q / query_scale])
        dead = since_fired >= dead_after if auxk_alpha > 0 else None
        out = _training_losses(sae, x, dead, total_var)
        loss = out["fvu"] + auxk_alpha * out["auxk"] if "auxk" in out else out["fvu"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            W, g = sae.W_dec, sae.W_dec.grad
            g -= (g * W).sum(1, keepdim=True) * W
        opt.step()
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
            since_fired += x.shape[0]
            since_fired[out["ids"][out["acts"] > 0]] = 0
        recent.append(out["fvu"].item())
        if show_progress and (step % 10 == 0 or step == steps - 1):
            bar.set_postfix(
                fvu=f"{recent[-1]:.4f}",
                dead=f"{float((since_fired >= dead_after).float().mean()):.3f}",
            )
    bar.close()

    cfg.train_stats = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "auxk_alpha": auxk_alpha,
        "dead_after": dead_after,
        "seed": seed,
        "n_keys": nk,
        "n_queries": nq,
        "fvu": sum(recent) / len(recent),
        "dead_fraction": float((since_fired >= dead_after).float().mean()),
    }
    sae.requires_grad_(False)
    return sae.eval()


@torch.no_grad()
def evaluate_sae(
    sae: TopKSAE, x: torch.Tensor, kind: str | None = None, batch_size: int = 65536
) -> dict[str, float]:
    """Reconstruction quality and latent usage of ``sae`` on ``x`` ``[..., d_in]``.

    Returns ``fvu`` (``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``, in the original,
    unscaled space), ``dead_fraction`` (latents never active with act > 0 on ``x``),
    ``mean_density`` (mean over latents of the fraction of vectors activating it) and ``n``.

    >>> sae = TopKSAE(SAEConfig(d_in=4, num_latents=8, k=2, hookpoint="h"))
    >>> r = evaluate_sae(sae, torch.randn(100, 4))
    >>> sorted(r), r["n"]
    (['dead_fraction', 'fvu', 'mean_density', 'n'], 100)
    """
    sae._check_input(x)
    flat = x.reshape(-1, sae.cfg.d_in)
    n = flat.shape[0]
    if n == 0:
        raise SAEError("evaluate_sae: x is empty")
    D = sae.cfg.num_latents
    counts = torch.zeros(D, dtype=torch.int64, device=sae.device)
    err = 0.0
    sq = 0.0
    total = torch.zeros(sae.cfg.d_in, dtype=torch.float64)
    for s in range(0, n, batch_size):
        xb = flat[s : s + batch_size].to(sae.device)
        acts, ids = sae.encode(xb, kind)
        x_hat = sae.decode(acts, ids, kind)
        xb64 = xb.double()
        err += float((xb64 - x_hat.double()).pow(2).sum())
        sq += float(xb64.pow(2).sum())
        total += xb64.sum(0).cpu()
        counts += torch.bincount(ids[acts > 0], minlength=D)
    # sum ||x - mean||^2 = sum ||x||^2 - n ||mean||^2 (float64 keeps the cancellation benign)
    var = sq - float(total.pow(2).sum()) / n
    return {
        "fvu": err / var if var > 0 else float("nan"),
        "dead_fraction": float((counts == 0).double().mean()),
        "mean_density": float(counts.sum()) / (n * D),
        "n": n,
    }
