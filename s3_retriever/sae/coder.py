"""The Top-k sparse autoencoder (SAE) over attention key/query vectors, and its files.

:class:`TopKSAE` turns a ``head_dim`` vector into ``k`` latent ids + activations. Keys and
queries share it; each stream is first divided by its own RMS norm (``key_scale`` /
``query_scale``). On disk: a folder with ``cfg.json`` + ``sae.safetensors`` (the same file names as
EleutherAI sparsify's, other tensor names; :mod:`s3_retriever.sae.io` converts). The trainer lives in :mod:`s3_retriever.sae.train`.

>>> import torch
>>> sae = TopKSAE(SAEConfig(d_in=8, num_latents=32, k=4, hookpoint="layers.0"))
>>> acts, ids = sae.encode(torch.randn(3, 8))
>>> acts.shape, ids.shape, sae.decode(acts, ids).shape
(torch.Size([3, 4]), torch.Size([3, 4]), torch.Size([3, 8]))
"""

from __future__ import annotations

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

from s3_retriever import storage
from s3_retriever.errors import SAEError
from s3_retriever.sae.kernels import topk_encode
from s3_retriever.validate import is_int as _is_int

__all__ = ['CFG_FILE', 'WEIGHTS_FILE', 'SAEConfig', 'TopKSAE']


CFG_FILE = "cfg.json"

WEIGHTS_FILE = "sae.safetensors"

FORMAT_VERSION = 1

_TENSOR_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")

_KINDS = (None, "key", "query")

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

def read_sae_folder(folder: Path) -> tuple[Any, bytes]:
    """The parsed ``cfg.json`` and the ``sae.safetensors`` bytes of an SAE folder (this
    package's layout and EleutherAI sparsify's use the same two names).

    Raises:
        SAEError: a file is missing or unreadable, or the config is not JSON.
    """
    cfg_path, w_path = folder / CFG_FILE, folder / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise SAEError(f"SAE file missing: {p}")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SAEError(f"{cfg_path}: corrupt SAE config ({e})") from None
    try:
        return cfg, w_path.read_bytes()
    except OSError as e:
        raise SAEError(f"{w_path}: unreadable ({e})") from None


def _sparse_decode(ids: torch.Tensor, acts: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """``sum_i acts[:, i] * W_dec[ids[:, i]]`` without materialising ``[n, k, d]``."""
    if ids.shape[0] == 0:
        return W_dec.new_zeros(0, W_dec.shape[1])
    return F.embedding_bag(ids, W_dec, per_sample_weights=acts, mode="sum")


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
        cfg_dict, data = read_sae_folder(folder)
        try:
            cfg = SAEConfig.from_dict(cfg_dict)
        except TypeError as e:
            raise SAEError(f"{cfg_path}: {e}") from e
        except SAEError as e:
            raise SAEError(f"{cfg_path}: {e}") from e
        try:
            tensors = st_load(data)
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
