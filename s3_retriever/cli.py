"""``s3-retriever``: index, search, ask, train-sae, sae-convert.

Example:
    s3-retriever index book.txt --out book.s3
    s3-retriever index --ray --address auto --workers 8 corpus/*.txt --out corpus.s3
    s3-retriever search book.s3 "Who wrote the letter?" --k 3 --filter source=book.txt
    s3-retriever ask book.s3 "Who wrote the letter?" --budget 1024
    s3-retriever search corpus.s3 "Who built the first engine?" --ray --address auto
    s3-retriever train-sae --layers 17 18 --out my_saes
    s3-retriever calibrate --layers 8-23 --questions 0-99 --out heads.json
    s3-retriever sae-convert --from sparsify their_saes --out my_saes
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from s3_retriever import __version__, validate
from s3_retriever.config import (
    ANSWER_BUDGET_TOKENS,
    DEFAULT_K,
    DEFAULT_MODEL,
    MAX_NEW_TOKENS,
    MODES,
)
from s3_retriever.errors import InvalidInputError, S3Error

logger = logging.getLogger(__name__)


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
            logger.warning("skipping empty file %s", f)
            continue
        p = Path(f)
        texts.append(text)
        metas.append({"source": str(p)})
        ids.append(p.name if p.name not in ids else str(p))
    return texts, metas, ids


def _print_spans(spans, as_json: bool, filtered: bool = False) -> None:
    if as_json:
        print(json.dumps([s.to_dict() for s in spans], indent=1, ensure_ascii=False))
        return
    if not spans:
        print("no spans" + (" (no document matches --filter)" if filtered else ""))
    for i, s in enumerate(spans, 1):
        comp = []
        if s.s3_score is not None:
            comp.append(f"s3={s.s3_score:.3f}")
        if s.bm25_score is not None:
            comp.append(f"bm25={s.bm25_score:.2f}")
        print(f"[{i}] score={s.score:.3f} ({', '.join(comp)}) {s.doc_id} "
              f"chars {s.start_char}-{s.end_char}")
        print("    " + " ".join(s.text.split()))


def _check_ray_args(a: argparse.Namespace) -> None:
    """The scale-out flags make sense only with --ray."""
    given = [flag for flag, value in (("--address", a.address), ("--workers", a.workers),
                                      ("--gpus-per-worker", a.gpus_per_worker),
                                      ("--batch-size", a.batch_size),
                                      ("--merge", a.merge or None)) if value is not None]
    if given and not a.ray:
        raise InvalidInputError(f"{', '.join(given)}: only with --ray (the distributed scan)")


def cmd_index_ray(a: argparse.Namespace) -> int:
    """``index --ray``: the scan runs on a Ray cluster, the result is a sharded index."""
    from s3_retriever.distributed.manifest import read_manifest
    from s3_retriever.distributed.scan import DEFAULT_BATCH_DOCS, index_corpus

    texts, metas, ids = _read_texts(a)
    if not texts:
        raise InvalidInputError("nothing to index (all files empty)")
    settings = {"chunk_tokens": a.chunk_tokens} if a.chunk_tokens else {}
    workers = 2 if a.workers is None else a.workers
    start = time.perf_counter()
    out = index_corpus([{"text": t, "metadata": m, "id": i} for t, m, i in zip(texts, metas, ids)],
                       a.out, model=a.model, saes=a.saes, workers=workers,
                       gpus_per_worker=a.gpus_per_worker or 0,
                       batch_size=a.batch_size or DEFAULT_BATCH_DOCS, address=a.address,
                       overwrite=a.overwrite, show_progress=not a.quiet, merge=a.merge,
                       device=a.device, dtype=a.dtype, **settings)
    seconds = time.perf_counter() - start
    if a.merge:
        print(f"indexed {len(ids)} document(s) on {workers} Ray worker(s), merged -> {out} "
              f"({seconds:.0f} s)")
    else:
        m = read_manifest(out)
        print(f"indexed {m['documents']} document(s), {m['tokens']} tokens on {workers} Ray "
              f"worker(s) -> {out} ({len(m['shards'])} shard(s), {seconds:.0f} s, "
              f"{m['tokens'] / seconds:,.0f} tokens/s)")
    return 0


def cmd_index(a: argparse.Namespace) -> int:
    from s3_retriever import storage
    from s3_retriever.engine import S3Index
    from s3_retriever.index.persistence import INDEX_KIND

    _check_ray_args(a)
    if a.ray:
        return cmd_index_ray(a)
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


def parse_filters(specs: Sequence[str] | None) -> dict[str, Any] | None:
    """``--filter KEY=VALUE`` options as a search's ``filters``: all must hold.

    VALUE is read as JSON when it parses (``1867``, ``true``, ``["a", "b"]`` for any of,
    ``{"$gte": 2020}``), else kept as a string. A KEY given twice must meet both.

    >>> parse_filters(["year=1867", "source=notes.txt", 'lang=["en", "fr"]'])
    {'year': 1867, 'source': 'notes.txt', 'lang': ['en', 'fr']}
    >>> parse_filters(['year={"$gte": 1800}', 'year={"$lt": 1900}'])
    {'$and': [{'year': {'$gte': 1800}}, {'year': {'$lt': 1900}}]}

    Raises:
        InvalidInputError: no ``=``, an empty KEY, or a condition the filter rules refuse.
    """
    from s3_retriever.retrieval import filters as filter_rules

    if not specs:
        return None

    def no_constants(name: str) -> Any:
        raise ValueError(name)  # NaN / Infinity stay strings

    parts: list[tuple[str, Any]] = []
    for spec in specs:
        key, sep, raw = spec.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidInputError(f"--filter {spec!r}: expected KEY=VALUE, e.g. "
                                    "source=notes.txt or year=1867")
        try:
            parts.append((key, json.loads(raw, parse_constant=no_constants)))
        except ValueError:
            parts.append((key, raw))
    keys = [k for k, _ in parts]
    if len(set(keys)) == len(keys):
        return filter_rules.check(dict(parts), "--filter")
    return filter_rules.check({"$and": [{k: v} for k, v in parts]}, "--filter")


def _check_search_args(a: argparse.Namespace) -> dict[str, Any] | None:
    """The numbers and filters a search takes, checked before the model loads."""
    validate.optional_positive_int(a.k, "k")
    validate.optional_positive_int(a.budget, "budget_tokens")
    validate.positive_int(getattr(a, "max_new_tokens", 1), "max_new_tokens")
    return parse_filters(a.filter)


def _load_index(a: argparse.Namespace) -> Any:
    """The index at ``a.index``: an ordinary one, or a sharded one (``shards.json``) opened
    in this process or, with ``--ray``, served by one Ray actor per shard."""
    from s3_retriever.distributed.manifest import is_sharded_index
    from s3_retriever.engine import S3Index

    start = time.perf_counter()
    if a.address is not None and not a.ray:
        raise InvalidInputError("--address: only with --ray")
    if a.ray and not is_sharded_index(a.index):
        raise InvalidInputError(f"{a.index}: --ray serves a sharded index (a folder with "
                                "shards.json, from `index --ray`); this is not one")
    if a.ray:
        from s3_retriever.distributed.serve import serve_sharded

        index = serve_sharded(a.index, address=a.address, device=a.device, dtype=a.dtype)
    elif is_sharded_index(a.index):
        from s3_retriever.distributed.shards import ShardedIndex

        index = ShardedIndex.load(a.index, device=a.device, dtype=a.dtype)
    else:
        index = S3Index.load(a.index, device=a.device, dtype=a.dtype)
    if not logger.isEnabledFor(logging.INFO):
        return index
    st = index.stats()
    logger.info("loaded %s: %d document(s), %d tokens, %s on %s (%.1f s)", a.index,
                st["documents"], st["tokens"], index.lm.model_id, index.lm.device.type,
                time.perf_counter() - start)
    return index


def cmd_search(a: argparse.Namespace) -> int:
    filters = _check_search_args(a)
    index = _load_index(a)
    start = time.perf_counter()
    spans = index.search(a.question, k=a.k, budget_tokens=a.budget, mode=a.mode,
                         filters=filters)
    logger.info("search: %d span(s) in %.2f s", len(spans), time.perf_counter() - start)
    _print_spans(spans, a.json, filtered=filters is not None)
    return 0


def cmd_ask(a: argparse.Namespace) -> int:
    filters = _check_search_args(a)
    index = _load_index(a)
    start = time.perf_counter()
    ans = index.answer(a.question,
                       budget_tokens=ANSWER_BUDGET_TOKENS if a.budget is None else a.budget,
                       mode=a.mode, max_new_tokens=a.max_new_tokens, filters=filters)
    logger.info("answer: %d span(s), %d prompt tokens, %.2f s", len(ans.spans),
                ans.prompt_tokens, time.perf_counter() - start)
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


def cmd_sae_convert(a: argparse.Namespace) -> int:
    from s3_retriever import storage
    from s3_retriever.sae.io import (
        SAE_FOLDER_FILES,
        export_sparsify,
        import_sparsify,
        is_sae_folder,
        load_saes,
        save_saes,
    )

    if a.source == "s3" and (a.key_scale, a.query_scale, a.layer) != (None, None, None):
        raise InvalidInputError("--key-scale, --query-scale and --layer apply to --from "
                                "sparsify (an s3-retriever SAE folder stores its own)")
    storage.check_folder_output(a.out, overwrite=a.overwrite, recognise=is_sae_folder)
    src = Path(a.input)
    if a.source == "s3":
        saes = load_saes(src)
    else:
        saes = import_sparsify(src, key_scale=a.key_scale, query_scale=a.query_scale,
                               layer=a.layer)
    # heads.json & co. travel along (read now: --out may be the input folder itself)
    extra = {n: (src / n).read_bytes() for n in SAE_FOLDER_FILES if (src / n).is_file()}
    write = export_sparsify if a.source == "s3" else save_saes
    write(saes, a.out, overwrite=a.overwrite, extra_files=extra)
    target = "sparsify" if a.source == "s3" else "s3"
    print(f"converted {len(saes)} SAE(s) ({', '.join(saes)}) from the {a.source} layout to "
          f"the {target} layout -> {a.out}" + (f" (with {', '.join(extra)})" if extra else ""))
    return 0


def _int_ranges(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


def cmd_calibrate_rerank(a: argparse.Namespace) -> int:
    from s3_retriever.calibration import rerank_head_recalls
    from s3_retriever.engine import S3Index
    from s3_retriever.evaluation.run import (
        EvalConfig,
        build_benchmarks,
        corpus_documents,
        index_corpus,
    )
    from s3_retriever.storage import check_output_file, write_json

    check_output_file(a.out, a.overwrite)
    index = S3Index.from_model(a.model, device=a.device, dtype=a.dtype)
    cfg = EvalConfig(datasets=("hotpotqa",), contexts=(a.context_tokens,),
                     split="calibration", n_questions=a.n_questions, seed=a.seed,
                     data=a.data, show_progress=not a.quiet).validate()

    def count(text: str) -> int:
        return len(index.lm.tokenizer(text, add_special_tokens=False)["input_ids"])

    benches = build_benchmarks(cfg, count)
    index, _ = index_corpus(index, corpus_documents(benches), cache=a.index_cache,
                            show_progress=not a.quiet)
    cal = rerank_head_recalls(index, benches[0][2], _int_ranges(a.layers),
                              pool_tokens=a.pool_tokens, budgets=a.budgets,
                              show_progress=not a.quiet)
    best = cal.choose(a.max_heads)
    report = {
        "heads": [list(h) for h in best["heads"]],
        "calibrate": best["calibrate"],
        "calibration": {
            "model": index.lm.model_id, "split": "calibration",
            "questions": cfg.positions(), "context_tokens": a.context_tokens,
            "pool_tokens": a.pool_tokens, "budgets": list(a.budgets), "seed": a.seed,
            "mean_recall": round(best["recall"], 4),
            "recall_by_n_heads": best["curves"],
            "head_recall": {f"{layer}:{h}": [round(float(x), 4) for x in row]
                            for (layer, h), row in zip(cal.heads,
                                                       cal.head_table(calibrate=True))},
            "command": "s3-retriever " + " ".join(sys.argv[1:]),
        },
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, report)
    print(json.dumps({k: report[k] for k in ("heads", "calibrate")}), best["recall"])
    return 0


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


VERBOSE_HELP = "log more: -v info, -vv debug (the library's loggers)"
QUIET_HELP = "no progress bars; warnings only"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s3-retriever", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, dest="global_verbose",
                   help=VERBOSE_HELP)
    p.add_argument("--quiet", action="store_true", dest="global_quiet", help=QUIET_HELP)
    sub = p.add_subparsers(dest="cmd", required=True)

    def model_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
        q.add_argument("--dtype", default=None, help="bf16 or fp32 (default: by hardware)")

    def input_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--encoding", default=None,
                       help="the files' text encoding (default: UTF-8; binary files refused)")
        q.add_argument("--errors", choices=["strict", "replace"], default="strict",
                       help="replace: index undecodable bytes as U+FFFD instead of refusing")

    def ray_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--ray", action="store_true",
                       help="on Ray (pip install 's3-retriever[ray]'): index scans on Ray "
                            "workers into a sharded index; search / ask serve a sharded "
                            "index from one Ray actor per shard (docs/tutorials/ray.md)")
        q.add_argument("--address", default=None,
                       help="with --ray: the Ray cluster ('auto': the one `ray start` runs "
                            "here; default: a new local Ray)")

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
    model_args(q)
    ray_args(q)
    q.add_argument("--workers", type=int, default=None,
                   help="with --ray: scanning actors, each with its own model (default: 2)")
    q.add_argument("--gpus-per-worker", type=float, default=None,
                   help="with --ray: GPUs Ray reserves for each worker (default: 0)")
    q.add_argument("--batch-size", type=int, default=None,
                   help="with --ray: documents per batch, one shard each (default: 64)")
    q.add_argument("--merge", action="store_true",
                   help="with --ray: merge the shards into one ordinary index at --out")
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
        q.add_argument("--filter", action="append", default=None, metavar="KEY=VALUE",
                       help="only documents whose metadata KEY equals VALUE (JSON if it "
                            "parses, else a string; a JSON list: any of); repeat to AND")
        if name == "ask":
            q.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
        model_args(q)
        ray_args(q)
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
    model_args(q)
    q.set_defaults(func=cmd_calibrate)

    q = sub.add_parser("calibrate-rerank", help="rank (layer, head) pairs by the evidence "
                       "recall of their in-context attention on the hybrid's pool (HotpotQA "
                       "calibration split); writes rerank_heads.json")
    q.add_argument("--model", default=DEFAULT_MODEL)
    q.add_argument("--layers", default="0-29", help="e.g. 8-23 or 17,18")
    q.add_argument("--n-questions", type=int, default=50)
    q.add_argument("--context-tokens", type=int, default=32000)
    q.add_argument("--pool-tokens", type=int, default=2048)
    q.add_argument("--budgets", type=int, nargs="+", default=[512, 1024])
    q.add_argument("--max-heads", type=int, default=16)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--data", default=None, help="folder with the QA data (default ../shared/data)")
    q.add_argument("--index-cache", default=None, help="keep the calibration haystacks' index here")
    q.add_argument("--out", required=True, help="rerank_heads.json to write")
    overwrite_arg(q, "the file")
    model_args(q)
    q.set_defaults(func=cmd_calibrate_rerank)

    q = sub.add_parser("query-means", help="add each head's mean query (the query-mean term) "
                                          "to the heads.json of an SAE folder")
    q.add_argument("--saes", required=True, help="SAE folder holding heads.json")
    q.add_argument("--tokens", type=int, default=50_000, help="generic-text tokens to average")
    q.add_argument("--model", default=DEFAULT_MODEL)
    model_args(q)
    q.set_defaults(func=cmd_query_means)

    q = sub.add_parser("sae-convert", help="convert an SAE folder between this package's "
                                          "layout and EleutherAI sparsify's")
    q.add_argument("input", metavar="IN", help="the SAE folder to read (one hookpoint, or a "
                                               "folder of hookpoint folders)")
    q.add_argument("--from", dest="source", choices=["sparsify", "s3"], required=True,
                   help="the layout of IN; the output has the other one")
    q.add_argument("--out", required=True, help="a new or empty folder (or an SAE folder, "
                                                "with --overwrite)")
    overwrite_arg(q, "an SAE folder")
    q.add_argument("--key-scale", type=float, default=None,
                   help="sparsify only: what keys are divided by before encoding (default: "
                        "the stored one, else 1.0)")
    q.add_argument("--query-scale", type=float, default=None,
                   help="sparsify only: the same for queries")
    q.add_argument("--layer", type=int, default=None,
                   help="sparsify only, one hookpoint: its layer (default: N of layers.N)")
    q.set_defaults(func=cmd_sae_convert)

    from s3_retriever.evaluation.cli import add_eval_parser

    add_eval_parser(sub)
    for q in sub.choices.values():  # the global flags, also after the subcommand
        q.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
        if "--quiet" not in q._option_string_actions:
            q.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    return p


def _log_level(a: argparse.Namespace) -> int | None:
    """The library loggers' level the flags ask for (None: leave it)."""
    verbose = a.global_verbose + a.verbose
    a.quiet = a.global_quiet or a.quiet
    if verbose and a.quiet:
        raise InvalidInputError("--quiet and --verbose contradict each other; give one")
    if a.quiet:
        return logging.WARNING
    return {0: None, 1: logging.INFO}.get(verbose, logging.DEBUG)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``s3-retriever`` command."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    library = logging.getLogger("s3_retriever")
    before = library.level
    try:
        level = _log_level(args)
        if level is not None:
            library.setLevel(level)
        logger.debug("arguments: %s", {k: v for k, v in vars(args).items() if k != "func"})
        return args.func(args)
    except (S3Error, ValueError, TypeError, KeyError, OSError) as e:
        # a user mistake or a refused file: one line, no traceback
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    finally:
        library.setLevel(before)  # main() may run in-process (tests, notebooks)


if __name__ == "__main__":
    raise SystemExit(main())
