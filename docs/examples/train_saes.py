"""Training SAEs for your own model: collect pre-RoPE keys and queries of generic text, fit
a Top-k SAE per layer, check it on held-out text, and build an index with it.

This run is deliberately tiny (one layer, a few hundred tokens of text, 256 latents) so that it
finishes in seconds; real SAEs want ~300k tokens and 2,048+ latents (see the tutorial).
Run it with ``python docs/examples/train_saes.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from s3_retriever import S3Index, load_model
from s3_retriever.sae.train import train_model_saes

# Generic text: any prose that is *not* what you will ask questions about.
GENERIC = [
    "Bread is made from flour, water, salt and yeast. The dough rises while the yeast "
    "turns sugar into gas, and the oven sets the crumb and browns the crust.",
    "A glacier forms where more snow falls in winter than melts in summer. Over centuries "
    "the snow packs into ice, which flows slowly downhill under its own weight.",
    "The violin has four strings tuned in fifths. Players press the strings against the "
    "fingerboard with one hand and draw the bow across them with the other.",
    "Honeybees communicate the direction of flowers with a waggle dance. The angle of the "
    "dance points to the food, and its length tells the distance.",
    "A lighthouse warns ships of dangerous coasts. Each one flashes its own pattern, so "
    "sailors can tell which light they are looking at from the charts.",
    "Copper conducts electricity well and does not rust, which is why it is used in "
    "household wiring. Its green patina forms slowly in moist air.",
    "Chess begins with sixteen pieces on each side. The game ends when a king is attacked "
    "and cannot escape, which is called checkmate.",
    "Tides rise and fall twice a day because of the pull of the moon and the sun. The "
    "highest tides, called spring tides, come at new and full moon.",
    "A library lends books, maps and recordings. Many libraries also keep old newspapers, "
    "so that readers can look up what happened on a given day.",
    "Tea plants grow best on hillsides with warm days and cool nights. The youngest "
    "leaves are picked by hand and dried, rolled or fermented.",
]

LAYER = 17
HEADS = [[f"layers.{LAYER}", h, 1.0] for h in (3, 4, 5)]  # query heads that score


def main(out: Path) -> None:
    lm = load_model("smollm2-135m")  # or a Hub id / local folder / .gguf of your model
    print(f"{lm.model_id}: {lm.spec.n_layers} layers, {lm.spec.n_heads} query heads, "
          f"{lm.spec.n_kv_heads} kv heads, head_dim {lm.spec.head_dim}")

    # One SAE per layer, trained on the layer's keys and queries; the last 10% of the
    # texts are held out and measured (FVU: fraction of variance unexplained).
    report = train_model_saes(lm, [LAYER], out, texts=GENERIC, num_latents=256, k=8,
                              steps=300, batch_size=1024, lr=1e-2, show_progress=False)
    held = report[f"layers.{LAYER}"]["held_out"]
    print(f"trained on {report[f'layers.{LAYER}']['train_tokens']} tokens; held-out FVU: "
          f"keys {held['keys']['fvu']:.2f}, queries {held['queries']['fvu']:.2f}")
    print("saved:", sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()))

    # An index on the new SAE: only layer 17's kv head that heads 3-5 read is scanned.
    index = S3Index.from_model(lm, saes=out, heads=HEADS)
    index.add_texts(["The museum opens at nine and closes at five.",
                     "The ferry to the island leaves from pier four.",
                     "Fresh bread is sold at the bakery on Mill Street."],
                    ids=["museum", "ferry", "bakery"], show_progress=False)
    print("postings:", index.index.hookpoints)
    for mode in ("s3", "hybrid"):
        top = index.search("Where does the ferry leave from?", k=1, mode=mode)[0]
        print(f"{mode}: {top.doc_id} -> {top.text}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp) / "my_saes")
