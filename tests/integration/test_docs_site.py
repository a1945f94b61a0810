"""The docs site: build hooks, an API reference of every module, guarantees naming tests."""

# The docs site: the build hooks (generated CLI reference, defaults read from the code,
# render-time docstring fixes) and an API reference that covers every module. ``make test``
# then builds the site with ``--strict``.

from __future__ import annotations

import argparse
import importlib
import importlib.util
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import pytest

from s3_retriever.cli import build_parser
from s3_retriever.config import ANSWER_BUDGET_TOKENS, S3Settings

ROOT = Path(__file__).resolve().parents[2]


def _hook(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_the_parsers_help():
    hook = _hook("cli_reference")
    page = hook.on_page_markdown(f"intro\n\n{hook.MARKER}\n", page=None)
    assert hook.MARKER not in page and page.startswith("intro")
    subs = hook.subcommands(build_parser())
    assert {"index", "search", "ask", "train-sae", "calibrate", "eval"} <= set(subs)
    for name, sub in subs.items():
        assert f"## `s3-retriever {name}`" in page
        assert f"usage: s3-retriever {name}" in page
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                for option in action.option_strings or [action.dest]:
                    assert f"`{option}`" in page, f"{name}: {option} missing"


def test_defaults_come_from_the_code():
    hook = _hook("code_defaults")
    text = ("w {{ settings.fusion_weight }}, f {{ settings.fusion }}, "
            "b {{ default:s3_retriever.engine.S3Index.answer:budget_tokens }}")
    assert hook.substitute(text) == (f"w {S3Settings().fusion_weight!r}, "
                                     f'f "{S3Settings().fusion}", b {ANSWER_BUDGET_TOKENS}')
    with pytest.raises(ValueError, match="no parameter"):
        hook.substitute("{{ settings.no_such_setting }}")


def test_docstrings_are_adapted_for_rendering():
    hook = _hook("griffe_docstrings")
    text = ("Use :class:`~s3_retriever.retrieval.spans.Span` and :func:`load_model`::\n\n"
            "    literal\n\n"
            "Example:\n    >>> f()  # doctest: +SKIP\n    1\n\n"
            ">>> g()\n2\n\nExample:\n    s3-retriever index a.txt --out a.s3\n")
    out = hook.rewrite(text).splitlines()
    assert out[0] == "Use `Span` and `load_model`:"
    assert "Examples:" in out and "    >>> f()  # doctest: +SKIP" in out  # griffe trims flags
    i = out.index("```pycon")
    assert out[i + 1:i + 4] == [">>> g()", "2", "```"]
    j = out.index("```text")
    assert out[j + 1:j + 3] == ["s3-retriever index a.txt --out a.s3", "```"]


# Modules documented elsewhere than the API reference: the CLI (its own page), the demo
# script and the data package of shipped SAEs.
NOT_IN_API = {"s3_retriever.cli", "s3_retriever.demo", "s3_retriever.saes"}


def test_every_module_is_in_the_api_reference():
    pages = "\n".join(p.read_text(encoding="utf-8")
                      for p in (ROOT / "docs" / "api").glob("*.md"))
    for pkg_name in ("s3_retriever", "langchain_s3", "llama_index.retrievers.s3"):
        pkg = importlib.import_module(pkg_name)
        names = [pkg_name] + [m.name for m in pkgutil.walk_packages(pkg.__path__,
                                                                     pkg_name + ".")]
        for name in names:
            if name in NOT_IN_API:
                continue
            assert f"::: {name}\n" in pages or f"::: {name}." in pages, \
                f"{name} is not in docs/api/*.md (add it, or to NOT_IN_API with a reason)"


def test_every_test_a_guarantee_names_exists():
    """docs/guarantees.md names the test behind each promise: each must exist."""
    page = (ROOT / "docs" / "guarantees.md").read_text(encoding="utf-8")
    named = set(re.findall(r"tests/((?:\w+/)*test_\w+)\.py::(test_\w+)", page))
    assert len(named) >= 15
    for module, test in sorted(named):
        source = (ROOT / "tests" / f"{module}.py").read_text(encoding="utf-8")
        assert f"def {test}(" in source, f"guarantees.md names {module}::{test}, which is gone"
