"""The three distributions build as wheels and work when installed into a clean venv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = {".": "s3_retriever", "integrations/langchain-s3": "langchain_s3",
                 "integrations/llama-index-retrievers-s3": "llama_index_retrievers_s3"}

SMOKE = textwrap.dedent("""
    import json, sys
    import s3_retriever, langchain_s3, llama_index.retrievers.s3 as li
    from s3_retriever import S3Index
    index = S3Index.from_model()   # the shipped SAEs must be inside the wheel
    index.add_texts(["Bach lived in Leipzig. Kiwis are green."], ids=["d"],
                    show_progress=False)
    top = index.search("Where did Bach live?", k=1)[0]
    lc = langchain_s3.S3Retriever.from_index(index, k=1).invoke("Where did Bach live?")
    hits = li.S3Retriever(index, similarity_top_k=1).retrieve("Where did Bach live?")
    print(json.dumps({"files": [s3_retriever.__file__, langchain_s3.__file__, li.__file__],
                      "top": top.text, "langchain": lc[0].page_content,
                      "llamaindex": hits[0].node.text}))
""")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(out), *DISTRIBUTIONS], cwd=ROOT,
                   check=True, capture_output=True)
    return sorted(out.glob("*.whl"))


def test_each_distribution_builds_a_wheel_with_only_its_own_package(wheels):
    names = {w.name.split("-")[0]: w for w in wheels}
    assert set(names) == set(DISTRIBUTIONS.values())
    core = zipfile.ZipFile(names["s3_retriever"]).namelist()
    assert "s3_retriever/engine.py" in core and "s3_retriever/retrieval/scan.py" in core
    assert any(n.startswith("s3_retriever/saes/smollm2-135m/layers.17/") for n in core)
    assert not any(n.startswith(("langchain_s3/", "llama_index/", "tests/")) for n in core)
    meta = zipfile.ZipFile(names["s3_retriever"]).read(
        next(n for n in core if n.endswith("METADATA"))).decode()
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    # the frameworks and faiss are extras of the core, never hard requirements
    hard = [r for r in requires if "extra ==" not in r]
    assert not any(("langchain" in r or "llama-index" in r or "faiss" in r) for r in hard)
    lc = zipfile.ZipFile(names["langchain_s3"]).namelist()
    assert "langchain_s3/retrievers.py" in lc and not any(n.startswith("s3_retriever/")
                                                          for n in lc)
    li = zipfile.ZipFile(names["llama_index_retrievers_s3"]).namelist()
    assert "llama_index/retrievers/s3/base.py" in li
    assert "llama_index/__init__.py" not in li  # a namespace package, shared with core


@pytest.mark.model
def test_wheels_install_into_a_clean_venv_and_answer_a_query(wheels, tmp_path, lm):
    """A new venv holds only our three wheels; the third-party packages it imports come
    from the test venv's site-packages (added as a plain path: no editable finder of the
    source tree runs), so whatever is missing from a wheel fails here."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"], check=True,
                               capture_output=True, text=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--target", str(site), *map(str, wheels)], check=True, capture_output=True)
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    run = subprocess.run([str(python), "-c", SMOKE], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert all(f.startswith(str(site)) for f in out["files"]), out["files"]
    for text in (out["top"], out["langchain"], out["llamaindex"]):
        assert text in "Bach lived in Leipzig. Kiwis are green." and text
