"""The command line (index / search / ask / train-sae / sae-convert), its global flags
(--version, -v, --quiet, --filter), SAE training, and one-line errors."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from s3_retriever import S3Index, SAEError, __version__
from s3_retriever.cli import main
from s3_retriever.sae.coder import SAEConfig, TopKSAE
from s3_retriever.sae.io import import_sparsify, load_saes, save_saes
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


# ------------------------------------------------------------------ global flags, --filter
def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"s3-retriever {__version__}"


def _search_docs(capsys, argv) -> list[str]:
    assert main(argv) == 0, capsys.readouterr().err
    return [s["doc_id"] for s in json.loads(capsys.readouterr().out)]


def test_search_and_ask_filters(index_dir, capsys):
    folder, out = index_dir
    capsys.readouterr()
    src = [str(folder / f"doc{i}.txt") for i in range(3)]
    q = [str(out), "Where was Marie Curie born?", "--json", "--k", "3"]
    assert "doc0.txt" in _search_docs(capsys, ["search", *q])
    # a plain value is a string; the Curie document is excluded by the filter
    assert set(_search_docs(capsys, ["search", *q, "--filter", f"source={src[1]}"])) == {
        "doc1.txt"}
    # a JSON list: any of; several filters: all must hold
    any_of = f"source={json.dumps(src[1:])}"
    assert set(_search_docs(capsys, ["search", *q, "--filter", any_of])) <= {
        "doc1.txt", "doc2.txt"}
    assert set(_search_docs(capsys, ["search", *q, "--filter", any_of,
                                     "--filter", f"source={src[2]}"])) == {"doc2.txt"}
    assert _search_docs(capsys, ["search", *q, "--filter", f"source={src[0]}",
                                 "--filter", f"source={src[1]}"]) == []  # AND, same key
    assert _search_docs(capsys, ["search", *q, "--filter", "source=1867"]) == []  # JSON: int
    assert main(["search", *q[:2], "--filter", "source=nowhere.txt"]) == 0
    assert "no spans (no document matches --filter)" in capsys.readouterr().out
    assert main(["ask", str(out), "Who wrote the Brandenburg Concertos?", "--budget", "80",
                 "--max-new-tokens", "4", "--json", "--filter", f"source={src[2]}"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["spans"] and {s["doc_id"] for s in res["spans"]} == {"doc2.txt"}


def test_flag_mistakes_are_one_line_errors(index_dir, tmp_path, capsys):
    _, out = index_dir
    capsys.readouterr()
    cases = [
        (["search", str(out), "x", "--filter", "source"], "expected KEY=VALUE"),
        (["ask", str(out), "x", "--filter", "=x"], "expected KEY=VALUE"),
        (["search", str(out), "x", "--filter", 'source={"$near": 1}'], "unknown operator"),
        (["search", str(out), "x", "-v", "--quiet"], "--quiet and --verbose contradict"),
        (["-v", "sae-convert", "--from", "s3", str(tmp_path), "--out", str(tmp_path / "o"),
          "--quiet"], "--quiet and --verbose contradict"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in _error_line(capsys), argv


def test_verbose_logs_the_library_and_quiet_hides_progress(index_dir, tmp_path, caplog,
                                                           capfd):
    folder, out = index_dir
    library = logging.getLogger("s3_retriever")
    before = library.level
    q = [str(out), "Where was Marie Curie born?", "--k", "1"]

    def cli_records(argv):
        caplog.clear()
        assert main(argv) == 0
        assert library.level == before  # main() leaves the logging setup as it found it
        return {(r.levelno, r.getMessage().split(":")[0]) for r in caplog.records
                if r.name == "s3_retriever.cli"}

    assert not cli_records(["search", *q])  # default: warnings only
    info = cli_records(["-v", "search", *q])
    assert (logging.INFO, "search") in info and not {lv for lv, _ in info} - {logging.INFO}
    assert (logging.INFO, "search") in cli_records(["search", *q, "--verbose"])  # after too
    assert (logging.DEBUG, "arguments") in cli_records(["search", *q, "-vv"])
    assert (logging.DEBUG, "arguments") in cli_records(["-v", "search", *q, "-v"])
    capfd.readouterr()
    # third-party progress bars (transformers' "Loading weights") never print on a CLI call
    assert main(["search", *q]) == 0
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "%|" not in err, err
    # the scan's own bar prints unless --quiet, given before or after the subcommand
    doc = str(folder / "doc0.txt")
    assert main(["index", doc, "--out", str(tmp_path / "a")]) == 0
    assert "scanning" in capfd.readouterr().err
    for argv in (["--quiet", "index", doc, "--out", str(tmp_path / "b")],
                 ["index", doc, "--out", str(tmp_path / "c"), "--quiet"]):
        assert main(argv) == 0
        err = capfd.readouterr().err
        assert "scanning" not in err and "%|" not in err, err


# ------------------------------------------------------------------ sae-convert
def _some_saes() -> dict[str, TopKSAE]:
    saes = {}
    for layer in (2, 5):
        cfg = SAEConfig(d_in=8, num_latents=32, k=4, hookpoint=f"layers.{layer}", layer=layer,
                        key_scale=3.0, query_scale=0.5)
        sae = TopKSAE(cfg, generator=torch.Generator().manual_seed(layer))
        with torch.no_grad():
            sae.b_enc.normal_(generator=torch.Generator().manual_seed(10 + layer))
        saes[cfg.hookpoint] = sae
    return saes


def test_sae_convert_round_trip(tmp_path, capsys):
    saes = _some_saes()
    save_saes(saes, tmp_path / "ours")
    (tmp_path / "ours" / "heads.json").write_text('{"heads": [["layers.2", 1, 1.0]]}')
    assert main(["sae-convert", "--from", "s3", str(tmp_path / "ours"),
                 "--out", str(tmp_path / "sp")]) == 0
    assert "converted 2 SAE(s) (layers.2, layers.5)" in capsys.readouterr().out
    sp = import_sparsify(tmp_path / "sp")
    assert {h: s.content_hash() for h, s in sp.items()} == {
        h: s.content_hash() for h, s in saes.items()}
    assert main(["sae-convert", "--from", "sparsify", str(tmp_path / "sp"),
                 "--out", str(tmp_path / "back")]) == 0
    back = load_saes(tmp_path / "back")
    x = torch.randn(7, 8, generator=torch.Generator().manual_seed(0))
    for hp, sae in saes.items():
        assert back[hp].content_hash() == sae.content_hash()
        acts, ids = sae.encode(x, "key")
        acts2, ids2 = back[hp].encode(x, "key")
        assert torch.equal(ids, ids2) and torch.equal(acts, acts2)
        assert torch.equal(sae.decode(acts, ids, "key"), back[hp].decode(acts2, ids2, "key"))
    assert (tmp_path / "back" / "heads.json").read_text() == (
        tmp_path / "ours" / "heads.json").read_text()
    # scales and the layer of a sparsify SAE (which stores none) from the command line
    assert main(["sae-convert", "--from", "sparsify", str(tmp_path / "sp" / "layers.5"),
                 "--out", str(tmp_path / "one"), "--key-scale", "2", "--layer", "7"]) == 0
    one = load_saes(tmp_path / "one")["layers.5"]
    assert (one.cfg.key_scale, one.cfg.query_scale, one.cfg.layer) == (2.0, 0.5, 7)


def test_sae_convert_refuses_outputs_and_inputs(tmp_path, capsys):
    save_saes(_some_saes(), tmp_path / "ours")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    conv = ["sae-convert", "--from", "s3", str(tmp_path / "ours"), "--out"]
    assert main([*conv, str(tmp_path / "sp")]) == 0
    capsys.readouterr()
    cases = [
        ([*conv, str(tmp_path / "sp")], "exists; pass --overwrite"),
        ([*conv, str(tmp_path / "mine"), "--overwrite"], "folder of other files"),
        ([*conv, str(tmp_path / "mine" / "notes.txt"), "--overwrite"], "is a file"),
        ([*conv, str(tmp_path / "x"), "--key-scale", "2"], "apply to --from sparsify"),
        (["sae-convert", "--from", "sparsify", str(tmp_path / "ours"), "--out",
          str(tmp_path / "x")], "an s3-retriever SAE folder"),
        (["sae-convert", "--from", "s3", str(tmp_path / "sp"), "--out", str(tmp_path / "x")],
         "an EleutherAI sparsify SAE"),
        (["sae-convert", "--from", "sparsify", str(tmp_path / "mine"), "--out",
          str(tmp_path / "x")], "no SAE found"),
        (["sae-convert", "--from", "s3", str(tmp_path / "nope"), "--out",
          str(tmp_path / "x")], "not found"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in _error_line(capsys), argv
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert not (tmp_path / "x").exists()
    assert main([*conv, str(tmp_path / "sp"), "--overwrite"]) == 0
    # in place: a folder converted onto itself (read whole before it is replaced)
    assert main(["sae-convert", "--from", "sparsify", str(tmp_path / "sp"), "--out",
                 str(tmp_path / "sp"), "--overwrite"]) == 0
    assert set(load_saes(tmp_path / "sp")) == {"layers.2", "layers.5"}
