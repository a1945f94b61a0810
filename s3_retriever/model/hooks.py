"""Capture pre-RoPE per-head attention keys and queries, and stop the forward pass early.

Keys are ``k_proj`` (after a per-head ``k_norm`` where one exists) split into kv heads,
queries likewise; RoPE comes later, so they carry content, not position. Query head ``h``
reads kv head ``spec.kv_group(h)``. Also the naming of hookpoints and key streams.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...                   num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    >>> model = LlamaForCausalLM(cfg).eval()
    >>> out = capture_qk(model, torch.tensor([[1, 2, 3]]), layers=[1], queries=True)
    >>> tuple(out.keys[1].shape), tuple(out.queries[1].shape)
    ((1, 3, 2, 8), (1, 3, 4, 8))
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class AttentionSpec:
    """Geometry of a model's attention: what the hooks and SAEs need to know."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv_heads

    def kv_group(self, head: int) -> int:
        """The kv head that query head ``head`` attends with (GQA)."""
        if not 0 <= head < self.n_heads:
            raise ValueError(f"query head {head} out of range 0..{self.n_heads - 1}")
        return head // self.group_size


def hookpoint_name(layer: int) -> str:
    """The SAE hookpoint of a layer's attention: ``"layers.17"``."""
    return f"layers.{int(layer)}"


def hookpoint_layer(hookpoint: str) -> int:
    """The layer of an SAE hookpoint name such as ``"layers.17"``."""
    try:
        return int(hookpoint.split(".")[1])
    except (IndexError, ValueError):
        raise ValueError(f"hookpoint {hookpoint!r} is not of the form 'layers.N'") from None


def stream_name(hookpoint: str, kv_head: int) -> str:
    """The name of one kv head's key stream under an SAE hookpoint: ``"layers.17.kv0"``
    (its codes, postings and files are named so; never parsed back)."""
    return f"{hookpoint}.kv{kv_head}"


def decoder_layers(model: Any) -> Sequence[torch.nn.Module]:
    """The decoder layers of a causal LM (Llama/Qwen2/Qwen3/Mistral/Gemma layouts)."""
    for path in ("model.layers", "model.language_model.layers", "language_model.model.layers",
                 "transformer.layers"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise ValueError(f"{type(model).__name__}: cannot find the decoder layers; supported are "
                     "Llama, Qwen2, Qwen3, Mistral and Gemma-style models")


def attention_spec(model: Any) -> AttentionSpec:
    """Read layers, heads, kv heads and head_dim from a model's config."""
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    n_heads = int(cfg.num_attention_heads)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads)
    return AttentionSpec(int(cfg.num_hidden_layers), n_heads, n_kv, head_dim)


def _attn(layer: torch.nn.Module) -> torch.nn.Module:
    attn = getattr(layer, "self_attn", None) or getattr(layer, "attention", None)
    if attn is None or not hasattr(attn, "k_proj"):
        raise ValueError(f"{type(layer).__name__}: no self_attn.k_proj/q_proj to hook")
    return attn


def _hook_module(attn: torch.nn.Module, kind: str, head_dim: int) -> torch.nn.Module:
    # A per-head norm (weight of size head_dim) is applied before RoPE: hook its output.
    norm = getattr(attn, f"{kind}_norm", None)
    if norm is not None and getattr(norm, "weight", None) is not None \
            and norm.weight.shape[-1] == head_dim:
        return norm
    return getattr(attn, f"{kind}_proj")


class _StopForward(Exception):
    """Raised inside a hook once every needed vector is captured."""


class _AmbiguousLayout(Exception):
    """A 4-D per-head norm output whose token and head axes have the same size."""


@dataclass
class QKCapture:
    """Captured vectors: ``keys[layer]`` is [batch, tokens, n_kv_heads, head_dim],
    ``queries[layer]`` is [batch, tokens, n_heads, head_dim]."""

    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    queries: dict[int, torch.Tensor] = field(default_factory=dict)


class QKHooks:
    """Context manager that installs capture hooks and always removes them.

    Args:
        model: a supported causal LM.
        layers: layer indices to capture.
        keys / queries: which streams to capture.
        stop_early: raise once the last requested layer's vectors are captured, so the
            layers above it never run (use :meth:`run` to swallow that signal).

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
        ...                   num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
        >>> m = LlamaForCausalLM(cfg).eval()
        >>> with QKHooks(m, [0, 2]) as h:
        ...     cap = h.run(input_ids=torch.tensor([[5, 6]]))
        >>> sorted(cap.keys)
        [0, 2]
    """

    def __init__(self, model: Any, layers: Iterable[int], *, keys: bool = True,
                 queries: bool = False, stop_early: bool = True):
        self.model = model
        self.spec = attention_spec(model)
        self.layers = sorted(set(int(i) for i in layers))
        if not self.layers:
            raise ValueError("no layers to capture")
        bad = [i for i in self.layers if not 0 <= i < self.spec.n_layers]
        if bad:
            raise ValueError(f"layers {bad} out of range 0..{self.spec.n_layers - 1}")
        if not (keys or queries):
            raise ValueError("capture keys, queries or both")
        self.want = [s for s, on in (("k", keys), ("q", queries)) if on]
        self.stop_early = stop_early
        self._handles: list[Any] = []
        self._tokens = -1
        self.capture = QKCapture()

    def _make_hook(self, layer: int, kind: str, n: int):
        last = self.layers[-1]

        def hook(_mod, _inp, out):
            out = out[0] if isinstance(out, tuple) else out
            if out.dim() == 4 and self._head_major(kind, out, n):
                out = out.transpose(1, 2)  # [B, H, T, D] (e.g. Gemma 3) -> [B, T, H, D]
            store = self.capture.keys if kind == "k" else self.capture.queries
            store[layer] = out.detach().reshape(*out.shape[:2], n, self.spec.head_dim)
            if self.stop_early and layer == last and all(
                    last in (self.capture.keys if s == "k" else self.capture.queries)
                    for s in self.want):
                raise _StopForward
        return hook

    def _head_major(self, kind: str, out: torch.Tensor, n: int) -> bool:
        """Whether a 4-D norm output is [B, H, T, D] rather than [B, T, H, D]: models apply
        the per-head q/k norm before (Qwen3) or after (Gemma 3) moving heads first. Learnt
        from the shapes, and remembered per model for calls where T == H."""
        known = getattr(self.model, "_s3_head_major", {})
        t = self._tokens
        if out.shape[1] == t and out.shape[2] == n and t != n:
            major = False
        elif out.shape[1] == n and out.shape[2] == t and t != n:
            major = True
        elif kind in known:
            return known[kind]
        else:
            raise _AmbiguousLayout
        known[kind] = major
        self.model._s3_head_major = known
        return major

    def __enter__(self) -> QKHooks:
        layers = decoder_layers(self.model)
        try:
            for i in self.layers:
                attn = _attn(layers[i])
                for kind in self.want:
                    n = self.spec.n_kv_heads if kind == "k" else self.spec.n_heads
                    mod = _hook_module(attn, kind, self.spec.head_dim)
                    self._handles.append(mod.register_forward_hook(self._make_hook(i, kind, n)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def run(self, **inputs: Any) -> QKCapture:
        """Run the model on ``inputs`` (no grad, no KV cache) and return the capture."""
        self.capture = QKCapture()
        ref = inputs.get("input_ids", inputs.get("inputs_embeds"))
        self._tokens = int(ref.shape[1]) if ref is not None else -1
        with torch.inference_mode():
            try:
                self.model(**inputs, use_cache=False)
            except _StopForward:
                pass
            except _AmbiguousLayout:
                # as many tokens as heads: learn the layout from one more token, then rerun
                ids = inputs["input_ids"]
                self.run(input_ids=torch.cat([ids[:, :1], ids], dim=1))
                return self.run(**inputs)
        missing = [i for i in self.layers for s in self.want
                   if i not in (self.capture.keys if s == "k" else self.capture.queries)]
        if missing:
            raise RuntimeError(f"hooks did not fire for layers {sorted(set(missing))}; "
                               "is the model's attention a supported layout?")
        return self.capture


def capture_qk(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               *, layers: Iterable[int], keys: bool = True, queries: bool = False,
               stop_early: bool = True) -> QKCapture:
    """One forward pass that captures pre-RoPE keys/queries at ``layers`` (see :class:`QKHooks`)."""
    inputs: dict[str, Any] = {"input_ids": input_ids}
    if attention_mask is not None:
        inputs["attention_mask"] = attention_mask
    with QKHooks(model, layers, keys=keys, queries=queries, stop_early=stop_early) as h:
        return h.run(**inputs)
