"""What docs/guarantees.md promises about saved indexes, each checked here on a tiny model:
nothing of the user's is lost, a save killed at any step leaves the old or the new index,
every byte read is verified, and interleaved updates and saves stay consistent."""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
from pathlib import Path

import pytest

from s3_retriever import (
    IndexFormatError,
    IndexNotFoundError,
    OutputExistsError,
    S3Index,
    S3Settings,
)
from s3_retriever.storage import seal, sha256_file
from tests.helpers import TEXTS, generation, tiny_lm, tiny_saes

QUERIES = ["Where was Marie Curie born?", "Amazon rainforest basin", "Bach Leipzig concertos"]


@pytest.fixture(scope="module")
def tiny(lm):
    """A tiny random model (fast to scan), shared by the module's indexes."""
    return tiny_lm(lm.tokenizer)


def _index(tiny, texts=TEXTS, ids=("curie", "amazon", "bach")) -> S3Index:
    idx = S3Index(tiny, tiny_saes(), S3Settings(chunk_tokens=16, context_tokens=4))
    if texts:
        idx.add_texts(list(texts), metadatas=[{"n": i} for i in range(len(texts))],
                      ids=list(ids), show_progress=False)
    return idx


def _results(index: S3Index) -> list:
    return [[(s.id, round(s.score, 6)) for s in index.search(q, k=3)] for q in QUERIES]


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------ nothing of the user's lost
def test_save_refuses_a_folder_of_user_files(tiny, tmp_path):
    idx = _index(tiny)
    mine = tmp_path / "thesis"
    (mine / "chapters").mkdir(parents=True)
    (mine / "draft.txt").write_text("years of work")
    (mine / "chapters" / "one.md").write_text("# One")
    before = {p: p.read_bytes() for p in mine.rglob("*") if p.is_file()}
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match="folder of other files"):
            idx.save(mine, overwrite=overwrite)
    assert {p: p.read_bytes() for p in mine.rglob("*") if p.is_file()} == before
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        idx.save(tmp_path / "a.txt", overwrite=True)
    with pytest.raises(OutputExistsError, match="a parent folder is a file"):
        idx.save(tmp_path / "a.txt" / "idx")
    assert (tmp_path / "a.txt").read_text() == "x"


def test_replacing_an_index_is_explicit(tiny, tmp_path):
    path = tmp_path / "idx"
    _index(tiny).save(path)
    smaller = _index(tiny, TEXTS[:1], ["curie"])
    with pytest.raises(OutputExistsError, match="pass overwrite=True"):
        smaller.save(path)
    assert len(S3Index.load(path, model=tiny)) == 3
    smaller.save(path, overwrite=True)
    assert len(S3Index.load(path, model=tiny)) == 1
    assert _entries(path) == ["CURRENT", "LOCK", "gen-000002"]


def test_saving_through_a_symlink_updates_its_target(tiny, tmp_path):
    real, link = tmp_path / "real", tmp_path / "link"
    _index(tiny).save(real)
    link.symlink_to(real, target_is_directory=True)
    _index(tiny, TEXTS[:2], ["curie", "amazon"]).save(link, overwrite=True)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert len(S3Index.load(real, model=tiny)) == 2


def test_a_format_1_index_is_recognised(tiny, tmp_path):
    old = tmp_path / "old"
    (old / "postings").mkdir(parents=True)
    (old / "docs.jsonl").write_text("{}\n")
    (old / "postings" / "a.npy").write_bytes(b"x")
    (old / "notes.txt").write_text("mine")
    (old / "manifest.json").write_text(json.dumps({
        "format": "s3-retriever-index", "format_version": 1,
        "files": {"docs.jsonl": {}, "postings/a.npy": {}}}))
    with pytest.raises(IndexFormatError, match="format 1, written by an older"):
        S3Index.load(old, model=tiny)
    with pytest.raises(OutputExistsError, match="already holds an index"):
        _index(tiny).save(old)
    _index(tiny).save(old, overwrite=True)
    assert _entries(old) == ["CURRENT", "LOCK", "gen-000001", "notes.txt"]
    assert len(S3Index.load(old, model=tiny)) == 3


# ------------------------------------------------------------------ crash injection
_STEPS = ("replace", "rename", "fsync", "mkdir", "unlink", "rmdir")


def _save_killed_at(index: S3Index, path: Path, step: int) -> bool:
    """Run ``index.save(path, overwrite=True)`` in a forked child killed (``os._exit``) just
    before its ``step``-th file-system step; True if the save finished first."""
    pid = os.fork()
    if pid == 0:  # the child: count every write/rename/delete step, die at the chosen one
        count = [0]
        for name in _STEPS:
            real = getattr(os, name)

            def wrapped(*a, _real=real, **k):
                count[0] += 1
                if count[0] == step:
                    os._exit(17)
                return _real(*a, **k)

            setattr(os, name, wrapped)
        try:
            index.save(path, overwrite=True)
        except BaseException:
            os._exit(3)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 17), f"the save failed on its own (exit {code}) at step {step}"
    return code == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_save_killed_at_any_step_leaves_the_old_or_the_new_index(tiny, tmp_path):
    old, new = _index(tiny), _index(tiny, TEXTS[1:], ["amazon", "bach"])
    old_results, new_results = _results(old), _results(new)
    path = tmp_path / "idx"
    outcomes = set()
    for step in range(1, 500):
        shutil.rmtree(path, ignore_errors=True)
        old.save(path)
        finished = _save_killed_at(new, path, step)
        loaded = S3Index.load(path, model=tiny)  # never nothing, never a mix
        got = _results(loaded)
        assert got in (old_results, new_results), f"killed at step {step}: a mixed index"
        outcomes.add("new" if got == new_results else "old")
        gens = [e for e in _entries(path) if e.startswith(("gen-", ".gen-", ".CURRENT"))]
        assert len(gens) == 1, f"killed at step {step}: leftovers {gens} not removed by load"
        if finished:
            break
    else:
        pytest.fail("the save never finished")
    assert step > 10 and outcomes == {"old", "new"}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_first_save_killed_at_any_step_leaves_an_index_or_nothing(tiny, tmp_path):
    idx = _index(tiny)
    path = tmp_path / "first"
    for step in range(1, 500):
        shutil.rmtree(path, ignore_errors=True)
        if _save_killed_at(idx, path, step):
            assert _results(S3Index.load(path, model=tiny)) == _results(idx)
            break
        try:
            assert _results(S3Index.load(path, model=tiny)) == _results(idx)
        except IndexNotFoundError:
            # nothing was published; what the save left is gone and the folder reusable
            assert not path.exists() or _entries(path) in ([], ["LOCK"])
            idx.save(path)  # no overwrite needed: there is no index there
    else:
        pytest.fail("the save never finished")


# ------------------------------------------------------------------ every byte verified
def _mutations(rng: random.Random, size: int) -> list[tuple[str, int]]:
    out = [("truncate", 0)]
    if size:
        out += [("truncate", rng.randrange(size)), ("flip", rng.randrange(size * 8)),
                ("flip", rng.randrange(size * 8))]
    return out


def test_loader_fuzz_every_file_truncated_or_flipped(tiny, tmp_path):
    """Each damaged load either gives exactly the saved results or raises IndexFormatError."""
    idx = _index(tiny)
    want = _results(idx)
    pristine = tmp_path / "pristine"
    idx.save(pristine)
    files = sorted(p.relative_to(pristine) for p in pristine.rglob("*")
                   if p.is_file() and p.name != "LOCK")
    assert Path("CURRENT") in files and len(files) > 10
    # the format-3 layout: per-token codes, no postings on disk
    gen = generation(pristine)
    assert _entries(gen) == ["codes", "docs.jsonl", "heads.json", "manifest.json", "saes",
                             "segments.json", "tokens"]
    assert _entries(gen / "codes") == ["seg000000"]
    assert _entries(gen / "codes" / "seg000000") == sorted(
        f"layers.{i}.kv{g}.{part}.npy" for i in (1, 2) for g in (0, 1) for part in ("ids", "acts"))
    assert _entries(gen / "tokens") == ["seg000000.char.npy", "seg000000.doc.npy"]
    rng = random.Random(0)
    refused = accepted = 0
    for rel in files:
        for kind, at in _mutations(rng, (pristine / rel).stat().st_size):
            case = tmp_path / "case"
            shutil.rmtree(case, ignore_errors=True)
            shutil.copytree(pristine, case)
            target = case / rel
            data = bytearray(target.read_bytes())
            if kind == "truncate":
                data = data[:at]
            else:
                data[at // 8] ^= 1 << (at % 8)
            target.write_bytes(bytes(data))
            try:
                loaded = S3Index.load(case, model=tiny)
            except IndexFormatError:
                refused += 1
                continue
            assert _results(loaded) == want, f"{rel} {kind}@{at}: loaded different data"
            accepted += 1
    assert refused > 3 * len(files) - 5  # almost every change is caught by a hash


def test_an_edited_manifest_is_refused_even_if_resealed(tiny, tmp_path):
    """Forging a consistent manifest and pointer still meets the settings validation and the
    count cross-checks."""
    path = tmp_path / "idx"
    _index(tiny).save(path)
    gen = generation(path)

    def forge(edit) -> None:
        m = json.loads((gen / "manifest.json").read_text())
        edit(m)
        (gen / "manifest.json").write_text(json.dumps(seal(m)))
        ptr = json.loads((path / "CURRENT").read_text())
        ptr["manifest_sha256"] = sha256_file(gen / "manifest.json")
        (path / "CURRENT").write_text(json.dumps(seal(ptr)))

    original = (gen / "manifest.json").read_text()
    m = json.loads(original)
    m["files"] = {}
    (gen / "manifest.json").write_text(json.dumps(m))  # edited, not resealed
    with pytest.raises(IndexFormatError, match="does not match the hash in CURRENT"):
        S3Index.load(path, model=tiny)
    for edit, message in [
        (lambda m: m["settings"].update(chunk_tokens=-5), "chunk_tokens must be a positive"),
        (lambda m: m["settings"].update(query_mean="yes"), "query_mean must be True or False"),
        (lambda m: m["settings"].update(fusion_weight=7), "fusion_weight must be a number"),
        (lambda m: m.update(documents=4), "says 4 documents"),
        (lambda m: m.update(tokens=1), "tokens, the data holds"),
        (lambda m: m.update(format_version=1), "format version 1"),
        (lambda m: m.update(format_version=2), "format version 2, this version reads 3"),
    ]:
        (gen / "manifest.json").write_text(original)
        forge(edit)
        with pytest.raises(IndexFormatError, match=message):
            S3Index.load(path, model=tiny)


def test_files_the_manifest_does_not_list_are_refused(tiny, tmp_path):
    path = tmp_path / "idx"
    _index(tiny).save(path)
    extra = generation(path) / "saes" / "layers.9"
    shutil.copytree(generation(path) / "saes" / "layers.1", extra)
    with pytest.raises(IndexFormatError, match="not listed in manifest.json"):
        S3Index.load(path, model=tiny)
    shutil.rmtree(extra)
    assert len(S3Index.load(path, model=tiny)) == 3


def test_load_names_what_is_not_an_index(tiny, tmp_path):
    with pytest.raises(IndexNotFoundError, match="no such index folder"):
        S3Index.load(tmp_path / "absent", model=tiny)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(IndexNotFoundError, match="is a file, not an index folder"):
        S3Index.load(tmp_path / "file.txt", model=tiny)
    with pytest.raises(IndexNotFoundError, match="not an s3-retriever index"):
        S3Index.load(tmp_path, model=tiny)


# ------------------------------------------------------------------ soak
def test_soak_interleaved_updates_searches_saves_and_loads(tiny, tmp_path):
    """Threads add, delete, search, save and load for a bounded time; afterwards the index
    equals one rebuilt from the surviving documents, and every load saw a whole index."""
    idx = _index(tiny)
    path = tmp_path / "soak"
    idx.save(path)
    texts = {f"d{i}": f"{TEXTS[i % 3]} Note number {i} about item {i * 7}." for i in range(60)}
    errors: list[BaseException] = []
    stop = time.monotonic() + 6.0
    lock = threading.Lock()
    added: list[str] = []
    deleted: list[str] = []

    done: dict[str, int] = {}

    def guard(fn):
        def run():
            try:
                while time.monotonic() < stop:
                    fn()
                    done[fn.__name__] = done.get(fn.__name__, 0) + 1
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
        return run

    counter = iter(range(len(texts)))

    def adder():
        i = next(counter, None)
        if i is None:
            return
        idx.add_texts([texts[f"d{i}"]], metadatas=[{"n": i}], ids=[f"d{i}"],
                      show_progress=False)
        with lock:
            added.append(f"d{i}")

    def deleter():
        with lock:
            victim = added.pop(0) if len(added) > 3 else None
        if victim:
            idx.delete([victim])
            deleted.append(victim)
        time.sleep(0.01)

    source = {**texts, **dict(zip(["curie", "amazon", "bach"], TEXTS))}

    def searcher():
        spans = idx.search("Note number about item", k=3)
        assert [s.score for s in spans] == sorted((s.score for s in spans), reverse=True)
        for s in spans:
            assert s.text == source[s.doc_id][s.start_char:s.end_char]

    def saver():
        idx.save(path, overwrite=True)
        time.sleep(0.05)  # leave the index lock to the writers now and then

    def loader():
        loaded = S3Index.load(path, model=tiny)  # counts are cross-checked on load
        assert len(loaded) >= 1
        time.sleep(0.05)

    threads = [threading.Thread(target=guard(f)) for f in
               (adder, deleter, searcher, saver, loader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, repr(errors[0])
    assert min(done.get(f, 0) for f in ("saver", "loader", "searcher")) >= 3, done
    assert done.get("adder", 0) >= 5 and len(deleted) >= 2, (done, deleted)
    idx.save(path, overwrite=True)
    loaded = S3Index.load(path, model=tiny)
    live = [d for d in idx.index.docs if not d.deleted]
    rebuilt = _index(tiny, [d.text for d in live], [d.doc_id for d in live])
    for got in (idx, loaded):
        assert sorted(d.doc_id for d in got.index.docs if not d.deleted) == \
            sorted(d.doc_id for d in live)
        for q in [*QUERIES, "Note number 7 about item"]:
            a = {s.id: s.score for s in got.search(q, k=50)}
            b = {s.id: s.score for s in rebuilt.search(q, k=50)}
            assert a.keys() == b.keys()
            assert all(abs(a[i] - b[i]) <= 1e-4 * max(1.0, abs(b[i])) for i in a)
