"""The streaming scan: text -> tokens with char offsets -> chunks -> hooked keys -> SAE codes.

A document is cut into chunks of ``chunk_tokens``; each chunk is run with up to
``context_tokens`` of the preceding tokens of the *same* document as left context (those
are not indexed twice). Only the layers the SAEs need are run: the forward pass stops after
the last of them. Each chunk's activations are dropped before the next chunk runs, so
memory holds one chunk plus the compact codes (uint16 ids, fp16 activations).

Example:
    >>> from s3_retriever.retrieval.scan import tokenize_document
    >>> from transformers import AutoTokenizer  # doctest: +SKIP
    >>> ids, offsets = tokenize_document(tokenizer, "Hello world.")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from s3_retriever.errors import InvalidInputError
from s3_retriever.model.hooks import QKHooks, hookpoint_layer, stream_name
from s3_retriever.model.loading import LoadedModel
from s3_retriever.sae.coder import TopKSAE


def tokenize_document(tokenizer, text: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (int64) and char offsets (int32 [n, 2]) of ``text``, no special tokens."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                    return_attention_mask=False, verbose=False)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int32).reshape(-1, 2)
    return ids, offsets


def padded_length(length: int, full: int) -> int:
    """The length a forward pass of ``length`` tokens is padded to: the next multiple of 16
    up to 256 tokens, of 32 beyond, never past ``full`` (the longest chunk) or below
    ``length``: at most ~27 distinct shapes for the default 577-token chunks.

    >>> [padded_length(n, 577) for n in (100, 300, 570, 577)]
    [112, 320, 576, 577]
    """
    step = 16 if length <= 256 else 32
    return max(length, min(full, -(-length // step) * step))


def _on_device(sae: TopKSAE, device: torch.device) -> TopKSAE:
    """``sae`` itself when it lives on ``device``, else a copy moved there."""
    if sae.device == torch.device(device):
        return sae
    return copy.deepcopy(sae).to(device)


@dataclass
class ScannedDocument:
    """Codes of one document: ``ids[name]``/``acts[name]`` are [n_tokens, k] per postings name;
    ``bias[name]`` the float16 [n_tokens, m] exact key . bias-vector products (if any)."""

    token_char: np.ndarray
    ids: dict[str, np.ndarray]
    acts: dict[str, np.ndarray]
    bias: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return len(self.token_char)


class Scanner:
    """Turns documents into SAE codes of the indexed kv heads.

    Args:
        lm: the loaded model.
        saes: hookpoint -> SAE (``"layers.17"`` -> TopKSAE), shared by the layer's kv heads.
        kv_heads: hookpoint -> kv heads to index (default: all).
        chunk_tokens: tokens indexed per forward pass.
        context_tokens: left context carried into each chunk after the first.
        lock: held around every forward pass (the model's hooks are not thread-safe).
        bias_vectors: postings name -> ``[m, head_dim]`` vectors whose dot products with
            each exact key are kept as dense float16 columns (the engine passes the mean
            query of each scoring head: the query-mean term of the attention logit).
    """

    def __init__(self, lm: LoadedModel, saes: dict[str, TopKSAE], *,
                 kv_heads: dict[str, Sequence[int]] | None = None, chunk_tokens: int = 512,
                 context_tokens: int = 64, lock=None,
                 bias_vectors: Mapping[str, torch.Tensor] | None = None):
        if chunk_tokens <= 0 or context_tokens < 0:
            raise ValueError("chunk_tokens must be > 0 and context_tokens >= 0")
        if chunk_tokens + context_tokens + len(lm.sink_ids) > lm.max_length:
            raise ValueError(f"chunk_tokens + context_tokens = {chunk_tokens + context_tokens} "
                             f"exceeds the model's context of {lm.max_length} tokens")
        self.lm = lm
        self.saes = saes
        self.layers = {hp: hookpoint_layer(hp) for hp in saes}
        all_kv = range(lm.spec.n_kv_heads)
        self.kv_heads = {hp: sorted(kv_heads.get(hp, all_kv) if kv_heads else all_kv)
                         for hp in saes}
        self.chunk_tokens = chunk_tokens
        self.context_tokens = context_tokens
        self.lock = lock
        for hp, sae in saes.items():
            sae.check_compatible(lm.spec.head_dim, self.layers[hp])
        # the top-k encode runs where the keys are: a CUDA model encodes on the GPU
        self._encoders = {hp: _on_device(sae, lm.device) for hp, sae in saes.items()}
        self.bias_vectors = {nm: torch.as_tensor(v, dtype=torch.float32).reshape(
            -1, lm.spec.head_dim) for nm, v in (bias_vectors or {}).items() if len(v)}
        unknown = sorted(set(self.bias_vectors) - set(self.names))
        if unknown:
            raise ValueError(f"bias vectors for postings {unknown} that are not scanned "
                             f"({self.names})")

    @property
    def streams(self) -> dict[str, tuple[str, int]]:
        """The scanned key streams: name -> (hookpoint, kv head)."""
        return {stream_name(hp, g): (hp, g) for hp in self.saes for g in self.kv_heads[hp]}

    @property
    def names(self) -> list[str]:
        """The scanned streams' names (see :func:`~s3_retriever.model.hooks.stream_name`)."""
        return list(self.streams)

    def _forward(self, hooks: QKHooks, ids: np.ndarray) -> dict[int, torch.Tensor]:
        """Keys [1, len(ids), n_kv, d] per layer (the sink prefix is run and dropped).

        The input is right-padded to :func:`padded_length` (causal attention: padding
        after the last token changes no earlier key), so the forward passes of a scan
        come in a few dozen shapes at most: the CPU backend keeps caches per input shape
        (~3 MB each for the default model), which would otherwise grow with the number of
        documents scanned.
        """
        x = self.lm.input_tensor(ids)
        n = len(self.lm.sink_ids)
        full = n + self.context_tokens + self.chunk_tokens
        pad = padded_length(x.shape[1], full) - x.shape[1]
        if pad > 0:
            pad_id = self.lm.tokenizer.pad_token_id
            x = torch.cat([x, x.new_full((1, pad), 0 if pad_id is None else int(pad_id))], 1)
        with self.lock if self.lock is not None else contextlib.nullcontext():
            keys = hooks.run(input_ids=x).keys
        return {layer: k[:, n:n + len(ids)] for layer, k in keys.items()}

    def scan(self, texts: Sequence[str], *, show_progress: bool = True,
             on_document: Callable[[int, ScannedDocument], None] | None = None
             ) -> list[ScannedDocument]:
        """Scan ``texts``; returns one :class:`ScannedDocument` each (in order).

        ``on_document(i, doc)`` is called as each document finishes (for streaming callers).
        """
        tokenized = [tokenize_document(self.lm.tokenizer, t) for t in texts]
        total = sum(len(ids) for ids, _ in tokenized)
        out: list[ScannedDocument] = []
        bar = tqdm(total=total, desc="scanning", unit="tok", disable=not show_progress)
        with QKHooks(self.lm.model, sorted(set(self.layers.values())), keys=True) as hooks:
            for i, (ids, offsets) in enumerate(tokenized):
                doc = self._scan_one(hooks, ids, offsets, bar)
                if on_document is not None:
                    on_document(i, doc)
                out.append(doc)
        bar.close()
        return out

    def _scan_one(self, hooks: QKHooks, ids: np.ndarray, offsets: np.ndarray,
                  bar) -> ScannedDocument:
        n = len(ids)
        codes_ids = {nm: np.zeros((n, sae.cfg.k), np.uint16 if sae.cfg.num_latents <= 65536
                                  else np.int32)
                     for hp, sae in self.saes.items()
                     for nm in (stream_name(hp, g) for g in self.kv_heads[hp])}
        codes_acts = {nm: np.zeros(ids.shape, np.float16) for nm, ids in codes_ids.items()}
        bias = {nm: np.zeros((n, len(v)), np.float16) for nm, v in self.bias_vectors.items()}
        for start in range(0, n, self.chunk_tokens):
            end = min(n, start + self.chunk_tokens)
            left = max(0, start - self.context_tokens)
            keys = self._forward(hooks, ids[left:end])
            for hp, sae in self._encoders.items():
                k = keys[self.layers[hp]][0, start - left:]  # [t, n_kv, d]
                for g in self.kv_heads[hp]:
                    acts, fid = sae.encode(k[:, g, :], kind="key")
                    nm = stream_name(hp, g)
                    codes_ids[nm][start:end] = fid.cpu().numpy()
                    codes_acts[nm][start:end] = acts.cpu().numpy()
                    if nm in bias:
                        b = k[:, g, :].float().cpu() @ self.bias_vectors[nm].T
                        bias[nm][start:end] = b.clamp(-60000, 60000).numpy()
            del keys
            bar.update(end - start)
        return ScannedDocument(offsets, codes_ids, codes_acts, bias)


def question_queries(lm: LoadedModel, question: str, hookpoints: Sequence[str]
                     ) -> dict[str, torch.Tensor]:
    """The question's pre-RoPE queries at each hookpoint's layer: ``[T, n_heads, d]``."""
    ids, _ = tokenize_document(lm.tokenizer, question)
    n_sink = len(lm.sink_ids)
    if len(ids) + n_sink > lm.max_length:
        raise InvalidInputError(f"the query is {len(ids)} tokens, longer than the model's "
                                f"context of {lm.max_length} tokens")
    layers = {hp: hookpoint_layer(hp) for hp in hookpoints}
    with lm.lock, QKHooks(lm.model, sorted(set(layers.values())), keys=False,
                          queries=True) as hooks:
        cap = hooks.run(input_ids=lm.input_tensor(ids))
    return {hp: cap.queries[layer][0, n_sink:].float().cpu() for hp, layer in layers.items()}
