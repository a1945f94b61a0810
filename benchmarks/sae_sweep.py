"""SAE settings sweep on one layer: collect keys/queries of the generic corpus once, then train
and measure each (dictionary size, k, AuxK weight, epochs, lr) setting on held-out text.

    python benchmarks/sae_sweep.py --layer 17 \\
        --config 4096,16,0.03125,1 --config 4096,16,0,1 --config 4096,16,0.125,2 \\
        --config 4096,16,0.25,2,0.002 --config 2048,16,0.125,2

Each config is ``num_latents,k,auxk_alpha,epochs[,lr]``. Prints one JSON line per config
with held-out FVU, dead fraction and density on keys and on queries.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from s3_retriever.corpus import generic_corpus
from s3_retriever.model.loading import load_model
from s3_retriever.sae.train import collect_qk, evaluate_sae, train_sae


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", type=int, default=17)
    ap.add_argument("--config", action="append", required=True)
    ap.add_argument("--max-tokens", type=int, default=300_000)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    lm = load_model("smollm2-135m")
    texts = generic_corpus()
    cut = int(len(texts) * 0.9)
    train = collect_qk(lm, texts[:cut], [a.layer], max_tokens=a.max_tokens)
    held = collect_qk(lm, texts[cut:], [a.layer], max_tokens=40_000)
    for cfg in a.config:
        parts = cfg.split(",")
        d, k, aux, ep = int(parts[0]), int(parts[1]), float(parts[2]), float(parts[3])
        lr = float(parts[4]) if len(parts) > 4 else None
        t = time.perf_counter()
        sae = train_sae(train.keys[a.layer], train.queries[a.layer], num_latents=d, k=k,
                        hookpoint=f"layers.{a.layer}", layer=a.layer, epochs=ep,
                        auxk_alpha=aux, lr=lr, show_progress=False)
        print(json.dumps({"layer": a.layer, "num_latents": d, "k": k, "auxk_alpha": aux,
                          "epochs": ep, "lr": lr, "train_s": round(time.perf_counter() - t),
                          "keys": evaluate_sae(sae, held.keys[a.layer], kind="key"),
                          "queries": evaluate_sae(sae, held.queries[a.layer],
                                                  kind="query")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
