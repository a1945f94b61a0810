"""Using a GPU: load the model on CUDA when there is one (on the CPU otherwise), scan a
longer document, search it and answer from it.

Run it with ``python docs/examples/gpu.py``. With a CUDA build of torch and a GPU the model
runs there in bf16 with 2,048-token scan chunks; without one, everything below still runs
on the CPU.
"""

from __future__ import annotations

import time

import torch

from s3_retriever import S3Index, load_model

ITEMS = ["anchors", "barrels", "candles", "copper wire", "lanterns", "maps", "nails",
         "oars", "ropes", "sails", "salt", "tar"]
CLERKS = ["Ada", "Bram", "Cleo", "Dov", "Edda"]


def ledger(n_rows: int = 240) -> str:
    """A long, repetitive document: one line per shelf of a warehouse ledger."""
    rows = [f"Shelf {i}: {ITEMS[i % len(ITEMS)]}, {(i * 37) % 500 + 10} units, checked "
            f"by {CLERKS[i % len(CLERKS)]}." for i in range(n_rows)]
    rows[173] = "Shelf 173: the brass ship's bell, one unit, locked in the red cabinet."
    return "\n".join(rows)


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lm = load_model("smollm2-135m", device=device)  # dtype: bf16 on CUDA, by CPU otherwise
    index = S3Index.from_model(lm)  # chunk_tokens: 2048 on CUDA, 512 on the CPU
    print(f"device {lm.device.type}, dtype {str(lm.dtype).replace('torch.', '')}, "
          f"chunk_tokens {index.settings.chunk_tokens}")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    start = time.perf_counter()
    index.add_texts([ledger()], ids=["ledger"], show_progress=False)
    seconds = time.perf_counter() - start
    stats = index.stats()
    print(f"scanned {stats['tokens']} tokens in {seconds:.1f} s; index "
          f"{stats['index_bytes_per_token']:.0f} bytes/token vs KV cache "
          f"{stats['kv_bytes_per_token']} bytes/token")
    if device == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")

    question = "Where is the brass ship's bell kept?"
    print(index.search(question, k=1)[0].text)
    print(index.answer(question, budget_tokens=256).text)


if __name__ == "__main__":
    main()
