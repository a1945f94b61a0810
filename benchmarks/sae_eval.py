"""Measure SAEs on held-out text: FVU, dead fraction and density on keys, on queries, and
dead latents over both streams together (a latent that only ever fires for queries is alive).

    python benchmarks/sae_eval.py                      # the shipped SAEs of the default model
    python benchmarks/sae_eval.py --saes my_saes --model smollm2-135m

Held-out text: the last 10% of the generic corpus (never used in training), 40k tokens.
"""

from __future__ import annotations

import argparse
import json

import torch

from s3_retriever.corpus import generic_corpus
from s3_retriever.model.hooks import hookpoint_layer
from s3_retriever.model.loading import load_model
from s3_retriever.sae.io import load_saes, shipped_sae_dir
from s3_retriever.sae.train import collect_qk, evaluate_sae


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--saes", default=None)
    ap.add_argument("--tokens", type=int, default=40_000)
    a = ap.parse_args(argv)
    lm = load_model(a.model)
    saes = load_saes(a.saes or shipped_sae_dir(a.model))
    texts = generic_corpus()
    layers = sorted(hookpoint_layer(hp) for hp in saes)
    held = collect_qk(lm, texts[int(len(texts) * 0.9):], layers, max_tokens=a.tokens,
                      show_progress=False)
    for hp, sae in sorted(saes.items()):
        layer = hookpoint_layer(hp)
        k, q = held.keys[layer], held.queries[layer]
        fired = torch.zeros(sae.cfg.num_latents, dtype=torch.bool)
        for x, kind in ((k, "key"), (q, "query")):
            acts, ids = sae.encode(x, kind=kind)
            fired[ids[acts > 0]] = True
        print(json.dumps({"hookpoint": hp, "num_latents": sae.cfg.num_latents, "k": sae.cfg.k,
                          "held_out_tokens": held.n_tokens,
                          "keys": evaluate_sae(sae, k, kind="key"),
                          "queries": evaluate_sae(sae, q, kind="query"),
                          "dead_fraction_keys_and_queries": 1 - fired.float().mean().item()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
