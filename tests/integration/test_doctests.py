"""Every module's docstring examples run as doctests, on the session's embedded model."""

# The docstring examples of every module of the packages run as doctests.
#
# Examples that use the embedded model run too, on the session's model: a docstring may say
# ``S3Index.from_model("smollm2-135m")`` as a user would, and gets the model already loaded.
# Each module runs in a fresh temporary working folder, so examples that save files leave
# nothing behind. Modules are found by walking the packages: a new module cannot be skipped.

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

from tests.shared_model import reuse_session_model  # noqa: F401 (a fixture)

PACKAGES = ("s3_retriever", "langchain_s3", "llama_index.retrievers.s3")
FLAGS = doctest.ELLIPSIS


def _modules() -> list[str]:
    names = []
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        names.append(pkg_name)
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg_name + ".")]
    return sorted(names)


MODULES = _modules()


def test_modules_found():
    assert {"s3_retriever.engine", "s3_retriever.retrieval.packing", "s3_retriever.text.bm25",
            "s3_retriever.index.persistence", "s3_retriever.evaluation.run",
            "langchain_s3.retrievers", "llama_index.retrievers.s3.base"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, reuse_session_model, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    for test in sorted(tests, key=lambda t: t.name):
        runner.run(test, out=report.append)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, "".join(report)
