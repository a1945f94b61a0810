import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from s3_retriever.sae import (
    SAEConfig,
    SAEError,
    TopKSAE,
    _SelectedPreacts,
    _training_losses,
    evaluate_sae,
    load_saes,
    save_saes,
    train_sae,
)

D_IN = 64


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The test machine's 2 cores are shared; one thread avoids OpenMP contention stalls.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _synthetic(n: int, seed: int = 0, m: int = 256, active: int = 4) -> torch.Tensor:
    """Sparse non-negative combinations of m fixed random unit directions, plus small noise."""
    dirs = torch.randn(m, D_IN, generator=torch.Generator().manual_seed(1234))
    dirs /= dirs.norm(dim=1, keepdim=True)
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(0, m, (n, active), generator=g)
    w = torch.rand(n, active, generator=g) + 0.5
    return (w.unsqueeze(-1) * dirs[which]).sum(1) + 0.01 * torch.randn(n, D_IN, generator=g)


def _small_sae(**kw) -> TopKSAE:
    cfg = dict(d_in=8, num_latents=32, k=4, hookpoint="layers.2", layer=2)
    cfg.update(kw)
    return TopKSAE(SAEConfig(**cfg), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def data():
    x = _synthetic(20_000)
    # Keys and queries on very different scales/offsets, as in a real attention head.
    return {"keys": 3.0 * x + 0.3, "queries": 0.5 * _synthetic(20_000, seed=1)}


@pytest.fixture(scope="module")
def trained(data):
    return train_sae(
        data["keys"], data["queries"], num_latents=512, k=8, hookpoint="layers.17", layer=17,
        steps=200, batch_size=512, lr=1e-2, show_progress=False,
    )


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


@pytest.mark.parametrize("shape", [(8,), (5, 8), (2, 3, 8), (0, 8)])
def test_encode_decode_shapes(shape):
    sae = _small_sae()
    acts, ids = sae.encode(torch.randn(shape))
    assert acts.shape == ids.shape == (*shape[:-1], 4)
    assert acts.dtype == torch.float32 and ids.dtype == torch.int64
    assert sae.decode(acts, ids).shape == shape
    assert sae(torch.randn(shape)).shape == shape


def test_encode_no_grad_and_sorted():
    sae = _small_sae()
    sae.train()
    acts, _ = sae.encode(torch.randn(20, 8))
    assert not acts.requires_grad and not sae(torch.randn(3, 8)).requires_grad
    assert (acts >= 0).all() and (acts[:, :-1] >= acts[:, 1:]).all()


def test_decode_matches_dense():
    sae = _small_sae()
    with torch.no_grad():
        sae.b_dec.normal_()
    acts, ids = sae.encode(torch.randn(6, 8))
    dense = torch.zeros(6, 32).scatter(1, ids, acts)
    torch.testing.assert_close(sae.decode(acts, ids), dense @ sae.W_dec + sae.b_dec)


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


# --- training ----------------------------------------------------------------------------


def test_training_reaches_low_fvu(trained, data):
    stats = trained.cfg.train_stats
    assert stats["steps"] == 200 and 0.0 <= stats["dead_fraction"] <= 1.0
    assert stats["fvu"] < 0.15
    for kind, name in (("key", "keys"), ("query", "queries")):
        r = evaluate_sae(trained, data[name], kind=kind)
        assert r["fvu"] < 0.15, (kind, r)
        assert r["n"] == 20_000 and 0.0 <= r["dead_fraction"] < 1.0
        assert 0 < r["mean_density"] <= 8 / 512 + 1e-9
    assert not any(p.requires_grad for p in trained.parameters())


def test_scales_are_rms_norms(trained, data):
    for kind, name in (("key", "keys"), ("query", "queries")):
        x = data[name]
        expect = x.double().pow(2).sum(1).mean().sqrt().item()
        assert getattr(trained.cfg, kind + "_scale") == pytest.approx(expect, rel=1e-6)


def test_kind_round_trip_after_training(trained, data):
    x = data["keys"][:500]
    x_hat = trained.decode(*trained.encode(x, "key"), "key")
    rel = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert rel < 0.15
    # Without the key scale the SAE sees vectors ~7x too large: worse.
    assert evaluate_sae(trained, x)["fvu"] > rel + 0.05


def test_evaluate_matches_manual(data):
    sae = _small_sae(d_in=D_IN, num_latents=64, k=4)
    x = data["keys"][:300]
    r = evaluate_sae(sae, x, batch_size=128)
    x_hat = sae(x)
    fvu = ((x - x_hat).double().pow(2).sum() / (x.double() - x.double().mean(0)).pow(2).sum())
    assert r["fvu"] == pytest.approx(fvu.item(), rel=1e-5)
    acts, ids = sae.encode(x)
    counts = torch.bincount(ids[acts > 0], minlength=64)
    assert r["dead_fraction"] == pytest.approx((counts == 0).float().mean().item())
    assert r["mean_density"] == pytest.approx(counts.sum().item() / (300 * 64))
    with pytest.raises(SAEError, match="empty"):
        evaluate_sae(sae, x[:0])


def test_training_is_deterministic(data):
    kw = dict(num_latents=64, k=4, hookpoint="h", steps=15, batch_size=256, show_progress=False)
    a = train_sae(data["keys"][:2000], data["queries"][:1000], seed=3, **kw)
    b = train_sae(data["keys"][:2000], data["queries"][:1000], seed=3, **kw)
    c = train_sae(data["keys"][:2000], data["queries"][:1000], seed=4, **kw)
    assert a.content_hash() == b.content_hash()
    assert a.content_hash() != c.content_hash()


def test_train_progress_bar_and_defaults(data, capsys):
    sae = train_sae(data["keys"][:1000], num_latents=32, k=4, hookpoint="h", epochs=0.5,
                    batch_size=100)
    assert sae.cfg.train_stats["steps"] == 5
    assert sae.cfg.query_scale == 1.0 and sae.cfg.train_stats["n_queries"] == 0
    assert "SAE h" in capsys.readouterr().err


def test_train_bad_input():
    x = torch.randn(100, 8)
    with pytest.raises(SAEError, match="keys is empty"):
        train_sae(x[:0], num_latents=32, k=4, hookpoint="h")
    with pytest.raises(SAEError, match="queries has d=4"):
        train_sae(x, torch.randn(10, 4), num_latents=32, k=4, hookpoint="h")
    with pytest.raises(SAEError, match="k=64"):
        train_sae(x, num_latents=32, k=64, hookpoint="h", steps=1, show_progress=False)
    with pytest.raises(SAEError, match="non-finite"):
        train_sae(torch.full((4, 8), float("nan")), num_latents=32, k=4, hookpoint="h")
    with pytest.raises(SAEError, match="queries are all zero"):
        train_sae(x, torch.zeros(4, 8), num_latents=32, k=4, hookpoint="h")


def test_selected_preacts_gradient_matches_dense():
    g = torch.Generator().manual_seed(0)
    x_in = torch.randn(12, 8, generator=g, requires_grad=True)
    W = torch.randn(8, 32, generator=g, requires_grad=True)
    b = torch.randn(32, generator=g, requires_grad=True)
    ids = torch.randint(0, 32, (12, 5), generator=g)
    w_out = torch.randn(12, 5, generator=g)
    dense = (x_in @ W + b).gather(1, ids)
    ref = torch.autograd.grad((dense * w_out).sum(), (x_in, W, b))
    vals = dense.detach()
    got = torch.autograd.grad((_SelectedPreacts.apply(x_in, W, b, ids, vals) * w_out).sum(),
                              (x_in, W, b))
    for r, o in zip(ref, got, strict=True):
        torch.testing.assert_close(o, r)


def test_auxk_loss_gives_dead_latents_gradient(data):
    sae = TopKSAE(SAEConfig(d_in=D_IN, num_latents=256, k=4, hookpoint="h"),
                  generator=torch.Generator().manual_seed(0))
    x = data["keys"][:256] / 10
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0))
        sae.b_enc.fill_(0.1)  # every latent has some positive pre-activations
        ids = sae.encode(x)[1]
    dead = torch.ones(256, dtype=torch.bool)
    dead[ids.unique()] = False  # dead = never selected by the main top-k on this batch
    assert dead.sum() > 0

    out = _training_losses(sae, x, None, 1.0)
    assert "auxk" not in out
    out["fvu"].backward()
    assert sae.W_dec.grad[dead].abs().sum() == 0 and sae.W_enc.grad[:, dead].abs().sum() == 0
    sae.zero_grad()

    out = _training_losses(sae, x, dead, 1.0)
    assert torch.isfinite(out["auxk"]) and out["auxk"] > 0
    (out["fvu"] + out["auxk"] / 32).backward()
    assert sae.W_dec.grad[dead].abs().sum(1).gt(0).any()
    assert sae.W_enc.grad[:, dead].abs().sum(0).gt(0).any()
    assert sae.b_enc.grad[dead].abs().gt(0).any()


def test_auxk_training_runs_and_tracks_dead(data):
    x = data["keys"][:4000]
    sae = train_sae(x, num_latents=256, k=4, hookpoint="h", steps=40, batch_size=256,
                    dead_after=256, auxk_alpha=1 / 32, show_progress=False)
    stats = sae.cfg.train_stats
    assert stats["dead_after"] == 256 and 0.0 <= stats["dead_fraction"] <= 1.0
    assert all(torch.isfinite(p).all() for p in sae.parameters())
    norms = sae.W_dec.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_decoder_rows_unit_norm_after_training(trained):
    norms = trained.W_dec.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


# --- save / load -------------------------------------------------------------------------


def test_save_load_round_trip(trained, data, tmp_path):
    folder = trained.save(tmp_path / "sae")
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae.safetensors"]
    loaded = TopKSAE.load(folder)
    assert loaded.cfg == trained.cfg
    assert loaded.content_hash() == trained.content_hash()
    x = data["queries"][:200]
    a1, i1 = trained.encode(x, "query")
    a2, i2 = loaded.encode(x, "query")
    assert torch.equal(i1, i2) and torch.equal(a1, a2)
    loaded.check_compatible(D_IN, layer=17)
    half = TopKSAE.load(folder, dtype=torch.bfloat16)
    assert half.W_enc.dtype == torch.bfloat16
    assert half.encode(x, "query")[0].dtype == torch.float32


def test_content_hash_changes_with_weights():
    sae = _small_sae()
    h = sae.content_hash()
    with torch.no_grad():
        sae.b_enc[0] += 1e-3
    assert sae.content_hash() != h


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
    del tensors["b_dec"]
    save_file(tensors, str(folder / "sae.safetensors"))
    with pytest.raises(SAEError, match="missing tensor"):
        TopKSAE.load(folder)


def test_load_missing_file(tmp_path):
    folder = _small_sae().save(tmp_path / "s")
    (folder / "sae.safetensors").unlink()
    with pytest.raises(SAEError, match="missing.*sae.safetensors"):
        TopKSAE.load(folder)


def test_save_load_saes(tmp_path):
    saes = {h: _small_sae(hookpoint=h, layer=i) for i, h in enumerate(["layers.3", "layers.10"])}
    save_saes(saes, tmp_path / "saes")
    loaded = load_saes(tmp_path / "saes")
    assert sorted(loaded) == ["layers.10", "layers.3"]
    for h, sae in saes.items():
        assert loaded[h].content_hash() == sae.content_hash()
    single = load_saes(tmp_path / "saes" / "layers.3")
    assert list(single) == ["layers.3"]
    with pytest.raises(SAEError, match="differs"):
        save_saes({"layers.4": saes["layers.3"]}, tmp_path / "other")


def test_load_saes_empty_or_missing(tmp_path):
    with pytest.raises(SAEError, match="no SAE found"):
        load_saes(tmp_path)
    (tmp_path / "junk").mkdir()
    with pytest.raises(SAEError, match="no SAE found"):
        load_saes(tmp_path)
    with pytest.raises(SAEError, match="not found"):
        load_saes(tmp_path / "nope")


def test_sparse_decode_gradient_flows():
    W = torch.randn(10, 4, requires_grad=True)
    acts = torch.rand(3, 2, requires_grad=True)
    ids = torch.tensor([[0, 1], [2, 3], [4, 5]])
    F.embedding_bag(ids, W, per_sample_weights=acts, mode="sum").sum().backward()
    assert W.grad[:6].abs().sum() > 0 and W.grad[6:].abs().sum() == 0
