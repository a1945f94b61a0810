"""Do two source trees of s3-retriever return the same spans? A check for refactors.

    git worktree add /tmp/before <commit>
    python benchmarks/search_parity.py /tmp/before . --questions 100-129

Each tree runs in its own process on the same data: the union of the questions' HotpotQA
8k haystacks (dev split by default) is indexed, and every question is searched in the
``s3``, ``hybrid`` and ``bm25`` modes at 512 and 1,024 tokens, restricted to its haystack.
Prints how many of those searches return identical spans (ids, offsets, scores rounded to
5 decimals), how many return the same spans in the same order, and the first difference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_DUMP = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from s3_retriever import S3Index
from s3_retriever.evaluation.data import hotpotqa_benchmark
index = S3Index.from_model("smollm2-135m")
tok = index.lm.tokenizer
bench = hotpotqa_benchmark(json.loads(sys.argv[3]), 8000,
                           lambda t: len(tok(t, add_special_tokens=False)["input_ids"]), seed=0)
docs = list(bench.documents.values())
index.add_texts([d.text for d in docs], [d.metadata for d in docs], [d.doc_id for d in docs],
                show_progress=False)
out = []
for ex in bench.examples:
    for mode in ("s3", "hybrid", "bm25"):
        for budget in (512, 1024):
            spans = index.search(ex.question, k=None, budget_tokens=budget, mode=mode,
                                 doc_ids=ex.doc_ids)
            out.append([ex.qid, mode, budget, [(s.doc_id, s.start_char, s.end_char,
                                                round(s.score, 5)) for s in spans]])
json.dump({"tokens": int(index.index.n_tokens), "searches": out}, open(sys.argv[2], "w"))
"""


def dump(tree: Path, questions: list[int], out: Path) -> dict:
    from s3_retriever.corpus import data_dir

    # both trees read the same data, wherever a worktree lives
    env = {**os.environ, "S3_RETRIEVER_DATA": str(data_dir())}
    subprocess.run([sys.executable, "-c", _DUMP, str(tree.resolve()), str(out),
                    json.dumps(questions)], check=True, cwd=tempfile.gettempdir(), env=env)
    return json.loads(out.read_text())


def main() -> int:
    from s3_retriever.evaluation.splits import parse_indices

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--questions", default="100-129")
    a = ap.parse_args()
    questions = parse_indices(a.questions)
    with tempfile.TemporaryDirectory() as tmp:
        before = dump(a.before, questions, Path(tmp) / "before.json")
        after = dump(a.after, questions, Path(tmp) / "after.json")
    pairs = list(zip(before["searches"], after["searches"], strict=True))
    same = sum(x == y for x, y in pairs)
    spans = sum([s[:3] for s in x[3]] == [s[:3] for s in y[3]] for x, y in pairs)
    print(f"{len(questions)} questions, {before['tokens']:,} tokens indexed: {same} of "
          f"{len(pairs)} searches identical, scores to 5 decimals included; {spans} of "
          f"{len(pairs)} return the same spans in the same order")
    for x, y in pairs:
        if x != y:
            print(f"first difference: {x[:3]}\n  before {x[3][:3]}\n  after  {y[3][:3]}")
            break
    return 0 if same == len(pairs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
