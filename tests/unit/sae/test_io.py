"""SAE folders: save_saes / load_saes, is_sae_folder, read_heads, the SAEs shipped in the
package, and the EleutherAI sparsify converters."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from s3_retriever.errors import OutputExistsError, SAEError
from s3_retriever.sae.coder import SAEConfig, TopKSAE
from s3_retriever.sae.io import (
    export_sparsify,
    import_sparsify,
    is_sae_folder,
    load_saes,
    read_heads,
    save_saes,
    shipped_sae_dir,
)


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


# ------------------------------------------------------------------ EleutherAI sparsify
# What sparsify (github.com/EleutherAI/sparsify, sparse_coder.py / config.py) writes:
# SparseCoder.save_to_disk dumps {**SparseCoderConfig.to_dict(), "d_in": d_in} to cfg.json and
# the module's state_dict (nn.Linear "encoder" [num_latents, d_in], W_dec, b_dec) with
# safetensors' save_model, no metadata; load_from_disk pops d_in, drops unknown cfg fields
# and loads the tensors strictly.
SPARSIFY_CFG_FIELDS = {"activation", "expansion_factor", "normalize_decoder", "num_latents",
                       "k", "multi_topk", "skip_connection", "transcode"}


def _trained_like(sae: TopKSAE, seed: int) -> TopKSAE:
    """Non-zero biases and an encoder that is not the decoder's transpose."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in (sae.W_enc, sae.b_enc, sae.b_dec):
            t.copy_(torch.randn(t.shape, generator=g) * 0.5)
    return sae


def _scaled_saes() -> dict[str, TopKSAE]:
    saes = {}
    for i, (hp, layer) in enumerate((("layers.3", 3), ("layers.10", 10))):
        cfg = SAEConfig(d_in=8, num_latents=32, k=4, hookpoint=hp, layer=layer,
                        key_scale=2.5, query_scale=0.75, model_id="m", trained_on="t",
                        train_stats={"fvu": 0.1})
        saes[hp] = _trained_like(TopKSAE(cfg, generator=torch.Generator().manual_seed(i)), i)
    return saes


def _write_sparsify(folder, d_in=8, num_latents=32, k=4, seed=0, **cfg_changes):
    """A hookpoint folder exactly as sparsify's SparseCoder.save_to_disk writes it."""
    g = torch.Generator().manual_seed(seed)
    tensors = {"encoder.weight": torch.randn(num_latents, d_in, generator=g),
               "encoder.bias": torch.randn(num_latents, generator=g) * 0.3,
               "W_dec": torch.randn(num_latents, d_in, generator=g),
               "b_dec": torch.randn(d_in, generator=g) * 0.3}
    cfg = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True,
           "num_latents": num_latents, "k": k, "multi_topk": False, "skip_connection": False,
           "transcode": False, **cfg_changes, "d_in": d_in}
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(folder / "sae.safetensors"))
    return tensors


def _sparsify_encode(t, x, k):
    """sparsify's SparseCoder.encode (fused_encoder, activation "topk"), sorted by activation."""
    pre = torch.relu(torch.nn.functional.linear(x - t["b_dec"], t["encoder.weight"],
                                                t["encoder.bias"]))
    return pre.topk(k, dim=-1, sorted=True)


def test_sparsify_round_trip_gives_the_same_saes(tmp_path):
    saes = _scaled_saes()
    export_sparsify(saes, tmp_path / "sp", extra_files={"heads.json": b'{"heads": []}'})
    back = import_sparsify(tmp_path / "sp")
    assert list(back) == ["layers.10", "layers.3"]
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(7))
    for hp, sae in saes.items():
        assert back[hp].content_hash() == sae.content_hash()  # config, scales, tensors
        for kind in (None, "key", "query"):
            acts, ids = sae.encode(x, kind)
            acts2, ids2 = back[hp].encode(x, kind)
            assert torch.equal(ids, ids2) and torch.equal(acts, acts2)
            assert torch.equal(sae.decode(acts, ids, kind), back[hp].decode(acts2, ids2, kind))
    # explicit arguments win over the stored ones
    one = import_sparsify(tmp_path / "sp" / "layers.3", key_scale=1.0, layer=4)["layers.3"]
    assert (one.cfg.key_scale, one.cfg.query_scale, one.cfg.layer) == (1.0, 0.75, 4)
    assert json.loads((tmp_path / "sp" / "heads.json").read_text()) == {"heads": []}


def test_export_sparsify_writes_what_sparsify_loads(tmp_path):
    saes = _scaled_saes()
    export_sparsify(saes, tmp_path / "sp")
    assert sorted(p.name for p in (tmp_path / "sp").iterdir()) == ["layers.10", "layers.3"]
    sub = tmp_path / "sp" / "layers.3"
    assert sorted(p.name for p in sub.iterdir()) == ["cfg.json", "sae.safetensors"]
    cfg = json.loads((sub / "cfg.json").read_text())
    d_in = cfg.pop("d_in")
    assert d_in == 8 and set(cfg) == SPARSIFY_CFG_FIELDS
    assert cfg["num_latents"] == 32 and cfg["k"] == 4 and cfg["activation"] == "topk"
    assert not (cfg["transcode"] or cfg["skip_connection"])
    t = load_file(str(sub / "sae.safetensors"))
    assert {n: tuple(v.shape) for n, v in t.items()} == {
        "encoder.weight": (32, 8), "encoder.bias": (32,), "W_dec": (32, 8), "b_dec": (8,)}
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    want_acts, want_ids = _sparsify_encode(t, x, 4)
    acts, ids = saes["layers.3"].encode(x)
    assert torch.equal(ids, want_ids) and torch.allclose(acts, want_acts, atol=1e-6)
    assert is_sae_folder(tmp_path / "sp")  # so --overwrite may replace it
    with pytest.raises(OutputExistsError, match="overwrite"):
        export_sparsify(saes, tmp_path / "sp")
    with pytest.raises(SAEError, match="sparsify"):  # not silently misread as ours
        load_saes(tmp_path / "sp")


def test_import_a_folder_sparsify_wrote(tmp_path):
    t = _write_sparsify(tmp_path / "sp" / "layers.6", seed=1)
    _write_sparsify(tmp_path / "sp" / "layers.7", seed=2)
    (tmp_path / "sp" / "README.md").write_text("sparsify checkpoint")
    saes = import_sparsify(tmp_path / "sp", key_scale=2.0)
    assert list(saes) == ["layers.6", "layers.7"]
    sae = saes["layers.6"]
    assert (sae.cfg.hookpoint, sae.cfg.layer, sae.cfg.d_in, sae.cfg.num_latents, sae.cfg.k) == (
        "layers.6", 6, 8, 32, 4)
    assert (sae.cfg.key_scale, sae.cfg.query_scale) == (2.0, 1.0)
    x = torch.randn(10, 8, generator=torch.Generator().manual_seed(3))
    want_acts, want_ids = _sparsify_encode(t, x, 4)
    acts, ids = sae.encode(x)
    assert torch.equal(ids, want_ids) and torch.allclose(acts, want_acts, atol=1e-6)
    want_x = (acts[..., None] * t["W_dec"][ids]).sum(-2) + t["b_dec"]  # sparsify's decode
    assert torch.allclose(sae.decode(acts, ids), want_x, atol=1e-5)
    acts_k, ids_k = sae.encode(2.0 * x, kind="key")  # keys are divided by key_scale first
    assert torch.equal(ids_k, ids) and torch.allclose(acts_k, acts, atol=1e-6)
    # num_latents 0: expansion_factor * d_in, as sparsify reads it; other hookpoint names
    _write_sparsify(tmp_path / "e" / "layers.2.mlp", num_latents=16, k=2, expansion_factor=2)
    json_cfg = json.loads((tmp_path / "e" / "layers.2.mlp" / "cfg.json").read_text())
    json_cfg["num_latents"] = 0
    (tmp_path / "e" / "layers.2.mlp" / "cfg.json").write_text(json.dumps(json_cfg))
    e = import_sparsify(tmp_path / "e" / "layers.2.mlp")["layers.2.mlp"]
    assert (e.cfg.num_latents, e.cfg.layer) == (16, None)
    # bf16 checkpoints convert too
    bf = load_file(str(tmp_path / "sp" / "layers.7" / "sae.safetensors"))
    save_file({n: v.to(torch.bfloat16) for n, v in bf.items()},
              str(tmp_path / "sp" / "layers.7" / "sae.safetensors"))
    assert import_sparsify(tmp_path / "sp" / "layers.7")["layers.7"].W_enc.dtype == torch.float32


def test_import_sparsify_refuses_what_it_cannot_convert(tmp_path):
    save_saes(_saes(), tmp_path / "ours")
    with pytest.raises(SAEError, match="s3-retriever SAE folder"):
        import_sparsify(tmp_path / "ours")
    odd = tmp_path / "odd" / "layers.1"
    odd.mkdir(parents=True)
    (odd / "cfg.json").write_text(json.dumps({"d_in": 8}))
    save_file({"weight": torch.zeros(8)}, str(odd / "sae.safetensors"))
    for where in (tmp_path / "odd", odd):
        with pytest.raises(SAEError, match="neither an EleutherAI sparsify SAE .* nor an "
                                           "s3-retriever one"):
            import_sparsify(where)
    with pytest.raises(SAEError, match="cfg.json: SAE config: missing field"):
        load_saes(tmp_path / "odd")
    (odd / "sae.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(SAEError, match="corrupt or truncated"):
        import_sparsify(odd)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(SAEError, match="no SAE found"):
        import_sparsify(tmp_path / "junk")
    with pytest.raises(SAEError, match="not found"):
        import_sparsify(tmp_path / "nope")
    cases = [({"transcode": True}, "transcode=true is not supported"),
             ({"skip_connection": True}, "skip_connection=true is not supported"),
             ({"activation": "groupmax"}, "activation 'groupmax' is not supported"),
             ({"k": 64}, "k=64 must be <= num_latents=32"),
             ({"d_in": 4}, "encoder.weight has shape \\(32, 8\\) but cfg.json"),
             ({"d_in": "8"}, "d_in must be a non-negative int")]
    for i, (change, message) in enumerate(cases):
        _write_sparsify(tmp_path / f"bad{i}" / "layers.1")
        cfg_path = tmp_path / f"bad{i}" / "layers.1" / "cfg.json"
        cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), **change}))
        with pytest.raises(SAEError, match=message):
            import_sparsify(tmp_path / f"bad{i}")
    _write_sparsify(tmp_path / "skip" / "layers.1")
    t = load_file(str(tmp_path / "skip" / "layers.1" / "sae.safetensors"))
    save_file({**t, "W_skip": torch.zeros(8, 8)},
              str(tmp_path / "skip" / "layers.1" / "sae.safetensors"))
    with pytest.raises(SAEError, match="W_skip"):
        import_sparsify(tmp_path / "skip")
    _write_sparsify(tmp_path / "two" / "layers.1")
    _write_sparsify(tmp_path / "two" / "layers.2")
    with pytest.raises(SAEError, match="holds 2"):
        import_sparsify(tmp_path / "two", layer=1)
    with pytest.raises(SAEError, match="key_scale must be a positive"):
        import_sparsify(tmp_path / "two", key_scale=0)
    with pytest.raises(SAEError, match="extra file"):
        export_sparsify(_saes(), tmp_path / "x", extra_files={"notes.txt": b""})
    assert not (tmp_path / "x").exists()
