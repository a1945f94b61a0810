"""Collect pre-RoPE key and query vectors of a model over texts (the SAE training data).

Example:
    >>> from s3_retriever.models import load_model
    >>> lm = load_model("smollm2-135m")
    >>> acts = collect_qk(lm, ["Paris is the capital of France."], layers=[17])
    >>> acts.keys[17].shape[1:], acts.queries[17].shape[1:]
    (torch.Size([64]), torch.Size([64]))
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from s3_retriever.hooks import QKHooks
from s3_retriever.models import LoadedModel


@dataclass
class QKVectors:
    """Flattened vectors per layer: ``keys[layer]`` is [tokens * n_kv_heads, head_dim] and
    ``queries[layer]`` is [tokens * n_heads, head_dim] (float32, on the CPU)."""

    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    queries: dict[int, torch.Tensor] = field(default_factory=dict)
    n_tokens: int = 0


def token_chunks(lm: LoadedModel, texts: Iterable[str], chunk_tokens: int,
                 max_tokens: int | None = None) -> list[list[int]]:
    """Tokenise ``texts`` (joined by blank lines) into chunks of ``chunk_tokens`` ids."""
    ids: list[int] = []
    sep = lm.tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    for t in texts:
        ids.extend(lm.tokenizer(t, add_special_tokens=False)["input_ids"])
        ids.extend(sep)
        if max_tokens is not None and len(ids) >= max_tokens:
            ids = ids[:max_tokens]
            break
    return [ids[i:i + chunk_tokens] for i in range(0, len(ids), chunk_tokens)]


def collect_qk(lm: LoadedModel, texts: Sequence[str], layers: Sequence[int], *,
               chunk_tokens: int = 512, max_tokens: int | None = None,
               show_progress: bool = True) -> QKVectors:
    """Run ``texts`` through the model in chunks (each after the model's sink prefix, as the
    scan runs them) and keep every key and query vector of the text's tokens."""
    skip_first = len(lm.sink_ids)
    chunks = token_chunks(lm, texts, chunk_tokens, max_tokens)
    out = QKVectors()
    ks: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    qs: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    with QKHooks(lm.model, layers, keys=True, queries=True) as hooks:
        for chunk in tqdm(chunks, desc="collecting keys/queries", disable=not show_progress,
                          unit="chunk"):
            cap = hooks.run(input_ids=lm.input_tensor(chunk))
            for i in layers:
                ks[i].append(cap.keys[i][0, skip_first:].float().cpu().reshape(-1, lm.spec.head_dim))
                qs[i].append(cap.queries[i][0, skip_first:].float().cpu()
                             .reshape(-1, lm.spec.head_dim))
            out.n_tokens += len(chunk)
    for i in layers:
        out.keys[i] = torch.cat(ks[i]) if ks[i] else torch.empty(0, lm.spec.head_dim)
        out.queries[i] = torch.cat(qs[i]) if qs[i] else torch.empty(0, lm.spec.head_dim)
    return out
