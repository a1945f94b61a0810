"""Test helpers: a tiny random Llama behind the real tokenizer, random SAEs and test data
(codes, segments, documents), and the assertions several test modules share."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from s3_retriever.index import Codes, DocRecord, Postings, Segment
from s3_retriever.model.hooks import attention_spec
from s3_retriever.model.loading import LoadedModel
from s3_retriever.retrieval.spans import grow_spans
from s3_retriever.retrieval.units import sentence_token_counts
from s3_retriever.sae.coder import SAEConfig, TopKSAE

TEXTS = [
    "Marie Curie was born in Warsaw in 1867. She moved to Paris to study physics. "
    "She won the Nobel Prize twice.",
    "The Amazon river flows through Brazil. It carries more water than any other river. "
    "Its basin is home to a vast rainforest.",
    "Johann Sebastian Bach composed the Brandenburg Concertos. He worked in Leipzig for "
    "many years. His music is still played today.",
]


def tiny_lm(tokenizer, seed: int = 0, layers: int = 3) -> LoadedModel:
    """A random 3-layer Llama (head_dim 16, GQA 4/2) using the real model's tokenizer."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=16, max_position_embeddings=1024)
    model = LlamaForCausalLM(cfg).eval()
    return LoadedModel(model, tokenizer, f"tiny-{seed}", f"tiny:{seed}", attention_spec(model))


def tiny_saes(layers=(1, 2), seed: int = 0) -> dict[str, TopKSAE]:
    g = torch.Generator().manual_seed(seed)
    return {f"layers.{i}": TopKSAE(SAEConfig(d_in=16, num_latents=64, k=4,
                                             hookpoint=f"layers.{i}", layer=i), generator=g)
            for i in layers}


_WORD = re.compile(r"[^\W_]{3,}")
_STOP = {"the", "and", "was", "were", "is", "are", "for", "with", "that", "this", "from",
         "what", "which", "who", "answer", "question", "context"}


def assert_grounded(answer: str, evidence: Iterable[str]) -> None:
    """A generated answer is non-empty and repeats a content word of its evidence.

    The wording is never pinned: greedy generation differs between bf16 and fp32 (and
    between CPUs), so tests assert what stays true on every machine."""
    assert isinstance(answer, str) and answer.strip(), f"empty answer {answer!r}"
    words = {w.lower() for w in _WORD.findall(answer)} - _STOP
    seen = {w.lower() for text in evidence for w in _WORD.findall(text)}
    assert words & seen, f"answer {answer!r} shares no content word with its evidence"


def generation(index_dir: Path) -> Path:
    """The folder of the generation a saved index's ``CURRENT`` pointer names."""
    return Path(index_dir) / json.loads((Path(index_dir) / "CURRENT").read_text())["folder"]


# ---------------------------------------------------------------- index test data
HOOKS = ["layers.17.kv0", "layers.18.kv2"]
L = 64
K = 6


def random_codes(rng: np.random.Generator, n: int, k: int = K, num_latents: int = L):
    """Top-k-like scan output: distinct ids per row, some activations <= 0."""
    ids = np.argsort(rng.random((n, num_latents)), axis=1)[:, :k]
    acts = rng.random((n, k)).astype(np.float32) * 4
    acts[rng.random((n, k)) < 0.2] = 0.0
    acts[rng.random((n, k)) < 0.05] = -1.0
    return ids, acts


def make_batch(rng: np.random.Generator, names: list[str], lens: list[int], *,
               hooks: list[str] = HOOKS, num_latents: int = L,
               bias: dict[str, int] | None = None):
    """A segment with one document per name, ``lens[i]`` tokens each, its raw scan codes,
    and ``bias[h]`` random float16 bias columns per token for stream ``h``."""
    n = sum(lens)
    raw = {h: random_codes(rng, n, num_latents=num_latents) for h in hooks}
    seg = Segment(
        {h: Codes.from_scan(*raw[h], num_latents) for h in hooks},
        token_doc=np.repeat(np.arange(len(lens)), lens),
        token_char=np.stack([np.concatenate([np.arange(m) for m in lens]),
                             np.concatenate([np.arange(m) + 1 for m in lens])], axis=1),
        bias={h: rng.normal(size=(n, m)).astype(np.float16) for h, m in (bias or {}).items()},
    )
    docs, start = [], 0
    for name, m in zip(names, lens, strict=True):
        docs.append(DocRecord(name, "x" * m, {"name": name}, token_start=start,
                              token_end=start + m, sentences=[(0, m)]))
        start += m
    return seg, docs, raw


def assert_postings_equal(a: Postings, b: Postings) -> None:
    assert a.n_tokens == b.n_tokens and a.num_latents == b.num_latents
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.acts, b.acts)


def snapshot(index: Any):
    return (index.stats(), [d.to_dict() for d in index.docs], len(index.segments),
            sorted(d.doc_id for d in index.docs if d.doc_id in index))


def random_docs(rng: random.Random, n_docs: int):
    """Documents as (doc_id, text, sentences, token_sentence, grown) with random scores."""
    docs = []
    for d in range(n_docs):
        n_sent = rng.randint(0, 6)
        sentences, pos, ts = [], 0, []
        for j in range(n_sent):
            length = rng.randint(3, 12)
            sentences.append((pos, pos + length))
            ts += [j] * rng.choice([0, 1, 2, 5, 9])  # some sentences get no tokens
            pos += length + 1
        ts = [-1] * rng.randint(0, 2) + ts
        text = "x" * max(pos, 1)
        scores = np.array([rng.choice([0.5, 1.0, rng.random(), float("nan")])
                           for _ in range(n_sent)])
        tokens = sentence_token_counts(np.array(ts, dtype=np.int64), n_sent)
        grown = grow_spans(scores, sentences, np.maximum(tokens, 1),
                           span_tokens=rng.choice([0, 4, 12]))
        docs.append((f"d{d}", text, sentences, np.array(ts, dtype=np.int64), grown))
    return docs
