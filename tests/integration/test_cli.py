"""The command line (index / search / ask / train-sae), SAE training, and one-line errors."""

from __future__ import annotations

import json

import pytest

from s3_retriever import S3Index, SAEError
from s3_retriever.cli import main
from s3_retriever.sae.coder import SAEConfig, TopKSAE
from s3_retriever.sae.io import load_saes
from s3_retriever.sae.train import collect_qk, evaluate_sae, train_model_saes
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
    small = tiny_lm(lm.tokenizer)  # 2 kv heads, 4 query heads of 16 dims
    texts = TEXTS * 4
    report = train_model_saes(small, [1, 2], tmp_path / "saes", num_latents=32, k=4,
                              texts=texts, steps=20, batch_size=64, show_progress=False)
    assert set(report) == {"layers.1", "layers.2"}
    # held out: the last 10% of the texts, never trained on; every kv / query head counted
    held = collect_qk(small, texts[int(len(texts) * 0.9):], [1, 2], show_progress=False)
    saes = load_saes(tmp_path / "saes")
    assert saes["layers.1"].cfg.k == 4 and saes["layers.1"].cfg.d_in == small.spec.head_dim
    for hp, r in report.items():
        layer = int(hp.split(".")[1])
        keys, queries = held.keys[layer], held.queries[layer]
        assert r["held_out_tokens"] == held.n_tokens > 0
        assert r["held_out"]["keys"]["n"] == 2 * held.n_tokens == keys.shape[0]
        assert r["held_out"]["queries"]["n"] == 4 * held.n_tokens == queries.shape[0]
        # the saved SAE is the one the report measured
        again = evaluate_sae(saes[hp], keys, kind="key")
        assert again["fvu"] == pytest.approx(r["held_out"]["keys"]["fvu"], rel=1e-6)
        # training helps: better than an untrained SAE of the same shape on unseen keys
        fresh = TopKSAE(SAEConfig(d_in=16, num_latents=32, k=4, hookpoint=hp, layer=layer))
        assert r["held_out"]["keys"]["fvu"] < 0.9 * evaluate_sae(fresh, keys, kind="key")["fvu"]
        assert r["held_out"]["queries"]["fvu"] < 1.0


def test_wrong_sae_for_the_model(lm):
    with pytest.raises(SAEError, match="d_in"):
        S3Index(lm, tiny_saes(layers=(17,)))  # 16-dim SAEs on a 64-dim model
