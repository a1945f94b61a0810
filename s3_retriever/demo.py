"""``make demo``: index a real long document with the embedded model, search it, answer from it.

By default the document is built from HotpotQA (``../shared/data``): one question's ten
Wikipedia paragraphs among paragraphs of other questions, about 8,000 tokens in all. Pass
``--file`` and ``--question`` to use your own text.

Example:
    python -m s3_retriever.demo --file my.txt --question "Who founded the company?"
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from s3_retriever.cli import main as cli_main
from s3_retriever.corpus import RESERVED_SAE_QUESTIONS, load_hotpotqa, reserved_titles

DEMO_QUESTION = 7  # file order in the HotpotQA dev subset; not reserved for SAE training


def build_haystack(target_tokens: int = 8200, question: int = DEMO_QUESTION,
                   seed: int = 0) -> tuple[str, dict]:
    """A ~``target_tokens`` text: the question's paragraphs shuffled among other paragraphs."""
    from s3_retriever.model.loading import load_model

    tok = load_model("smollm2-135m", dtype="fp32").tokenizer
    data = load_hotpotqa()
    q = data[question]
    skip = reserved_titles()
    own = ["".join(s).strip() for _, s in q["context"]]
    rng = random.Random(seed)
    pool = [i for i in range(len(data)) if i != question and i not in RESERVED_SAE_QUESTIONS]
    rng.shuffle(pool)
    paras = list(own)
    n = sum(len(tok(p)["input_ids"]) + 2 for p in paras)
    for i in pool:
        for title, sents in data[i]["context"]:
            if n >= target_tokens:
                break
            if title in skip:
                continue
            p = "".join(sents).strip()
            paras.append(p)
            n += len(tok(p)["input_ids"]) + 2
        if n >= target_tokens:
            break
    rng.shuffle(paras)
    return "\n\n".join(paras), q


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", default=None, help="a text file to index (default: HotpotQA)")
    ap.add_argument("--question", default=None)
    ap.add_argument("--out", default="runs/demo")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    gold = None
    if a.file:
        doc = Path(a.file)
        question = a.question or "What is this document about?"
    else:
        text, q = build_haystack()
        doc = out / "haystack.txt"
        doc.write_text(text, encoding="utf-8")
        question, gold = a.question or q["question"], q["answer"]
        print(f"document: {doc} ({len(text):,} chars built from HotpotQA paragraphs, "
              "CC BY-SA 4.0)")
    index_dir = out / "index"
    print(f"\n$ s3-retriever index {doc} --out {index_dir} --overwrite")
    t = time.perf_counter()
    rc = cli_main(["index", str(doc), "--out", str(index_dir), "--overwrite"])
    print(f"({time.perf_counter() - t:.1f} s)")
    if rc:
        return rc
    print(f"\nquestion: {question}" + (f"   (gold answer: {gold})" if gold else ""))
    print(f'\n$ s3-retriever search {index_dir} "{question}" --k 4')
    rc = cli_main(["search", str(index_dir), question, "--k", "4"])
    if rc:
        return rc
    from s3_retriever.engine import S3Index

    index = S3Index.load(index_dir)
    text = doc.read_text(encoding="utf-8")
    spans = index.search(question, k=4)
    exact = all(text[s.start_char:s.end_char] == s.text for s in spans)
    print(f"\nevery span's text == document[start_char:end_char]: {exact}")
    print(f'\n$ s3-retriever ask {index_dir} "{question}" --budget 1024')
    return cli_main(["ask", str(index_dir), question, "--budget", "1024"])


if __name__ == "__main__":
    raise SystemExit(main())
