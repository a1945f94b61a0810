"""Test helpers: a tiny random Llama behind the real tokenizer, with random SAEs."""

from __future__ import annotations

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
