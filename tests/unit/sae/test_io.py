"""SAE folders: save_saes / load_saes, is_sae_folder, read_heads and the SAEs shipped in the package."""

import json

import pytest
import torch

from s3_retriever.errors import OutputExistsError, SAEError
from s3_retriever.sae.coder import SAEConfig, TopKSAE
from s3_retriever.sae.io import is_sae_folder, load_saes, read_heads, save_saes, shipped_sae_dir


def _sae(hookpoint: str, layer: int, seed: int = 0) -> TopKSAE:
    cfg = SAEConfig(d_in=8, num_latents=32, k=4, hookpoint=hookpoint, layer=layer)
    return TopKSAE(cfg, generator=torch.Generator().manual_seed(seed))


def _saes(seed: int = 0) -> dict[str, TopKSAE]:
    return {h: _sae(h, i, seed) for i, h in ((3, "layers.3"), (10, "layers.10"))}


def test_save_load_saes(tmp_path):
    saes = _saes()
    assert save_saes(saes, tmp_path / "saes") == tmp_path / "saes"
    assert sorted(p.name for p in (tmp_path / "saes").iterdir()) == ["layers.10", "layers.3"]
    loaded = load_saes(tmp_path / "saes")
    assert list(loaded) == ["layers.10", "layers.3"]  # sorted by folder name
    for h, sae in saes.items():
        assert loaded[h].content_hash() == sae.content_hash()
    single = load_saes(tmp_path / "saes" / "layers.3")
    assert list(single) == ["layers.3"]
    assert single["layers.3"].content_hash() == saes["layers.3"].content_hash()


def test_save_saes_refuses_bad_input(tmp_path):
    saes = _saes()
    with pytest.raises(SAEError, match="differs"):
        save_saes({"layers.4": saes["layers.3"]}, tmp_path / "other")
    with pytest.raises(SAEError, match="no SAEs"):
        save_saes({}, tmp_path / "none")
    assert not (tmp_path / "other").exists() and not (tmp_path / "none").exists()


def test_save_saes_replaces_only_sae_folders_and_only_with_overwrite(tmp_path):
    out = tmp_path / "saes"
    save_saes(_saes(seed=0), out)
    (out / "heads.json").write_text('{"heads": []}')
    assert is_sae_folder(out)
    with pytest.raises(OutputExistsError, match="overwrite"):
        save_saes(_saes(seed=1), out)
    assert load_saes(out)["layers.3"].content_hash() == _saes(seed=0)["layers.3"].content_hash()
    save_saes(_saes(seed=1), out, overwrite=True)
    assert load_saes(out)["layers.3"].content_hash() == _saes(seed=1)["layers.3"].content_hash()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saes"]  # no temporary left

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert not is_sae_folder(mine)
    with pytest.raises(OutputExistsError, match="other files"):
        save_saes(_saes(), mine, overwrite=True)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_is_sae_folder(tmp_path):
    save_saes(_saes(), tmp_path / "s")
    assert is_sae_folder(tmp_path / "s")
    (tmp_path / "s" / "README.md").write_text("about")
    assert is_sae_folder(tmp_path / "s")
    (tmp_path / "s" / "layers.3" / "extra.bin").write_bytes(b"x")
    assert not is_sae_folder(tmp_path / "s")  # a hookpoint folder with other files
    (tmp_path / "e").mkdir()
    assert not is_sae_folder(tmp_path / "e")  # empty: nothing to recognise


def test_load_saes_empty_or_missing(tmp_path):
    with pytest.raises(SAEError, match="no SAE found"):
        load_saes(tmp_path)
    (tmp_path / "junk").mkdir()
    with pytest.raises(SAEError, match="no SAE found"):
        load_saes(tmp_path)
    with pytest.raises(SAEError, match="not found"):
        load_saes(tmp_path / "nope")


def test_load_saes_folder_name_must_match_hookpoint(tmp_path):
    save_saes(_saes(), tmp_path / "s")
    (tmp_path / "s" / "layers.3").rename(tmp_path / "s" / "layers.4")
    with pytest.raises(SAEError, match="differs from its folder name"):
        load_saes(tmp_path / "s")


def test_read_heads(tmp_path):
    assert read_heads(tmp_path) is None
    heads = [["layers.3", 1, 1.0], ["layers.10", 0, 0.5]]
    (tmp_path / "heads.json").write_text(json.dumps({"heads": heads}))
    assert read_heads(tmp_path) == heads
    (tmp_path / "heads.json").write_text(json.dumps({"other": 1}))
    with pytest.raises(SAEError, match="no 'heads' list"):
        read_heads(tmp_path)
    (tmp_path / "heads.json").write_text("{broken")
    with pytest.raises(SAEError, match="heads.json"):
        read_heads(tmp_path)


def test_shipped_saes_load_and_fit_the_default_model():
    folder = shipped_sae_dir("smollm2-135m")
    assert folder is not None and is_sae_folder(folder)
    assert shipped_sae_dir("no-such-model") is None
    saes = load_saes(folder)
    assert saes and all(h.startswith("layers.") for h in saes)
    for hp, sae in saes.items():
        sae.check_compatible(64, layer=int(hp.split(".")[1]))  # SmolLM2-135M: head_dim 64
    heads = read_heads(folder)
    assert heads and {h[0] for h in heads} <= set(saes)
