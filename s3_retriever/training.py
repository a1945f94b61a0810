"""Train the SAEs of a model: collect keys and queries of generic text, fit one Top-k SAE per
layer on both streams, measure it on held-out keys and held-out queries, save it.

Example:
    >>> from s3_retriever.training import train_model_saes
    >>> texts = ["Bread is made from flour, water and yeast.", "Tides follow the moon."]
    >>> report = train_model_saes("smollm2-135m", [17], "my_saes", texts=texts,
    ...                           num_latents=64, k=4, steps=20, show_progress=False)
    >>> sorted(report["layers.17"]["held_out"])
    ['keys', 'queries']
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from s3_retriever import storage
from s3_retriever.activations import collect_qk
from s3_retriever.corpus import generic_corpus
from s3_retriever.models import LoadedModel, load_model
from s3_retriever.sae import TopKSAE, evaluate_sae, is_sae_folder, save_saes, train_sae

GENERIC_CORPUS_NOTE = ("HotpotQA dev paragraphs of the questions reserved for SAE training "
                       "(s3_retriever.corpus.RESERVED_SAE_QUESTIONS), CC BY-SA 4.0")


def train_model_saes(model: str | LoadedModel, layers: Sequence[int], out: str | os.PathLike,
                     *, num_latents: int = 2048, k: int = 16, texts: Sequence[str] | None = None,
                     max_tokens: int = 300_000, held_out_tokens: int = 40_000,
                     steps: int | None = None, epochs: float = 2.0, auxk_alpha: float = 0.125,
                     lr: float | None = None, batch_size: int = 4096, seed: int = 0,
                     heads: Sequence[tuple[int, int]] | None = None,
                     device: str | None = None, overwrite: bool = False,
                     show_progress: bool = True) -> dict[str, Any]:
    """Train and save one SAE per layer; returns FVU / dead / density per layer on held-out
    keys and queries (the last 10% of the texts, never seen in training).

    ``heads``: ``(layer, query head)`` pairs. When given, each layer's SAE sees only the
    queries of its listed heads and the keys of the kv heads they read (the vectors the
    engine will score), instead of every head of the layer.

    ``out`` must be a new or empty folder, or (with ``overwrite``) an SAE folder; it is
    checked before any training."""
    storage.check_folder_output(out, overwrite=overwrite, recognise=is_sae_folder)
    lm = model if isinstance(model, LoadedModel) else load_model(model, device)
    source = "user texts" if texts is not None else GENERIC_CORPUS_NOTE
    texts = list(texts) if texts is not None else generic_corpus()
    if len(texts) < 2:
        raise ValueError("need at least 2 texts (training and held-out parts)")
    cut = max(1, int(len(texts) * 0.9))
    train = collect_qk(lm, texts[:cut], layers, max_tokens=max_tokens,
                       show_progress=show_progress)
    held = collect_qk(lm, texts[cut:], layers, max_tokens=held_out_tokens,
                      show_progress=show_progress)
    saes: dict[str, TopKSAE] = {}
    report: dict[str, Any] = {}
    spec = lm.spec

    def select(qk, layer):
        mine = sorted({h for lay, h in heads if lay == layer}) if heads else []
        if not mine:
            return qk.keys[layer], qk.queries[layer]
        kv = sorted({spec.kv_group(h) for h in mine})
        return (qk.keys[layer].reshape(-1, spec.n_kv_heads, spec.head_dim)[:, kv]
                .reshape(-1, spec.head_dim),
                qk.queries[layer].reshape(-1, spec.n_heads, spec.head_dim)[:, mine]
                .reshape(-1, spec.head_dim))

    for layer in layers:
        hp = f"layers.{layer}"
        train_k, train_q = select(train, layer)
        held_k, held_q = select(held, layer)
        sae = train_sae(train_k, train_q, num_latents=num_latents, k=k,
                        hookpoint=hp, layer=layer, model_id=lm.model_id,
                        trained_on=f"{source}; {train.n_tokens} tokens", steps=steps,
                        epochs=epochs, auxk_alpha=auxk_alpha, lr=lr, batch_size=batch_size,
                        seed=seed, show_progress=show_progress)
        ev = {"keys": evaluate_sae(sae, held_k, kind="key"),
              "queries": evaluate_sae(sae, held_q, kind="query")}
        sae.cfg.train_stats["held_out"] = ev
        saes[hp] = sae
        report[hp] = {"held_out": ev, "train_tokens": train.n_tokens,
                      "held_out_tokens": held.n_tokens}
    save_saes(saes, Path(out), overwrite=overwrite)
    return report
