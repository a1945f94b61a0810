"""TopKSAE and SAEConfig: validation, encode/decode against a dense reference, one folder's files."""

import json

import pytest
import torch
from safetensors.torch import save_file

from s3_retriever.errors import SAEError
from s3_retriever.sae.coder import SAEConfig, TopKSAE, _sparse_decode
from s3_retriever.sae.kernels import naive_topk_encode


def _small_sae(**kw) -> TopKSAE:
    cfg = dict(d_in=8, num_latents=32, k=4, hookpoint="layers.2", layer=2)
    cfg.update(kw)
    return TopKSAE(SAEConfig(**cfg), generator=torch.Generator().manual_seed(0))


def _random_biases(sae: TopKSAE, seed: int = 1) -> TopKSAE:
    """Non-zero biases, so a coder that ignores b_enc or b_dec is caught."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(sae.d_in, generator=g))
        sae.b_enc.copy_(0.3 * torch.randn(sae.num_latents, generator=g))
    return sae


# --- config ------------------------------------------------------------------------------


def test_config_round_trip():
    cfg = SAEConfig(d_in=64, num_latents=128, k=8, hookpoint="layers.1", train_stats={"a": 1})
    assert SAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"k": 40}, "k=40 must be <= num_latents=32"),
        ({"k": 0}, "k must be a positive int"),
        ({"d_in": -1}, "d_in"),
        ({"num_latents": 2.5}, "num_latents"),
        ({"hookpoint": ""}, "hookpoint"),
        ({"hookpoint": "a/b"}, "path separators"),
        ({"key_scale": 0.0}, "key_scale"),
        ({"query_scale": float("nan")}, "query_scale"),
        ({"layer": -3}, "layer"),
        ({"version": 99}, "version"),
    ],
)
def test_bad_config(kw, match):
    cfg = dict(d_in=8, num_latents=32, k=4, hookpoint="h")
    cfg.update(kw)
    with pytest.raises(SAEError, match=match):
        SAEConfig(**cfg)


def test_from_dict_unknown_and_missing_fields():
    with pytest.raises(SAEError, match="unknown"):
        SAEConfig.from_dict({"d_in": 8, "num_latents": 32, "k": 4, "hookpoint": "h", "x": 1})
    with pytest.raises(SAEError, match="missing"):
        SAEConfig.from_dict({"d_in": 8, "num_latents": 32, "hookpoint": "h"})


# --- encode / decode ---------------------------------------------------------------------


def test_fresh_sae_is_tied_and_unit_norm():
    sae = _small_sae()
    norms = sae.W_dec.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    assert torch.equal(sae.W_enc, sae.W_dec.t())
    assert not sae.b_enc.any() and not sae.b_dec.any()


@pytest.mark.parametrize("shape", [(8,), (5, 8), (2, 3, 8), (0, 8)])
def test_encode_decode_shapes(shape):
    sae = _small_sae()
    acts, ids = sae.encode(torch.randn(shape))
    assert acts.shape == ids.shape == (*shape[:-1], 4)
    assert acts.dtype == torch.float32 and ids.dtype == torch.int64
    assert sae.decode(acts, ids).shape == shape
    assert sae(torch.randn(shape)).shape == shape


def test_encode_equals_dense_reference():
    """encode(x) is top-k of relu((x - b_dec) @ W_enc + b_enc), exactly, for any lead shape."""
    sae = _random_biases(_small_sae())
    x = torch.randn(4, 5, 8, generator=torch.Generator().manual_seed(2))
    acts, ids = sae.encode(x)
    flat = x.reshape(-1, 8)
    ref_acts, ref_ids = naive_topk_encode(flat - sae.b_dec, sae.W_enc, sae.b_enc, 4)
    assert torch.equal(ids.reshape(-1, 4), ref_ids)
    torch.testing.assert_close(acts.reshape(-1, 4), ref_acts)
    # an independent check of the values: gather the dense activations at the chosen ids
    dense = torch.relu((flat - sae.b_dec) @ sae.W_enc + sae.b_enc)
    torch.testing.assert_close(acts.reshape(-1, 4), dense.topk(4, dim=1).values)
    torch.testing.assert_close(dense.gather(1, ids.reshape(-1, 4)), acts.reshape(-1, 4))


def test_encode_runs_without_grad_even_in_train_mode():
    sae = _small_sae()
    sae.train()
    x = torch.randn(20, 8, requires_grad=True)
    acts, _ = sae.encode(x)
    assert not acts.requires_grad and not sae(x).requires_grad


def test_decode_matches_dense():
    sae = _random_biases(_small_sae())
    acts, ids = sae.encode(torch.randn(6, 8))
    dense = torch.zeros(6, 32).scatter(1, ids, acts)
    torch.testing.assert_close(sae.decode(acts, ids), dense @ sae.W_dec + sae.b_dec)
    # decode takes codes of any k (e.g. fewer kept slots)
    torch.testing.assert_close(sae.decode(acts[:, :2], ids[:, :2]),
                               torch.zeros(6, 32).scatter(1, ids[:, :2], acts[:, :2])
                               @ sae.W_dec + sae.b_dec)


def test_sparse_decode_gradient_reaches_only_the_used_rows():
    W = torch.randn(10, 4, requires_grad=True)
    acts = torch.rand(3, 2, requires_grad=True)
    ids = torch.tensor([[0, 1], [2, 3], [4, 5]])
    out = _sparse_decode(ids, acts, W)
    torch.testing.assert_close(out, (acts.unsqueeze(-1) * W[ids]).sum(1))
    out.sum().backward()
    assert W.grad[:6].abs().sum() > 0 and W.grad[6:].abs().sum() == 0
    assert _sparse_decode(ids[:0], acts[:0], W).shape == (0, 4)


def test_kind_scaling():
    sae = _small_sae(key_scale=2.0, query_scale=0.5)
    with torch.no_grad():
        sae.b_dec.normal_()
    x = torch.randn(10, 8)
    a0, i0 = sae.encode(x)
    a1, i1 = sae.encode(2.0 * x, kind="key")
    a2, i2 = sae.encode(0.5 * x, kind="query")
    assert torch.equal(i0, i1) and torch.equal(i0, i2)
    torch.testing.assert_close(a0, a1)
    torch.testing.assert_close(a0, a2)
    torch.testing.assert_close(sae.decode(a0, i0, "key"), 2.0 * sae.decode(a0, i0))
    torch.testing.assert_close(sae.decode(a0, i0, "query"), 0.5 * sae.decode(a0, i0))


def test_bad_inputs():
    sae = _small_sae()
    with pytest.raises(SAEError, match="d_in=8"):
        sae.encode(torch.randn(3, 7))
    with pytest.raises(SAEError, match="kind"):
        sae.encode(torch.randn(3, 8), kind="value")
    with pytest.raises(SAEError, match="float"):
        sae.encode(torch.ones(3, 8, dtype=torch.long))
    with pytest.raises(SAEError, match="same"):
        sae.decode(torch.ones(3, 4), torch.ones(3, 5, dtype=torch.long))


def test_check_compatible():
    sae = _small_sae(hookpoint="layers.17", layer=17)
    sae.check_compatible(8, layer=17)
    sae.check_compatible(8)
    with pytest.raises(SAEError, match="SAE layers.17 expects d_in=8 but the model's head_dim is"):
        sae.check_compatible(128)
    with pytest.raises(SAEError, match="layer 17"):
        sae.check_compatible(8, layer=3)


# --- one SAE folder: save / load ---------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    sae = _random_biases(_small_sae(hookpoint="layers.17", layer=17, key_scale=3.0,
                                    query_scale=0.5))
    folder = sae.save(tmp_path / "sae")
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae.safetensors"]
    loaded = TopKSAE.load(folder)
    assert loaded.cfg == sae.cfg
    assert loaded.content_hash() == sae.content_hash()
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    x = torch.randn(50, 8)
    a1, i1 = sae.encode(x, "query")
    a2, i2 = loaded.encode(x, "query")
    assert torch.equal(i1, i2) and torch.equal(a1, a2)
    loaded.check_compatible(8, layer=17)
    half = TopKSAE.load(folder, dtype=torch.bfloat16)
    assert half.W_enc.dtype == torch.bfloat16
    assert half.encode(x, "query")[0].dtype == torch.float32


def test_content_hash_changes_with_weights_and_config():
    sae = _small_sae()
    h = sae.content_hash()
    assert _small_sae().content_hash() == h  # same seed, same SAE
    with torch.no_grad():
        sae.b_enc[0] += 1e-3
    assert sae.content_hash() != h
    assert _small_sae(trained_on="other text").content_hash() != h


def test_load_truncated_safetensors(tmp_path):
    folder = _small_sae().save(tmp_path / "s")
    path = folder / "sae.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(SAEError, match="sae.safetensors"):
        TopKSAE.load(folder)
    path.write_bytes(b"\x01")
    with pytest.raises(SAEError, match="sae.safetensors"):
        TopKSAE.load(folder)


def test_load_corrupt_cfg(tmp_path):
    folder = _small_sae().save(tmp_path / "s")
    (folder / "cfg.json").write_text("{not json")
    with pytest.raises(SAEError, match="cfg.json"):
        TopKSAE.load(folder)
    (folder / "cfg.json").write_text(json.dumps({"d_in": 8, "num_latents": 32, "k": 99,
                                                 "hookpoint": "layers.2"}))
    with pytest.raises(SAEError, match="cfg.json.*k=99"):
        TopKSAE.load(folder)


def test_load_cfg_disagrees_with_tensors(tmp_path):
    sae = _small_sae()
    folder = sae.save(tmp_path / "s")
    cfg = sae.cfg.to_dict()
    cfg["num_latents"] = 64
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEError, match=r"W_enc has shape \(8, 32\).*implies \(8, 64\)"):
        TopKSAE.load(folder)


def test_load_bad_tensors(tmp_path):
    sae = _small_sae()
    folder = sae.save(tmp_path / "s")
    tensors = {n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    tensors["b_dec"][0] = float("nan")
    save_file(tensors, str(folder / "sae.safetensors"))
    with pytest.raises(SAEError, match="b_dec has non-finite"):
        TopKSAE.load(folder)
    tensors["b_dec"][0] = 0.0
    save_file({**tensors, "extra": torch.zeros(1)}, str(folder / "sae.safetensors"))
    with pytest.raises(SAEError, match=r"unexpected tensor\(s\) \['extra'\]"):
        TopKSAE.load(folder)
    save_file({**tensors, "b_enc": torch.zeros(32, dtype=torch.int32)},
              str(folder / "sae.safetensors"))
    with pytest.raises(SAEError, match="b_enc has non-float dtype"):
        TopKSAE.load(folder)
    del tensors["b_dec"]
    save_file(tensors, str(folder / "sae.safetensors"))
    with pytest.raises(SAEError, match="missing tensor"):
        TopKSAE.load(folder)


def test_load_missing_file(tmp_path):
    folder = _small_sae().save(tmp_path / "s")
    (folder / "sae.safetensors").unlink()
    with pytest.raises(SAEError, match="missing.*sae.safetensors"):
        TopKSAE.load(folder)
