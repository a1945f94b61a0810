"""``s3-retriever``: index, search, ask, train-sae.

Example:
    s3-retriever index book.txt --out book.s3
    s3-retriever search book.s3 "Who wrote the letter?" --k 3
    s3-retriever ask book.s3 "Who wrote the letter?" --budget 1024
    s3-retriever train-sae --layers 17 18 --out my_saes
    s3-retriever calibrate --layers 8-23 --questions 0-99 --out heads.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from s3_retriever import validate
from s3_retriever.config import (
    ANSWER_BUDGET_TOKENS,
    DEFAULT_K,
    DEFAULT_MODEL,
    MAX_NEW_TOKENS,
    MODES,
)
from s3_retriever.errors import InvalidInputError, S3Error


def read_text_file(path: str, encoding: str | None = None, errors: str = "strict") -> str:
    """The text of a file to index: UTF-8 by default; binary or undecodable files are refused
    unless ``encoding`` or ``errors="replace"`` says how to read them.

    Raises:
        InvalidInputError: not a file, binary, or not decodable (the message says what to do).
    """
    p = Path(path)
    if p.is_dir():
        raise InvalidInputError(f"{path}: is a folder; give text files to index")
    if not p.is_file():
        raise InvalidInputError(f"{path}: no such file")
    data = p.read_bytes()
    if encoding is None and errors == "strict" and b"\x00" in data[:8192]:
        raise InvalidInputError(f"{path}: looks binary (NUL bytes), not text; convert it to "
                                "text first, or pass --errors replace to index it anyway")
    try:
        return data.decode(encoding or "utf-8-sig", errors=errors)
    except UnicodeDecodeError as e:
        raise InvalidInputError(
            f"{path}: not valid {encoding or 'UTF-8'} (byte {e.start}); pass --encoding with "
            "the file's encoding (e.g. latin-1) or --errors replace") from None
    except LookupError:
        raise InvalidInputError(f"--encoding {encoding!r}: unknown encoding") from None


def _read_texts(a: argparse.Namespace) -> tuple[list[str], list[dict], list[str]]:
    texts, metas, ids = [], [], []
    for f in a.files:
        text = read_text_file(f, a.encoding, a.errors)
        if not text.strip():
            print(f"warning: skipping empty file {f}", file=sys.stderr)
            continue
        p = Path(f)
        texts.append(text)
        metas.append({"source": str(p)})
        ids.append(p.name if p.name not in ids else str(p))
    return texts, metas, ids


def _print_spans(spans, as_json: bool) -> None:
    if as_json:
        print(json.dumps([s.to_dict() for s in spans], indent=1, ensure_ascii=False))
        return
    for i, s in enumerate(spans, 1):
        comp = []
        if s.s3_score is not None:
            comp.append(f"s3={s.s3_score:.3f}")
        if s.bm25_score is not None:
            comp.append(f"bm25={s.bm25_score:.2f}")
        print(f"[{i}] score={s.score:.3f} ({', '.join(comp)}) {s.doc_id} "
              f"chars {s.start_char}-{s.end_char}")
        print("    " + " ".join(s.text.split()))


def cmd_index(a: argparse.Namespace) -> int:
    from s3_retriever import storage
    from s3_retriever.engine import S3Index
    from s3_retriever.index.persistence import INDEX_KIND

    storage.check_target(a.out, INDEX_KIND, a.overwrite)  # before the (long) scan
    texts, metas, ids = _read_texts(a)
    if not texts:
        raise InvalidInputError("nothing to index (all files empty)")
    settings = {}
    if a.chunk_tokens:
        settings["chunk_tokens"] = a.chunk_tokens
    index = S3Index.from_model(a.model, saes=a.saes, device=a.device, dtype=a.dtype, **settings)
    print(f"model: {index.lm.model_id} on {index.lm.device.type}, {index.lm.dtype_reason}")
    start = time.perf_counter()
    index.add_texts(texts, metas, ids, show_progress=not a.quiet)
    seconds = time.perf_counter() - start
    index.save(a.out, overwrite=a.overwrite)
    st = index.stats()
    print(f"indexed {st['documents']} document(s), {st['tokens']} tokens -> {a.out} "
          f"(scan: {st['tokens'] / seconds:,.0f} tokens/s)")
    print(f"index: {st['index_bytes_per_token']:.1f} bytes/token; the model's KV cache: "
          f"{st['kv_bytes_per_token']} bytes/token (bf16), "
          f"{st['kv_bytes_per_token'] / st['index_bytes_per_token']:.0f}x larger")
    return 0


def _check_search_args(a: argparse.Namespace) -> None:
    """The numbers a search takes, checked before the model loads."""
    validate.optional_positive_int(a.k, "k")
    validate.optional_positive_int(a.budget, "budget_tokens")
    validate.positive_int(getattr(a, "max_new_tokens", 1), "max_new_tokens")


def cmd_search(a: argparse.Namespace) -> int:
    from s3_retriever.engine import S3Index

    _check_search_args(a)

    index = S3Index.load(a.index, device=a.device, dtype=a.dtype)
    spans = index.search(a.question, k=a.k, budget_tokens=a.budget, mode=a.mode)
    _print_spans(spans, a.json)
    return 0


def cmd_ask(a: argparse.Namespace) -> int:
    from s3_retriever.engine import S3Index

    _check_search_args(a)

    index = S3Index.load(a.index, device=a.device, dtype=a.dtype)
    ans = index.answer(a.question, budget_tokens=ANSWER_BUDGET_TOKENS if a.budget is None else a.budget,
                       mode=a.mode,
                       max_new_tokens=a.max_new_tokens)
    if a.json:
        print(json.dumps({"answer": ans.text, "prompt_tokens": ans.prompt_tokens,
                          "spans": [s.to_dict() for s in ans.spans]}, indent=1,
                         ensure_ascii=False))
    else:
        print(f"answer: {ans.text}")
        print(f"(from {len(ans.spans)} span(s), {ans.prompt_tokens} prompt tokens)")
    return 0


def cmd_train_sae(a: argparse.Namespace) -> int:
    from s3_retriever import storage
    from s3_retriever.model.loading import load_model
    from s3_retriever.sae.io import is_sae_folder
    from s3_retriever.sae.train import train_model_saes

    storage.check_folder_output(a.out, overwrite=a.overwrite, recognise=is_sae_folder)
    texts = [read_text_file(f, a.encoding, a.errors) for f in a.texts] if a.texts else None
    lm = load_model(a.model, a.device, a.dtype)
    report = train_model_saes(lm, a.layers, a.out, num_latents=a.num_latents, k=a.k,
                              texts=texts, max_tokens=a.max_tokens, steps=a.steps,
                              epochs=a.epochs, auxk_alpha=a.auxk_alpha, lr=a.lr,
                              device=a.device, overwrite=a.overwrite,
                              show_progress=not a.quiet)
    if a.heads:
        from s3_retriever.calibration import add_query_means
        from s3_retriever.model.hooks import hookpoint_name
        from s3_retriever.storage import write_json

        heads = [[hookpoint_name(int(h.split(':')[0])), int(h.split(":")[1]), 1.0]
                 for h in a.heads]
        write_json(Path(a.out) / "heads.json", {"heads": heads})
        if a.query_mean_tokens:
            add_query_means(Path(a.out) / "heads.json", lm, texts,
                            max_tokens=a.query_mean_tokens, show_progress=not a.quiet)
    print(json.dumps(report, indent=1))
    return 0


def cmd_query_means(a: argparse.Namespace) -> int:
    from s3_retriever.calibration import add_query_means
    from s3_retriever.model.loading import load_model

    lm = load_model(a.model, a.device, a.dtype)
    heads = add_query_means(Path(a.saes) / "heads.json", lm, max_tokens=a.tokens,
                            show_progress=not a.quiet)
    print(f"mean queries of {len(heads)} heads written to {Path(a.saes) / 'heads.json'}")
    return 0


def _int_ranges(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


def cmd_calibrate(a: argparse.Namespace) -> int:
    from s3_retriever.calibration import head_recalls
    from s3_retriever.evaluation.data import hotpotqa_benchmark
    from s3_retriever.model.hooks import hookpoint_name
    from s3_retriever.model.loading import load_model
    from s3_retriever.storage import check_output_file, write_json

    check_output_file(a.out, a.overwrite)
    lm = load_model(a.model, a.device, a.dtype)

    def count(text: str) -> int:
        return len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])

    questions = _int_ranges(a.questions)
    bench = hotpotqa_benchmark(questions, a.context_tokens, count, path=a.data, seed=a.seed)
    cal = head_recalls(lm, bench, _int_ranges(a.layers), budget=a.budget,
                       show_progress=not a.quiet)
    heads, curve = cal.choose_heads(a.max_heads)
    report = {
        "heads": [[hookpoint_name(layer), h, 1.0] for layer, h in heads],
        "calibration": {
            "model": lm.model_id, "questions": a.questions, "context_tokens": a.context_tokens,
            "budget": a.budget, "seed": a.seed, "layers": cal.layers,
            "recall": [[round(float(x), 4) for x in row] for row in cal.recall],
            "mixed_recall_by_n_heads": [round(float(x), 4) for x in curve],
            "command": "s3-retriever " + " ".join(sys.argv[1:]),
        },
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(a.out), report)
    if a.query_mean_tokens:
        from s3_retriever.calibration import add_query_means

        add_query_means(a.out, lm, max_tokens=a.query_mean_tokens, show_progress=not a.quiet)
    for layer, row in zip(cal.layers, cal.recall):
        print(f"layer {layer:2d}: " + " ".join(f"{x:.3f}" for x in row))
    print(f"chosen heads: {heads}; recall@{a.budget} by number of heads: "
          + ", ".join(f"{x:.3f}" for x in curve))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s3-retriever", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def model_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
        q.add_argument("--dtype", default=None, help="bf16 or fp32 (default: by hardware)")

    def input_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--encoding", default=None,
                       help="the files' text encoding (default: UTF-8; binary files refused)")
        q.add_argument("--errors", choices=["strict", "replace"], default="strict",
                       help="replace: index undecodable bytes as U+FFFD instead of refusing")

    def overwrite_arg(q: argparse.ArgumentParser, what: str) -> None:
        q.add_argument("--overwrite", action="store_true",
                       help=f"replace {what} already at --out (never other files)")

    q = sub.add_parser("index", help="scan text files into an index folder")
    q.add_argument("files", nargs="+")
    q.add_argument("--out", required=True, help="a new or empty folder (or an index, with "
                                                "--overwrite)")
    overwrite_arg(q, "an index")
    input_args(q)
    q.add_argument("--model", default=DEFAULT_MODEL)
    q.add_argument("--saes", default=None, help="SAE folder (default: the shipped SAEs)")
    q.add_argument("--chunk-tokens", type=int, default=None)
    q.add_argument("--quiet", action="store_true")
    model_args(q)
    q.set_defaults(func=cmd_index)

    for name, func, helptext in (("search", cmd_search, "print evidence spans"),
                                 ("ask", cmd_ask, "answer from retrieved spans (KV-free)")):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("index")
        q.add_argument("question")
        q.add_argument("--k", type=int, default=DEFAULT_K if name == "search" else None)
        q.add_argument("--budget", type=int, default=None, help="token budget")
        q.add_argument("--mode", choices=MODES, default=None)
        q.add_argument("--json", action="store_true")
        if name == "ask":
            q.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
        model_args(q)
        q.set_defaults(func=func)

    q = sub.add_parser("train-sae", help="train Top-k SAEs on a model's keys and queries")
    q.add_argument("--model", default=DEFAULT_MODEL)
    q.add_argument("--layers", type=int, nargs="+", required=True)
    q.add_argument("--num-latents", type=int, default=2048)
    q.add_argument("--k", type=int, default=16)
    q.add_argument("--texts", nargs="*", default=None,
                   help="text files (default: the built-in generic corpus)")
    q.add_argument("--max-tokens", type=int, default=300_000)
    q.add_argument("--steps", type=int, default=None, help="default: --epochs over the data")
    q.add_argument("--epochs", type=float, default=2.0)
    q.add_argument("--auxk-alpha", type=float, default=0.125)
    q.add_argument("--lr", type=float, default=None)
    q.add_argument("--heads", nargs="*", default=None, metavar="LAYER:HEAD",
                   help="query heads to score with, written to heads.json (e.g. 17:3 18:6)")
    q.add_argument("--query-mean-tokens", type=int, default=50_000,
                   help="tokens for each --heads head's mean query (0: none)")
    q.add_argument("--out", required=True, help="a new or empty folder")
    overwrite_arg(q, "an SAE folder")
    input_args(q)
    q.add_argument("--quiet", action="store_true")
    model_args(q)
    q.set_defaults(func=cmd_train_sae)

    q = sub.add_parser("calibrate", help="rank (layer, head) pairs by exact-attention evidence "
                                        "recall on HotpotQA calibration questions")
    q.add_argument("--model", default=DEFAULT_MODEL)
    q.add_argument("--layers", default="8-23", help="e.g. 8-23 or 17,18")
    q.add_argument("--questions", default="0-99", help="HotpotQA question indices (file order)")
    q.add_argument("--context-tokens", type=int, default=8192)
    q.add_argument("--budget", type=int, default=512)
    q.add_argument("--max-heads", type=int, default=8)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--data", default=None, help="folder with the QA data (default ../shared/data)")
    q.add_argument("--out", required=True, help="heads.json to write")
    overwrite_arg(q, "the file")
    q.add_argument("--query-mean-tokens", type=int, default=50_000,
                   help="generic-text tokens for each chosen head's mean query (0: none)")
    q.add_argument("--quiet", action="store_true")
    model_args(q)
    q.set_defaults(func=cmd_calibrate)

    q = sub.add_parser("query-means", help="add each head's mean query (the query-mean term) "
                                          "to the heads.json of an SAE folder")
    q.add_argument("--saes", required=True, help="SAE folder holding heads.json")
    q.add_argument("--tokens", type=int, default=50_000, help="generic-text tokens to average")
    q.add_argument("--quiet", action="store_true")
    q.add_argument("--model", default=DEFAULT_MODEL)
    model_args(q)
    q.set_defaults(func=cmd_query_means)

    from s3_retriever.evaluation.cli import add_eval_parser

    add_eval_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``s3-retriever`` command."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (S3Error, ValueError, TypeError, KeyError, OSError) as e:
        # a user mistake or a refused file: one line, no traceback
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
