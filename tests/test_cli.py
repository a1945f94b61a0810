"""The command line: index / search / ask / train-sae, and errors that name the problem."""

from __future__ import annotations

import json

import pytest

from s3_retriever import S3Index, SAEError
from s3_retriever.cli import main
from s3_retriever.sae import load_saes
from s3_retriever.training import train_model_saes
from tests.helpers import TEXTS, tiny_lm, tiny_saes


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, lm):
    folder = tmp_path_factory.mktemp("cli")
    for i, t in enumerate(TEXTS):
        (folder / f"doc{i}.txt").write_text(t, encoding="utf-8")
    (folder / "empty.txt").write_text("  \n", encoding="utf-8")
    out = folder / "index"
    files = [str(folder / f"doc{i}.txt") for i in range(len(TEXTS))] + [str(folder / "empty.txt")]
    assert main(["index", *files, "--out", str(out), "--quiet"]) == 0
    return folder, out


def test_index_then_search_json(index_dir, capsys):
    folder, out = index_dir
    capsys.readouterr()
    assert main(["search", str(out), "Where was Marie Curie born?", "--k", "2", "--json"]) == 0
    spans = json.loads(capsys.readouterr().out)
    assert 1 <= len(spans) <= 2
    for s in spans:
        text = (folder / s["doc_id"]).read_text(encoding="utf-8")
        assert text[s["start_char"]:s["end_char"]] == s["text"]
    assert spans[0]["doc_id"] == "doc0.txt"


def test_search_modes_and_budget(index_dir, capsys):
    _, out = index_dir
    assert main(["search", str(out), "Brandenburg Concertos", "--mode", "bm25",
                 "--budget", "200", "--k", "3", "--json"]) == 0
    spans = json.loads(capsys.readouterr().out)
    assert spans[0]["doc_id"] == "doc2.txt" and spans[0]["s3_score"] is None


def test_ask(index_dir, capsys):
    _, out = index_dir
    assert main(["ask", str(out), "In which city was Marie Curie born?", "--budget", "100",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["answer"] and res["spans"] and res["prompt_tokens"] > 0


def test_errors_are_messages_not_tracebacks(index_dir, tmp_path, capsys):
    _, out = index_dir
    assert main(["search", str(out), "   "]) == 2
    assert "query is empty" in capsys.readouterr().err
    assert main(["search", str(out), "x", "--k", "0"]) == 2
    assert "k must be" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "nope"), "x"]) == 2
    assert "nope" in capsys.readouterr().err


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_user_mistakes_are_one_line_errors(index_dir, tmp_path, capsys):
    folder, out = index_dir
    capsys.readouterr()
    cases = [
        (["search", str(folder / "doc0.txt"), "x"], "is a file, not an index folder"),
        (["search", str(folder), "x"], "not an s3-retriever index"),
        (["ask", str(out), "x", "--budget", "0"], "budget_tokens must be a positive"),
        (["index", str(folder), "--out", str(tmp_path / "i")], "is a folder; give text files"),
        (["index", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "i")],
         "no such file"),
        (["index", str(folder / "doc0.txt"), "--out", str(folder)], "folder of other files"),
        (["index", str(folder / "doc0.txt"), "--out", str(out)], "pass overwrite=True"),
        (["index", str(folder / "doc0.txt"), "--out", str(folder / "doc1.txt"), "--overwrite"],
         "is a file"),
        (["train-sae", "--layers", "1", "--out", str(folder)], "folder of other files"),
        (["calibrate", "--out", str(folder / "doc0.txt")], "exists; pass --overwrite"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in _error_line(capsys), argv
    assert (folder / "doc1.txt").read_text(encoding="utf-8") == TEXTS[1]
    assert not (tmp_path / "i").exists()


def test_binary_and_undecodable_files_are_refused_unless_told(index_dir, tmp_path, capsys):
    _, out = index_dir
    capsys.readouterr()
    (tmp_path / "img.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "latin.txt").write_bytes("Café au lait à Paris.".encode("latin-1"))
    assert main(["index", str(tmp_path / "img.bin"), "--out", str(tmp_path / "a")]) == 2
    assert "looks binary" in _error_line(capsys)
    assert main(["index", str(tmp_path / "latin.txt"), "--out", str(tmp_path / "a")]) == 2
    assert "not valid UTF-8 (byte 3); pass --encoding" in _error_line(capsys)
    assert main(["index", str(tmp_path / "latin.txt"), "--out", str(tmp_path / "a"),
                 "--encoding", "latin-1", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["search", str(tmp_path / "a"), "Paris", "--json"]) == 0
    assert "Café au lait" in json.loads(capsys.readouterr().out)[0]["text"]
    assert main(["index", str(tmp_path / "latin.txt"), "--out", str(tmp_path / "a"),
                 "--errors", "replace", "--overwrite", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["search", str(tmp_path / "a"), "Paris", "--json"]) == 0
    assert "Caf\ufffd au lait" in json.loads(capsys.readouterr().out)[0]["text"]
    assert main(["index", str(tmp_path / "latin.txt"), "--out", str(tmp_path / "b"),
                 "--encoding", "klingon"]) == 2
    assert "unknown encoding" in _error_line(capsys)


def test_train_model_saes_writes_loadable_saes(lm, tmp_path):
    small = tiny_lm(lm.tokenizer)
    report = train_model_saes(small, [1, 2], tmp_path / "saes", num_latents=32, k=4,
                              texts=TEXTS * 4, steps=20, batch_size=64, show_progress=False)
    assert set(report) == {"layers.1", "layers.2"}
    for r in report.values():
        assert 0.0 <= r["held_out"]["keys"]["fvu"] < 2.0
        assert {"fvu", "dead_fraction", "mean_density"} <= set(r["held_out"]["queries"])
    saes = load_saes(tmp_path / "saes")
    assert saes["layers.1"].cfg.k == 4 and saes["layers.1"].cfg.d_in == small.spec.head_dim


def test_per_head_training_uses_only_the_scored_heads(lm, tmp_path):
    small = tiny_lm(lm.tokenizer)  # 4 query heads, 2 kv heads: heads 2, 3 read kv head 1
    kw = dict(num_latents=32, k=4, texts=TEXTS * 4, steps=5, batch_size=64, show_progress=False)
    every = train_model_saes(small, [1], tmp_path / "all", **kw)["layers.1"]["held_out"]
    mine = train_model_saes(small, [1], tmp_path / "one", heads=[(1, 3)],
                            **kw)["layers.1"]["held_out"]
    # held-out vectors counted: every head (2 kv, 4 query) vs one kv head and one query head
    assert every["keys"]["n"] == 2 * mine["keys"]["n"]
    assert every["queries"]["n"] == 4 * mine["queries"]["n"]


def test_wrong_sae_for_the_model(lm):
    with pytest.raises(SAEError, match="d_in"):
        S3Index(lm, tiny_saes(layers=(17,)))  # 16-dim SAEs on a 64-dim model
