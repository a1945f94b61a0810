"""Every docs/examples/*.py script and README Python block runs offline as its page says."""

# Every tutorial script in docs/examples/ runs offline on the embedded model and prints
# what its page says it prints. The list is a glob, so a new example cannot be left out.

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest

from tests.shared_model import reuse_session_model  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.py"))

# Text each example must print (its tutorial describes it). An example with a
# docs/examples/<name>.out file must print exactly that file (the page shows it).
EXPECT = {
    "quickstart.py": [],
    "langchain_quickstart.py": ["Warsaw", "Zanzibar"],
    "llamaindex_quickstart.py": ["secret:", "Zanzibar"],
    "hybrid_fusion.py": ["s3     ->", "bm25   ->", "hybrid ->", "rrf    weight", "school:"],
    "persist_update.py": ["saved: ['CURRENT', 'LOCK', 'gen-000001']",
                          "generation: ['codes', 'docs.jsonl', 'heads.json', 'manifest.json', "
                          "'saes', 'segments.json', 'tokens']",
                          "refused: already holds an index", "refused: docs.jsonl: ",
                          "LangChain: ", "LlamaIndex: ",
                          "persisted: ['s3_index', 's3_retriever.json']"],
    "train_saes.py": ["held-out FVU", "layers.17/sae.safetensors", "('layers.17.kv1',)",
                      "hybrid: ferry"],
    "evaluate_own_data.py": ["oracle", "1.00", "report/quality_table.md"],
    "gpu.py": ["chunk_tokens", "red cabinet"],
}


def test_examples_found():
    assert len(EXAMPLES) >= len(EXPECT)
    assert sorted(EXPECT) == sorted(p.name for p in EXAMPLES), \
        "every docs/examples/*.py needs an EXPECT entry (and a tutorial page)"


# Lines of a .out file that start with this show text the model generated: its wording
# depends on the dtype (bf16 or fp32) and the CPU, so only its presence is checked.
GENERATED = "answer: "


def assert_prints(out: str, expected: str, path: Path) -> None:
    """``out`` equals ``expected`` line by line, except that a generated line only has to
    be a non-empty line with the same prefix."""
    got, want = out.splitlines(), expected.splitlines()
    hint = (f"{path.name} no longer prints {path.with_suffix('.out').name}, which its page "
            f"shows; if the new output is right, regenerate it: python "
            f"{path.relative_to(ROOT)} > {path.with_suffix('.out').relative_to(ROOT)}")
    assert len(got) == len(want), f"{hint}\n{out}"
    for g, w in zip(got, want):
        if w.startswith(GENERATED):
            assert g.startswith(GENERATED) and g[len(GENERATED):].strip(), f"{hint}\n{out}"
        else:
            assert g == w, f"{hint}\n{out}"


@pytest.mark.model
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path, reuse_session_model, monkeypatch, tmp_path, capsys):  # noqa: F811
    monkeypatch.chdir(tmp_path)  # whatever an example writes stays out of the repository
    monkeypatch.setattr(sys, "argv", [str(path)])
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert out.strip(), f"{path.name} printed nothing"
    expected = path.with_suffix(".out")
    if expected.is_file():
        assert_prints(out, expected.read_text(encoding="utf-8"), path)
    for text in EXPECT.get(path.name, []):
        assert text in out, f"{path.name} did not print {text!r}:\n{out}"


def test_every_example_is_shown_in_the_docs():
    pages = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs").rglob("*.md"))
    for path in EXAMPLES:
        assert f'--8<-- "docs/examples/{path.name}' in pages, \
            f"{path.name} is not included in any docs page"


BOOK = ("The harbour master kept a diary. On 3 May 1902 a letter arrived from the mainland. "
        "The letter was written by Jonas Lind, the lighthouse keeper's brother. He asked for "
        "a boat to collect him before the winter storms.")


@pytest.mark.model
def test_readme_python_blocks_run(reuse_session_model, monkeypatch, tmp_path, capsys):  # noqa: F811
    """The README's Python examples run as written (on a small ``book.txt``)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text("utf-8"), re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    (tmp_path / "book.txt").write_text(BOOK, encoding="utf-8")
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    assert "Jonas Lind" in capsys.readouterr().out
