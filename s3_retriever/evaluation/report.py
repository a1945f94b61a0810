"""Reports of a quality run: markdown tables and PNG plots (matplotlib, Agg, no pyplot).

:func:`write_report` turns the content of ``benchmarks/results/quality.json`` (what
:func:`~s3_retriever.evaluation.run.run_eval` returns) into

* ``docs/quality_table.md``: evidence recall, answer recall, MRR, latency and end-to-end
  F1 per dataset, haystack length, retriever and budget (mean +- standard error);
* ``docs/img/recall_vs_budget.png``: evidence recall vs budget, one line per retriever,
  one panel per dataset and length;
* ``docs/img/recall_vs_length.png``: evidence recall vs haystack length at one budget.

:func:`sweep_markdown` renders a sweep (:func:`~s3_retriever.evaluation.run.run_sweep`).

Example:
    >>> row = {"dataset": "needle", "context_tokens": 8000, "n_questions": 2,
    ...        "retriever": "bm25", "budget_tokens": 512, "evidence_recall": 1.0,
    ...        "evidence_recall_stderr": 0.0, "answer_recall": 1.0, "mrr": 1.0,
    ...        "latency_ms_p50": 2.0, "answer_f1": None}
    >>> print(markdown_table({"model": "m", "runs": [row]}).splitlines()[0])
    # Retrieval quality
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from s3_retriever.storage import check_output_file, write_bytes_atomic

__all__ = [
    "format_positions",
    "markdown_table",
    "plot_recall_vs_budget",
    "plot_recall_vs_length",
    "sweep_markdown",
    "write_report",
]

_ORDER = ("s3", "hybrid", "rerank", "bm25-sentences", "bm25", "dense", "bm25+dense",
          "bm25+dense-linear", "random", "oracle")
_STYLE = {"s3": ("tab:blue", "-o"), "hybrid": ("tab:purple", "-s"), "rerank": ("tab:red", "-*"),
          "bm25-sentences": ("tab:cyan", "--s"), "bm25": ("tab:orange", "-^"),
          "dense": ("tab:green", "-D"), "bm25+dense": ("tab:olive", "-v"),
          "bm25+dense-linear": ("tab:brown", "--v"), "random": ("tab:gray", ":x"),
          "oracle": ("black", "--")}
_DATASET_NAMES = {"hotpotqa": "HotpotQA", "squad": "SQuAD 2.0", "needle": "Needles",
                  "needle-near": "Needles among near-duplicates",
                  "needle-multi": "Multi-value needles",
                  "needle-para": "Paraphrased needles"}


def format_positions(positions: Sequence[int]) -> str:
    """``[200, 201, 202, 210]`` -> ``"200-202,210"``.

    Example:
        >>> format_positions([1, 2, 3, 7, 9, 10])
        '1-3,7,9-10'
    """
    out: list[str] = []
    ps = sorted(set(int(p) for p in positions))
    i = 0
    while i < len(ps):
        j = i
        while j + 1 < len(ps) and ps[j + 1] == ps[j] + 1:
            j += 1
        out.append(str(ps[i]) if i == j else f"{ps[i]}-{ps[j]}")
        i = j + 1
    return ",".join(out)


def _ordered(names: Iterable[str]) -> list[str]:
    names = list(dict.fromkeys(names))
    return sorted(names, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))


def _ctx(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else (f"{n // 1024}Ki" if n % 1024 == 0 else str(n))


def _cell(row: Mapping[str, Any] | None, metric: str, digits: int = 3,
          stderr: bool = True) -> str:
    if row is None or row.get(metric) is None:
        return "–"
    v = f"{row[metric]:.{digits}f}"
    err = row.get(f"{metric}_stderr")
    if stderr and err is not None:
        v += f" ± {err:.{digits}f}"
    return v


def _index(runs: Iterable[Mapping[str, Any]]) -> dict[tuple, Mapping[str, Any]]:
    return {(r["dataset"], int(r["context_tokens"]), r["retriever"], int(r["budget_tokens"])): r
            for r in runs}


def _axes(runs: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[int], list[str], list[int]]:
    datasets = list(dict.fromkeys(r["dataset"] for r in runs))
    contexts = sorted({int(r["context_tokens"]) for r in runs})
    retrievers = _ordered(r["retriever"] for r in runs)
    budgets = sorted({int(r["budget_tokens"]) for r in runs})
    return datasets, contexts, retrievers, budgets


def _metric_table(runs: Sequence[Mapping[str, Any]], metric: str, digits: int = 3,
                  stderr: bool = True, extra: Mapping[tuple[str, int], str] | None = None,
                  n_key: str = "n_questions") -> list[str]:
    datasets, contexts, retrievers, budgets = _axes(runs)
    idx = _index(runs)
    head = "| dataset | context | n | retriever | " + " | ".join(f"@{b}" for b in budgets) + " |"
    lines = [head, "|---|---:|---:|---|" + "---:|" * len(budgets)]
    for d in datasets:
        for c in contexts:
            present = [n for n in retrievers if any((d, c, n, b) in idx for b in budgets)]
            for name in present:
                rows = [idx.get((d, c, name, b)) for b in budgets]
                n = next((r.get(n_key, "") for r in rows if r is not None), "")
                cells = [_cell(r, metric, digits, stderr) for r in rows]
                lines.append(f"| {_DATASET_NAMES.get(d, d)} | {_ctx(c)} | {n} | {name} | "
                             + " | ".join(cells) + " |")
            if extra and (d, c) in extra and present:
                lines.append(f"| {_DATASET_NAMES.get(d, d)} | {_ctx(c)} | | full context | "
                             + " | ".join([extra[(d, c)]] * len(budgets)) + " |")
    return lines


def markdown_table(results: Mapping[str, Any]) -> str:
    """The markdown report of a quality run (see the module docstring)."""
    runs = list(results.get("runs", []))
    lines = ["# Retrieval quality", ""]
    meta = [f"model `{results.get('model')}`"]
    if results.get("split"):
        meta.append(f"split `{results['split']}`")
    if results.get("questions"):
        meta.append(f"question positions {format_positions(results['questions'])}")
    if results.get("seed") is not None:
        meta.append(f"seed {results['seed']}")
    lines.append(", ".join(meta) + ".")
    if results.get("command"):
        lines += ["", f"Command: `{results['command']}`"]
    lines += ["", "Budgets are in tokens of the model's tokenizer; cells are mean ± standard "
              "error over questions. Passage baselines rank passages of whole sentences "
              f"(~{(results.get('config') or {}).get('passage_tokens', 128)} tokens"
              + "".join(f"; `{n}`: {'single sentences' if g == 1 else f'~{g} tokens'}"
                        for n, g in sorted(((results.get('config') or {}).get('granularity')
                                            or {}).items()))
              + "); `s3` / `hybrid` / `rerank` rank the engine's sentence spans; all are "
              "packed to the same budgets. Generated by `s3_retriever.evaluation.report`.",
              ""]
    if not runs:
        return "\n".join(lines + ["(no runs)", ""])
    for title, metric, digits, err in (
            ("Gold-evidence recall", "evidence_recall", 3, True),
            ("Joint recall (every piece of gold evidence inside the budget)",
             "joint_recall", 3, True),
            ("Answer recall (a gold answer string inside the retrieved text)",
             "answer_recall", 3, True),
            ("MRR of the first gold hit (within the budget)", "mrr", 3, True),
            ("Retrieval latency, p50 (ms per question)", "latency_ms_p50", 1, False)):
        lines += [f"## {title}", ""] + _metric_table(runs, metric, digits, err) + [""]
    versus = results.get("versus_baseline") or []
    if versus:
        lines += ["## S3 modes against the strongest baseline of each cell", "",
                  "Paired differences over the same questions (mean ± standard error); the "
                  "baseline is the user baseline (`bm25`, `dense`, `bm25+dense`, "
                  "`bm25+dense-linear`) with the highest evidence recall in that cell.", "",
                  "| dataset | context | budget | mode | strongest baseline | Δ evidence "
                  "recall | Δ joint recall |", "|---|---:|---:|---|---|---:|---:|"]
        for v in versus:
            cells = [f"{d['mean']:+.3f} ± {d['stderr']:.3f}" if d.get("n", 0) > 1 else "–"
                     for d in (v["evidence_recall"], v["joint_recall"])]
            lines.append(f"| {_DATASET_NAMES.get(v['dataset'], v['dataset'])} | "
                         f"{_ctx(int(v['context_tokens']))} | {v['budget_tokens']} | "
                         f"{v['retriever']} | {v['baseline']} | {cells[0]} | {cells[1]} |")
        lines.append("")
    gen = [r for r in runs if r.get("answer_f1") is not None]
    if gen:
        full: dict[tuple[str, int], str] = {}
        for f in results.get("full_context", []):
            v = f.get("answer_f1")
            full[(f["dataset"], int(f["context_tokens"]))] = (
                f"{v:.3f} (n={f['n_fit']})" if v is not None else "– (does not fit)")
        lines += ["## End-to-end answer F1 (KV-free generation from the retrieved spans)", "",
                  f"Over the first {max(r['n_generated'] for r in gen)} questions of each "
                  "benchmark; `full context` is the whole haystack in the prompt where it "
                  "fits the model's window.", ""]
        lines += _metric_table(gen, "answer_f1", 3, False, extra=full,
                               n_key="n_generated") + [""]
    needle = [r for r in runs if r.get("evidence_recall_by_depth")]
    if needle:
        depths = sorted({d for r in needle for d in r["evidence_recall_by_depth"]})
        lines += ["## Needles: evidence recall by depth", "",
                  "| context | retriever | budget | " + " | ".join(depths) + " |",
                  "|---:|---|---:|" + "---:|" * len(depths)]
        for r in sorted(needle, key=lambda r: (r["context_tokens"], _ordered(
                [x["retriever"] for x in needle]).index(r["retriever"]), r["budget_tokens"])):
            cells = [r["evidence_recall_by_depth"].get(d) for d in depths]
            lines.append(f"| {_ctx(int(r['context_tokens']))} | {r['retriever']} | "
                         f"{r['budget_tokens']} | "
                         + " | ".join("–" if v is None else f"{v:.2f}" for v in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _figure(nrows: int, ncols: int, width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _legend(fig: Any, axes: Any, per_row: int) -> None:
    """One legend below the panels (every retriever drawn in any panel, once)."""
    seen: dict[str, Any] = {}
    for row in axes:
        for ax in row:
            for h, label in zip(*ax.get_legend_handles_labels()):
                seen.setdefault(label, h)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center",
                   ncols=max(1, min(len(seen), per_row)), fontsize=8)


def _save(fig: Any, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)


def _plot_series(ax: Any, retrievers: Sequence[str], metric: str,
                 points: Callable[[str], list[tuple[int, Mapping[str, Any] | None]]]) -> None:
    """One line with error bars per retriever; ``points(name)`` gives (x, row) pairs and
    rows that are missing or lack ``metric`` are skipped."""
    for name in retrievers:
        pts = [(x, r) for x, r in points(name) if r is not None and r.get(metric) is not None]
        if not pts:
            continue
        color, style = _STYLE.get(name, (None, "-o"))
        ax.errorbar([x for x, _ in pts], [r[metric] for _, r in pts],
                    yerr=[r.get(f"{metric}_stderr") or 0.0 for _, r in pts],
                    fmt=style, color=color, label=name, capsize=2, markersize=4)


def plot_recall_vs_budget(results: Mapping[str, Any], path: str | os.PathLike,
                          metric: str = "evidence_recall") -> Path:
    """Recall vs budget: one panel per (dataset, length), one line per retriever."""
    runs = list(results["runs"])
    datasets, contexts, retrievers, budgets = _axes(runs)
    idx = _index(runs)
    fig, axes = _figure(len(datasets), len(contexts), 3.6, 2.9)
    for i, d in enumerate(datasets):
        for j, c in enumerate(contexts):
            ax = axes[i][j]
            _plot_series(ax, retrievers, metric,
                         lambda name, d=d, c=c: [(b, idx.get((d, c, name, b))) for b in budgets])
            ax.set_xscale("log", base=2)
            ax.set_xticks(budgets, [str(b) for b in budgets])
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.set_title(f"{_DATASET_NAMES.get(d, d)}, {_ctx(c)} tokens", fontsize=9)
            if i == len(datasets) - 1:
                ax.set_xlabel("budget (tokens)")
            if j == 0:
                ax.set_ylabel(metric.replace("_", " "))
    _legend(fig, axes, per_row=3 * len(contexts))
    fig.suptitle(f"{metric.replace('_', ' ')} vs budget ({results.get('model')})", fontsize=10)
    return _save(fig, path)


def _pick_budget(budgets: Sequence[int], want: int | None) -> int:
    if want is not None:
        if want not in budgets:
            raise ValueError(f"budget {want} not in the results' budgets {list(budgets)}")
        return want
    return 1024 if 1024 in budgets else budgets[0]


def plot_recall_vs_length(results: Mapping[str, Any], path: str | os.PathLike,
                          budget: int | None = None, metric: str = "evidence_recall") -> Path:
    """Recall vs haystack length at one budget (default 1024): one panel per dataset."""
    runs = list(results["runs"])
    datasets, contexts, retrievers, budgets = _axes(runs)
    b = _pick_budget(budgets, budget)
    idx = _index(runs)
    fig, axes = _figure(1, len(datasets), 3.8, 3.0)
    for j, d in enumerate(datasets):
        ax = axes[0][j]
        _plot_series(ax, retrievers, metric,
                     lambda name, d=d: [(c, idx.get((d, c, name, b))) for c in contexts])
        ax.set_xscale("log", base=2)
        ax.set_xticks(contexts, [_ctx(c) for c in contexts])
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(_DATASET_NAMES.get(d, d), fontsize=9)
        ax.set_xlabel("haystack (tokens)")
        if j == 0:
            ax.set_ylabel(f"{metric.replace('_', ' ')} @{b}")
    _legend(fig, axes, per_row=3 * len(datasets))
    fig.suptitle(f"{metric.replace('_', ' ')} vs haystack length, budget {b} "
                 f"({results.get('model')})", fontsize=10)
    return _save(fig, path)


def report_paths(docs_dir: str | os.PathLike = "docs") -> list[Path]:
    """The files :func:`write_report` writes under ``docs_dir``."""
    docs = Path(docs_dir)
    return [docs / "quality_table.md", docs / "img" / "recall_vs_budget.png",
            docs / "img" / "recall_vs_length.png"]


def write_report(results: Mapping[str, Any], docs_dir: str | os.PathLike = "docs", *,
                 plots: bool = True, length_budget: int | None = None,
                 overwrite: bool = False) -> list[Path]:
    """Write ``quality_table.md`` and (with ``plots``) ``img/recall_vs_budget.png`` and
    ``img/recall_vs_length.png`` under ``docs_dir``; returns the paths written.

    Raises:
        OutputExistsError: one of them exists and ``overwrite`` is False (nothing written).
    """
    table, budget_png, length_png = report_paths(docs_dir)
    for p in (table, budget_png, length_png) if plots else (table,):
        check_output_file(p, overwrite)
    write_bytes_atomic(table, markdown_table(results).encode("utf-8"))
    out = [table]
    if plots and results.get("runs"):
        out.append(plot_recall_vs_budget(results, budget_png))
        out.append(plot_recall_vs_length(results, length_png, budget=length_budget))
    return out


def _setting_str(setting: Mapping[str, Any]) -> str:
    import json

    return ", ".join(f"{k}={json.dumps(v)}" for k, v in setting.items())


def sweep_markdown(sweep: Mapping[str, Any], metric: str = "evidence_recall") -> str:
    """A sweep table: per dataset and length, one line per setting and retriever with
    ``metric`` at every budget and its mean over budgets (the best mean per retriever
    in bold); the passage baselines follow as reference."""
    rows = list(sweep.get("rows", []))
    ref = list(sweep.get("reference", []))
    lines = [f"# Sweep: {', '.join(sweep.get('sweep', {}))}", "",
             f"model `{sweep.get('model')}`, split `{sweep.get('split')}` "
             f"(question positions {format_positions(sweep.get('questions', []))}), "
             f"seed {sweep.get('seed')}; {metric.replace('_', ' ')}, mean ± standard error.", ""]
    if sweep.get("command"):
        lines += [f"Command: `{sweep['command']}`", ""]
    all_rows = rows + ref
    if not all_rows:
        return "\n".join(lines + ["(no rows)", ""])
    datasets, contexts, _, budgets = _axes(all_rows)
    for d in datasets:
        for c in contexts:
            here = [r for r in rows if r["dataset"] == d and int(r["context_tokens"]) == c]
            refs = [r for r in ref if r["dataset"] == d and int(r["context_tokens"]) == c]
            if not here and not refs:
                continue
            lines += [f"## {_DATASET_NAMES.get(d, d)}, {_ctx(c)} tokens", "",
                      "| setting | retriever | " + " | ".join(f"@{b}" for b in budgets)
                      + " | mean |", "|---|---|" + "---:|" * (len(budgets) + 1)]
            table: dict[tuple[str, str], dict[int, Mapping[str, Any]]] = {}
            for r in here:
                key = (_setting_str(r["setting"]), r["retriever"])
                table.setdefault(key, {})[int(r["budget_tokens"])] = r
            means = {}
            for key, by_b in table.items():
                vals = [by_b[b][metric] for b in budgets
                        if b in by_b and by_b[b].get(metric) is not None]
                means[key] = sum(vals) / len(vals) if vals else None
            best: dict[str, float] = {}
            for (_, name), m in means.items():
                if m is not None and m > best.get(name, -1.0):
                    best[name] = m
            for name in _ordered(n for _, n in table):
                for key in [k for k in table if k[1] == name]:
                    m = means[key]
                    mean = "–" if m is None else f"{m:.3f}"
                    if m is not None and m == best.get(name):
                        mean = f"**{mean}**"
                    cells = [_cell(table[key].get(b), metric) for b in budgets]
                    lines.append(f"| {key[0]} | {name} | " + " | ".join(cells) + f" | {mean} |")
            by_ref: dict[str, dict[int, Mapping[str, Any]]] = {}
            for r in refs:
                by_ref.setdefault(r["retriever"], {})[int(r["budget_tokens"])] = r
            for name in _ordered(by_ref):
                vals = [by_ref[name][b][metric] for b in budgets if b in by_ref[name]
                        and by_ref[name][b].get(metric) is not None]
                mean = f"{sum(vals) / len(vals):.3f}" if vals else "–"
                cells = [_cell(by_ref[name].get(b), metric) for b in budgets]
                lines.append(f"| (reference) | {name} | " + " | ".join(cells) + f" | {mean} |")
            lines.append("")
    return "\n".join(lines)
