"""Running the evaluation on your own data: write questions with gold evidence in the
HotpotQA layout, then measure S3, hybrid, BM25, dense, random and oracle retrieval on it.

Run it with ``python docs/examples/evaluate_own_data.py``; it works in a temporary folder.
The same run from the shell::

    s3-retriever eval --data DIR --datasets hotpotqa --questions 0-5 --contexts 400 \\
        --budgets 64 128 --generate 0 --out DIR/quality.json --docs DIR/report
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

from s3_retriever import S3Index
from s3_retriever.corpus import HOTPOTQA_FILE
from s3_retriever.evaluation import EvalConfig, run_eval, write_report
from s3_retriever.evaluation.run import write_results

# Your data: each question names its paragraphs ("context": [title, [sentences...]]) and
# the sentences that answer it ("supporting_facts": [title, sentence index]). Paragraphs
# of the other questions pad each question's haystack up to the requested length.
QUESTIONS = [
    ("Which river runs past the Holt brewery?", "the Wend",
     [["Holt brewery", ["The Holt brewery was built in 1871.",
                        " It stands on the bank of the river Wend."]],
      ["River Wend", ["The Wend rises in the Carrow hills.", " It joins the sea at Ashby."]]],
     [["Holt brewery", 1]]),
    ("Who designed the Ashby clock tower?", "Ruth Pell",
     [["Ashby clock tower", ["The clock tower in Ashby was designed by Ruth Pell.",
                             " Its bell weighs two tonnes."]],
      ["Ruth Pell", ["Ruth Pell was an architect from Carrow.",
                     " She also built the town's library."]]],
     [["Ashby clock tower", 0]]),
    ("What do the Carrow hills produce?", "slate",
     [["Carrow hills", ["The Carrow hills are covered in heather.",
                        " Their quarries produce slate for roofs."]],
      ["Heather", ["Heather flowers purple in late summer."]]],
     [["Carrow hills", 1]]),
    ("When does the Ashby ferry stop running?", "in November",
     [["Ashby ferry", ["The Ashby ferry crosses the estuary every hour.",
                       " It stops running in November and starts again in April."]],
      ["Estuary", ["The estuary is home to thousands of wading birds."]]],
     [["Ashby ferry", 1]]),
    ("Which team plays at Wend Park?", "Ashby Rovers",
     [["Wend Park", ["Wend Park is a football ground by the river.",
                     " Ashby Rovers have played there since 1902."]],
      ["Ashby Rovers", ["Ashby Rovers wear blue shirts."]]],
     [["Wend Park", 1]]),
    ("What is the library in Carrow made of?", "red sandstone",
     [["Carrow library", ["The library in Carrow is built of red sandstone.",
                          " It holds twelve thousand books."]],
      ["Sandstone", ["Sandstone is a rock made of sand grains pressed together."]]],
     [["Carrow library", 0]]),
]


def write_dataset(folder: Path) -> Path:
    """Write the questions as ``hotpotqa_distractor.json.gz`` (the file the loader reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"_id": f"q{i}", "question": q, "answer": a, "type": "bridge", "level": "easy",
             "context": ctx, "supporting_facts": facts}
            for i, (q, a, ctx, facts) in enumerate(QUESTIONS)]
    with gzip.open(folder / HOTPOTQA_FILE, "wt", encoding="utf-8") as f:
        json.dump(rows, f)
    return folder


def main(workdir: Path) -> None:
    data = write_dataset(workdir / "data")
    cfg = EvalConfig(datasets=("hotpotqa",), data=str(data),
                     questions=tuple(range(len(QUESTIONS))),  # explicit question positions
                     contexts=(400,),  # haystack length in the model's tokens
                     budgets=(64, 128),  # retrieval budgets in tokens
                     generate=0,  # >0: also answer the first N questions and score EM/F1
                     show_progress=False)
    results = run_eval(cfg, index=S3Index.from_model())

    print("retriever  recall@64  recall@128")
    rows = {(r["retriever"], r["budget_tokens"]): r for r in results["runs"]}
    for name in cfg.retrievers:
        cells = [f"{rows[(name, b)]['evidence_recall']:9.2f}" for b in cfg.budgets]
        print(f"{name:<9} " + "  ".join(cells))

    write_results(results, workdir / "quality.json")  # every number, config and timing
    written = write_report(results, workdir / "report")  # quality_table.md and two plots
    print("report:", sorted(str(p.relative_to(workdir)) for p in written))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp))
