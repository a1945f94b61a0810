"""``s3-retriever eval``: the quality benchmark from the command line.

Register it with :func:`add_eval_parser` on the main parser's subparsers. Examples::

    s3-retriever eval                                  # reported split, every default
    s3-retriever eval --datasets hotpotqa --contexts 8000 --n-questions 5 --generate 2
    s3-retriever eval --setting fusion_weight=0.3 --setting smooth_window=5
    s3-retriever eval --sweep fusion_weight=0.2,0.4,0.6 --contexts 8000   # dev split
    s3-retriever eval --report-only benchmarks/results/quality.json       # redo docs/

``--setting NAME=VALUE`` and ``--sweep NAME=V1,V2,...`` take :class:`S3Settings` field
names; a value is JSON where it parses (``0.3``, ``true``, ``null``, ``[["layers.17",
3, 1.0]]``) and a string otherwise (``rrf``); ``@file.json`` reads the value from a file
(a ``heads.json`` holding ``{"heads": [...]}`` gives its list). A sweep's values are split
on top-level commas: ``--sweep 'heads=[["layers.17",3,1]],[["layers.18",5,1]]'``.
Repeated ``--sweep`` options make a grid.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_eval_parser", "cmd_eval", "parse_setting", "parse_sweep"]

DEFAULT_OUT = "benchmarks/results/quality.json"
DEFAULT_SWEEP_OUT = "benchmarks/results/sweep.json"


def _value(text: str, name: str) -> Any:
    text = text.strip()
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise ValueError(f"--setting {name}: no such file {path}")
        value = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(value, dict) and name in value:
            value = value[name]
        return value
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_setting(spec: str) -> tuple[str, Any]:
    """``"NAME=VALUE"`` -> ``(name, value)`` (VALUE as JSON when it parses, else a string).

    Example:
        >>> parse_setting("fusion_weight=0.3"), parse_setting("fusion=rrf")
        (('fusion_weight', 0.3), ('fusion', 'rrf'))
    """
    name, sep, val = spec.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"bad setting {spec!r}: use NAME=VALUE, e.g. fusion_weight=0.3")
    return name, _value(val, name)


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def parse_sweep(spec: str) -> tuple[str, list[Any]]:
    """``"NAME=V1,V2,..."`` -> ``(name, [v1, v2, ...])`` (commas inside brackets kept).

    Example:
        >>> parse_sweep("fusion_weight=0.2,0.5")
        ('fusion_weight', [0.2, 0.5])
        >>> parse_sweep('heads=[["layers.17",3,1]],[["layers.18",5,1]]')[1][1]
        [['layers.18', 5, 1]]
    """
    name, sep, vals = spec.partition("=")
    name = name.strip()
    if not sep or not name or not vals.strip():
        raise ValueError(f"bad sweep {spec!r}: use NAME=V1,V2,..., e.g. fusion_weight=0.2,0.5")
    values = [_value(v, name) for v in _split_top(vals) if v.strip()]
    if not values:
        raise ValueError(f"no values in sweep {spec!r}")
    return name, values


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``eval`` subcommand on ``subparsers`` (from ``add_subparsers``)."""
    from s3_retriever.config import DEFAULT_MODEL
    from s3_retriever.evaluation.run import ALL_RETRIEVERS, DATASETS, EvalConfig
    from s3_retriever.evaluation.splits import SPLITS

    d = EvalConfig()  # every default below is EvalConfig's
    q = subparsers.add_parser(
        "eval", help="quality benchmark: every retriever on HotpotQA / SQuAD / needle haystacks",
        description="Retrieval quality on long haystacks built from ../shared/data: evidence "
                    "recall, answer recall, MRR, latency and (with --generate) end-to-end "
                    "answer EM/F1 per retriever and budget. Writes quality.json, "
                    "docs/quality_table.md and docs/img/*.png.")
    g = q.add_argument_group("what to run")
    g.add_argument("--datasets", nargs="+", default=list(d.datasets), choices=DATASETS)
    g.add_argument("--contexts", nargs="+", type=int, default=list(d.contexts),
                   help="haystack lengths in tokens (default %(default)s)")
    g.add_argument("--budgets", nargs="+", type=int, default=list(d.budgets))
    g.add_argument("--retrievers", nargs="+", default=None,
                   help=f"{' '.join(ALL_RETRIEVERS)} (default: all; with --sweep: "
                        "s3 hybrid bm25); also bm25-sentences (the engine's sentence BM25)")
    g.add_argument("--split", choices=list(SPLITS), default=None,
                   help=f"question split (default: {d.split}; dev with --sweep); see "
                        "s3_retriever/evaluation/splits.py")
    g.add_argument("--n-questions", type=int, default=d.n_questions,
                   help="the first N questions of the split, per dataset (default %(default)s)")
    g.add_argument("--questions", default=None,
                   help="explicit positions instead, e.g. 200-219 (HotpotQA file indices; "
                        "positions of the SQuAD split order; needles take the count)")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--data", default=None, help="QA data folder (default ../shared/data)")
    g.add_argument("--passage-tokens", type=int, default=d.passage_tokens,
                   help="passage size of the bm25/dense/random/oracle baselines")
    g.add_argument("--granularity", nargs="+", default=[], metavar="NAME=N",
                   help="a baseline's own passage size (1: sentences), e.g. bm25=64 dense=256")
    g.add_argument("--pool-factor", type=float, default=d.pool_factor)
    g.add_argument("--search-per-budget", action="store_true",
                   help="one engine search per budget (exact per-budget latency; slower)")

    g = q.add_argument_group("end-to-end answers")
    g.add_argument("--generate", type=int, default=d.generate, metavar="N",
                   help="answer the first N questions of each benchmark by KV-free "
                        "generation, and from the full haystack where it fits (default "
                        "%(default)s: off; ~1-3 s per answer on CPU)")
    g.add_argument("--generate-budgets", nargs="+", type=int, default=None,
                   help="budgets to generate at (default: the answer budget when it is "
                        "among the budgets, else every budget)")
    g.add_argument("--generate-retrievers", nargs="+", default=None,
                   help="retrievers to generate for (default: every retriever)")
    g.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)

    g = q.add_argument_group("the S3 engine")
    g.add_argument("--model", default=DEFAULT_MODEL)
    g.add_argument("--saes", default=None, help="SAE folder (default: the shipped SAEs)")
    g.add_argument("--device", default=None)
    g.add_argument("--dtype", default=None)
    g.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                   help="an S3Settings override, repeatable (e.g. fusion_weight=0.3)")
    g.add_argument("--sweep", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="run the S3 retrievers for each value on the dev split and write a "
                        "sweep table; repeat for a grid")
    g.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; on a busy shared CPU fewer "
                        "threads than cores avoids oversubscription)")
    g.add_argument("--index-cache", default=None, metavar="DIR",
                   help="reuse / store the scan of the corpus in this folder")

    g = q.add_argument_group("output")
    g.add_argument("--out", default=None,
                   help=f"results JSON (default {DEFAULT_OUT}; with --sweep {DEFAULT_SWEEP_OUT},"
                        " plus a .md beside it)")
    g.add_argument("--docs", default="docs", help="folder for quality_table.md and img/*.png")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the results JSON and report files if they exist")
    g.add_argument("--no-report", action="store_true", help="write no markdown or plots")
    g.add_argument("--length-budget", type=int, default=None,
                   help="budget of the recall-vs-length plot (default 1024)")
    g.add_argument("--details", default=None, metavar="PATH",
                   help="per-question JSON lines (retrieval, answers), .gz allowed")
    g.add_argument("--report-only", default=None, metavar="JSON",
                   help="only rewrite the markdown and plots from an existing results JSON")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_eval)
    return q


def _granularity(specs: list[str]) -> dict[str, int]:
    """``["bm25=64", "dense=1"]`` -> ``{"bm25": 64, "dense": 1}``."""
    out = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not value.strip().isdigit():
            raise SystemExit(f"--granularity {spec!r}: expected NAME=N, e.g. bm25=64")
        out[name.strip()] = int(value)
    return out


def _config(a: argparse.Namespace, sweep: bool) -> Any:
    from s3_retriever.evaluation.run import ALL_RETRIEVERS, EvalConfig
    from s3_retriever.evaluation.splits import parse_indices

    retrievers = a.retrievers or (["s3", "hybrid", "bm25"] if sweep else list(ALL_RETRIEVERS))
    return EvalConfig(
        datasets=tuple(a.datasets), contexts=tuple(a.contexts), budgets=tuple(a.budgets),
        retrievers=tuple(retrievers), split=a.split or ("dev" if sweep else "reported"),
        n_questions=a.n_questions,
        questions=tuple(parse_indices(a.questions)) if a.questions else None,
        seed=a.seed, passage_tokens=a.passage_tokens, pool_factor=a.pool_factor, data=a.data,
        granularity=_granularity(a.granularity),
        generate=0 if sweep else a.generate,
        generate_budgets=tuple(a.generate_budgets) if a.generate_budgets else None,
        generate_retrievers=tuple(a.generate_retrievers) if a.generate_retrievers else None,
        max_new_tokens=a.max_new_tokens, search_per_budget=a.search_per_budget,
        show_progress=not a.quiet).validate()


def _index_factory(a: argparse.Namespace, settings: dict[str, Any]) -> Any:
    """``overrides -> empty S3Index``; the model is loaded once and shared."""
    from s3_retriever.engine import S3Index
    from s3_retriever.model.loading import load_model

    lm = load_model(a.model, a.device, a.dtype)

    def make(overrides: Any) -> S3Index:
        return S3Index.from_model(lm, saes=a.saes, **{**settings, **dict(overrides)})

    return make


def cmd_eval(a: argparse.Namespace) -> int:
    """Run ``s3-retriever eval`` (see :func:`add_eval_parser`)."""
    from s3_retriever.evaluation import report
    from s3_retriever.evaluation.run import run_eval, run_sweep, write_results
    from s3_retriever.storage import check_output_file, write_bytes_atomic

    if a.report_only:
        results = json.loads(Path(a.report_only).read_text(encoding="utf-8"))
        for p in report.write_report(results, a.docs, length_budget=a.length_budget,
                                     overwrite=a.overwrite):
            print(f"wrote {p}")
        return 0
    command = "s3-retriever " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    settings = dict(parse_setting(s) for s in a.setting)
    sweeps: dict[str, list[Any]] = {}
    for s in a.sweep:
        name, values = parse_sweep(s)
        if name in sweeps:
            raise ValueError(f"--sweep {name} given twice")
        sweeps[name] = values
    cfg = _config(a, bool(sweeps))
    # refuse to replace existing outputs before the (long) run, not after it
    out = Path(a.out or (DEFAULT_SWEEP_OUT if sweeps else DEFAULT_OUT))
    check_output_file(out, a.overwrite)
    if sweeps:
        check_output_file(out.with_suffix(".md"), a.overwrite)
    elif not a.no_report:
        for p in report.report_paths(a.docs):
            check_output_file(p, a.overwrite)
    factory = _index_factory(a, settings)
    if sweeps:
        res = run_sweep(cfg, sweeps, index_factory=factory, base_settings=settings,
                        command=command)
        write_results(res, out)
        md = report.sweep_markdown(res)
        write_bytes_atomic(out.with_suffix(".md"), md.encode("utf-8"))
        print(md)
        print(f"wrote {out} and {out.with_suffix('.md')}")
        return 0
    res = run_eval(cfg, index_factory=factory, index_cache=a.index_cache, details=a.details,
                   command=command)
    write_results(res, out)
    print(f"wrote {out}")
    if not a.no_report:
        paths = report.write_report(res, a.docs, length_budget=a.length_budget,
                                    overwrite=a.overwrite)
        print(report.markdown_table(res))
        for p in paths:
            print(f"wrote {p}")
    return 0
