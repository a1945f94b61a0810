"""SAE training: train_sae learns a sparse signal, evaluate_sae, the AuxK loss, collect_qk."""

import pytest
import torch

from s3_retriever.errors import SAEError
from s3_retriever.model.hooks import capture_qk
from s3_retriever.sae.coder import SAEConfig, TopKSAE
from s3_retriever.sae.train import (
    _SelectedPreacts,
    _training_losses,
    collect_qk,
    default_dead_after,
    default_lr,
    evaluate_sae,
    token_chunks,
    train_sae,
)
from tests.helpers import TEXTS, tiny_lm

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


def _weights(sae: TopKSAE) -> dict[str, torch.Tensor]:
    return {n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}


def _same_weights(a: TopKSAE, b: TopKSAE) -> bool:
    wa, wb = _weights(a), _weights(b)
    return all(torch.equal(wa[n], wb[n]) for n in wa)


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


# --- train_sae ---------------------------------------------------------------------------


def test_training_learns_the_sparse_signal(trained, data):
    stats = trained.cfg.train_stats
    assert stats["steps"] == 200 and stats["n_keys"] == stats["n_queries"] == 20_000
    assert stats["fvu"] < 0.15
    # the data is made of 256 directions: a working SAE keeps at least that many latents alive
    assert stats["dead_fraction"] < 0.5
    untrained = TopKSAE(trained.cfg, generator=torch.Generator().manual_seed(0))
    for kind, name in (("key", "keys"), ("query", "queries")):
        r = evaluate_sae(trained, data[name], kind=kind)
        assert r["fvu"] < 0.15, (kind, r)
        assert evaluate_sae(untrained, data[name], kind=kind)["fvu"] > 0.5  # learnt, not given
        assert r["n"] == 20_000 and r["dead_fraction"] < 0.5
        # almost every vector fills all k = 8 slots with positive activations
        assert 0.95 * 8 / 512 < r["mean_density"] <= 8 / 512 + 1e-9
    assert not any(p.requires_grad for p in trained.parameters()) and not trained.training


def test_held_out_vectors_reconstruct_as_well(trained):
    held = 3.0 * _synthetic(2000, seed=7) + 0.3  # same directions, vectors never trained on
    assert evaluate_sae(trained, held, kind="key")["fvu"] < 0.15


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


def test_decoder_rows_unit_norm_after_training(trained):
    norms = trained.W_dec.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_training_is_deterministic(data):
    kw = dict(num_latents=64, k=4, hookpoint="h", steps=15, batch_size=256, show_progress=False)
    a = train_sae(data["keys"][:2000], data["queries"][:1000], seed=3, **kw)
    b = train_sae(data["keys"][:2000], data["queries"][:1000], seed=3, **kw)
    c = train_sae(data["keys"][:2000], data["queries"][:1000], seed=4, **kw)
    assert a.content_hash() == b.content_hash()
    assert not _same_weights(a, c)


def test_train_progress_bar_and_defaults(data, capsys):
    sae = train_sae(data["keys"][:1000], num_latents=32, k=4, hookpoint="h", epochs=0.5,
                    batch_size=100)
    stats = sae.cfg.train_stats
    assert stats["steps"] == 5  # ceil(0.5 * 1000 / 100)
    assert stats["lr"] == default_lr(32) and stats["dead_after"] == default_dead_after(32, 4, 100)
    assert sae.cfg.query_scale == 1.0 and stats["n_queries"] == 0
    assert "SAE h" in capsys.readouterr().err


def test_default_hyper_parameters():
    assert default_lr(16384) == pytest.approx(2e-4)
    assert default_lr(4096) == pytest.approx(4e-4)  # 4x fewer latents: 2x the rate
    assert default_dead_after(8192, 8, 512) == 10 * 8192 // 8  # 10x a uniform latent's gap
    assert default_dead_after(64, 16, 512) == 10 * 512  # never before 10 batches


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
    for kw, match in (({"steps": 0}, "steps"), ({"batch_size": 0}, "batch_size"),
                      ({"epochs": 0}, "epochs"), ({"auxk_alpha": -1.0}, "auxk_alpha"),
                      ({"dead_after": 0}, "dead_after")):
        with pytest.raises(SAEError, match=match):
            train_sae(x, num_latents=32, k=4, hookpoint="h", show_progress=False, **kw)


# --- evaluate_sae ------------------------------------------------------------------------


def test_evaluate_matches_manual(data):
    sae = TopKSAE(SAEConfig(d_in=D_IN, num_latents=64, k=4, hookpoint="h", key_scale=3.0),
                  generator=torch.Generator().manual_seed(0))
    x = data["keys"][:300]
    r = evaluate_sae(sae, x, batch_size=128)  # three batches, the last one short
    x_hat = sae(x)
    fvu = ((x - x_hat).double().pow(2).sum() / (x.double() - x.double().mean(0)).pow(2).sum())
    assert r["fvu"] == pytest.approx(fvu.item(), rel=1e-5)
    acts, ids = sae.encode(x)
    counts = torch.bincount(ids[acts > 0], minlength=64)
    assert r["dead_fraction"] == pytest.approx((counts == 0).float().mean().item())
    assert r["mean_density"] == pytest.approx(counts.sum().item() / (300 * 64))
    # kind="key" measures in the original space, through the key scale
    x_hat_k = sae(x, kind="key")
    fvu_k = ((x - x_hat_k).double().pow(2).sum() / (x.double() - x.double().mean(0)).pow(2).sum())
    assert evaluate_sae(sae, x, kind="key")["fvu"] == pytest.approx(fvu_k.item(), rel=1e-5)
    with pytest.raises(SAEError, match="empty"):
        evaluate_sae(sae, x[:0])


def test_evaluate_perfect_reconstruction_has_zero_fvu():
    # one latent per axis: every vector with one positive coordinate is reconstructed exactly
    sae = TopKSAE(SAEConfig(d_in=4, num_latents=4, k=1, hookpoint="h"))
    with torch.no_grad():
        sae.W_dec.copy_(torch.eye(4))
        sae.W_enc.copy_(torch.eye(4))
    x = torch.eye(4).repeat(5, 1) * torch.arange(1, 21, dtype=torch.float32).unsqueeze(1)
    r = evaluate_sae(sae, x)
    assert r["fvu"] == pytest.approx(0.0, abs=1e-12)
    assert r["dead_fraction"] == 0.0 and r["mean_density"] == pytest.approx(1 / 4)


# --- the training pass: sparse backward and AuxK -----------------------------------------


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


def test_training_loss_is_the_fvu_of_the_topk_reconstruction(data):
    sae = TopKSAE(SAEConfig(d_in=D_IN, num_latents=128, k=4, hookpoint="h"),
                  generator=torch.Generator().manual_seed(0))
    x = data["keys"][:200] / 10
    out = _training_losses(sae, x, None, 2.0)
    x_hat = sae(x)  # the inference path: encode then decode
    want = (x_hat - x).pow(2).sum(-1).mean() / 2.0
    torch.testing.assert_close(out["fvu"].detach(), want)
    acts, ids = sae.encode(x)
    assert torch.equal(torch.sort(out["ids"], 1).values, torch.sort(ids, 1).values)


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


def test_auxk_acts_only_once_latents_are_dead(data):
    x = data["keys"][:4000]
    kw = dict(num_latents=256, k=4, hookpoint="h", steps=40, batch_size=256, lr=1e-2,
              show_progress=False)
    plain = train_sae(x, auxk_alpha=0.0, dead_after=256, **kw)
    # no latent is ever silent for 10**9 vectors: AuxK never runs, the weights are plain's
    never = train_sae(x, auxk_alpha=1 / 32, dead_after=10**9, **kw)
    assert never.cfg.train_stats["dead_fraction"] == 0.0
    assert _same_weights(never, plain)
    # silent for one batch counts as dead: AuxK runs and changes the training
    aux = train_sae(x, auxk_alpha=1 / 32, dead_after=256, **kw)
    stats = aux.cfg.train_stats
    assert stats["dead_after"] == 256 and stats["auxk_alpha"] == 1 / 32
    assert 0.0 < stats["dead_fraction"] < 0.5
    assert not _same_weights(aux, plain)
    assert all(torch.isfinite(p).all() for p in aux.parameters())
    norms = aux.W_dec.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    assert evaluate_sae(aux, x, kind="key")["fvu"] < 0.9 * evaluate_sae(
        TopKSAE(aux.cfg, generator=torch.Generator().manual_seed(0)), x, kind="key")["fvu"]


# --- collecting keys and queries from a model --------------------------------------------


def test_token_chunks(lm):
    small = tiny_lm(lm.tokenizer)
    chunks = token_chunks(small, TEXTS, 16)
    sep = lm.tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    flat = [t for c in chunks for t in c]
    want = []
    for t in TEXTS:
        want += lm.tokenizer(t, add_special_tokens=False)["input_ids"] + sep
    assert flat == want
    assert all(len(c) == 16 for c in chunks[:-1]) and 0 < len(chunks[-1]) <= 16
    capped = token_chunks(small, TEXTS, 16, max_tokens=20)
    assert [t for c in capped for t in c] == want[:20] and [len(c) for c in capped] == [16, 4]


def test_collect_qk_equals_the_captured_vectors_after_the_sink(lm):
    small = tiny_lm(lm.tokenizer)
    spec, skip = small.spec, len(small.sink_ids)
    qk = collect_qk(small, TEXTS[:2], [0, 2], chunk_tokens=12, show_progress=False)
    chunks = token_chunks(small, TEXTS[:2], 12)
    assert qk.n_tokens == sum(len(c) for c in chunks)
    for layer in (0, 2):
        assert qk.keys[layer].shape == (qk.n_tokens * spec.n_kv_heads, spec.head_dim)
        assert qk.queries[layer].shape == (qk.n_tokens * spec.n_heads, spec.head_dim)
        assert qk.keys[layer].dtype == torch.float32
    # the second chunk's vectors, recomputed: each chunk runs after the sink prefix
    start = len(chunks[0])
    cap = capture_qk(small.model, small.input_tensor(chunks[1]), layers=[2], queries=True)
    n = len(chunks[1])
    torch.testing.assert_close(
        qk.keys[2][start * spec.n_kv_heads:(start + n) * spec.n_kv_heads],
        cap.keys[2][0, skip:].reshape(-1, spec.head_dim))
    torch.testing.assert_close(
        qk.queries[2][start * spec.n_heads:(start + n) * spec.n_heads],
        cap.queries[2][0, skip:].reshape(-1, spec.head_dim))
