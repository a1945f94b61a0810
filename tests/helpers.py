"""Test helpers: a tiny random Llama behind the real tokenizer, with random SAEs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from s3_retriever.hooks import attention_spec
from s3_retriever.models import LoadedModel
from s3_retriever.sae import SAEConfig, TopKSAE

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
