"""Train SAEs: collect a model's keys and queries of generic text, fit one Top-k SAE per
layer on both streams, measure it on held-out vectors, save it.

Example:
    >>> from s3_retriever.sae.train import train_model_saes
    >>> texts = ["Bread is made from flour, water and yeast.", "Tides follow the moon."]
    >>> report = train_model_saes("smollm2-135m", [17], "my_saes", texts=texts,
    ...                           num_latents=64, k=4, steps=20, show_progress=False)
    >>> sorted(report["layers.17"]["held_out"])
    ['keys', 'queries']
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from s3_retriever import storage
from s3_retriever.corpus import generic_corpus
from s3_retriever.errors import SAEError
from s3_retriever.model.hooks import QKHooks, hookpoint_name
from s3_retriever.model.loading import LoadedModel, load_model
from s3_retriever.sae.coder import SAEConfig, TopKSAE, _is_number, _sparse_decode
from s3_retriever.sae.io import is_sae_folder, save_saes
from s3_retriever.validate import is_int as _is_int

__all__ = ['collect_qk', 'evaluate_sae', 'train_model_saes', 'train_sae']


class _SelectedPreacts(torch.autograd.Function):
    """Pre-activations of the selected latents ``[n, m]``, with a sparse backward.

    Forward just returns the values already computed by the dense (no-grad) matmul.
    Backward touches only the ``n * m`` selected (row, latent) pairs, i.e. O(n * m * d) work
    instead of the O(n * D * d) of differentiating the dense ``x_in @ W_enc``.
    """

    @staticmethod
    def forward(ctx, x_in, W_enc, b_enc, ids, vals):
        ctx.save_for_backward(x_in, W_enc, ids)
        return vals

    @staticmethod
    def backward(ctx, g):
        x_in, W_enc, ids = ctx.saved_tensors
        d, D = W_enc.shape
        flat = ids.reshape(-1)
        g_x = None
        if ctx.needs_input_grad[0]:
            g_x = F.embedding_bag(ids, W_enc.t().contiguous(), per_sample_weights=g, mode="sum")
        outer = (g.unsqueeze(-1) * x_in.unsqueeze(1)).reshape(-1, d)
        g_W = x_in.new_zeros(D, d).index_add_(0, flat, outer).t()
        g_b = x_in.new_zeros(D).index_add_(0, flat, g.reshape(-1))
        return g_x, g_W, g_b, None, None

def _training_losses(
    sae: TopKSAE,
    x: torch.Tensor,
    dead: torch.Tensor | None,
    total_var: float,
) -> dict[str, torch.Tensor]:
    """One training forward pass on (already scaled) ``x`` ``[n, d_in]``.

    Returns ``fvu`` (reconstruction MSE / ``total_var``), ``ids`` / ``acts`` of the top-k,
    and ``auxk`` when ``dead`` (bool mask ``[D]``) marks any latent dead: the top
    ``min(d_in // 2, n_dead)`` dead latents reconstruct the detached residual, MSE divided
    by the residual's variance.
    """
    cfg = sae.cfg
    x_in = x - sae.b_dec
    n_dead = int(dead.sum()) if dead is not None else 0
    with torch.no_grad():
        pre = torch.addmm(sae.b_enc, x_in, sae.W_enc)
        vals, ids = pre.topk(cfg.k, dim=1, sorted=False)
        sel_ids, sel_vals = ids, vals
        if n_dead > 0:
            k_aux = min(max(cfg.d_in // 2, 1), n_dead)
            dead_idx = dead.nonzero().squeeze(1)
            aux_vals, local = pre.index_select(1, dead_idx).topk(k_aux, dim=1, sorted=False)
            aux_ids = dead_idx[local]
            sel_ids, sel_vals = torch.cat([ids, aux_ids], 1), torch.cat([vals, aux_vals], 1)
        del pre
    sel = F.relu(_SelectedPreacts.apply(x_in, sae.W_enc, sae.b_enc, sel_ids, sel_vals))
    acts = sel[:, : cfg.k]
    x_hat = _sparse_decode(ids, acts, sae.W_dec) + sae.b_dec
    fvu = (x_hat - x).pow(2).sum(-1).mean() / total_var
    out = {"fvu": fvu, "ids": ids, "acts": acts.detach()}
    if n_dead > 0:
        resid = (x - x_hat).detach()
        resid_var = (resid - resid.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
        resid_hat = _sparse_decode(aux_ids, sel[:, cfg.k :], sae.W_dec)
        out["auxk"] = (resid_hat - resid).pow(2).sum(-1).mean() / resid_var
    return out

def _rms_norm_and_mean(
    x: torch.Tensor, name: str, chunk: int = 1 << 18
) -> tuple[float, torch.Tensor]:
    """RMS vector norm and mean vector of ``x`` [n, d], in float64, chunked (x may be huge)."""
    sq = 0.0
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    for s in range(0, x.shape[0], chunk):
        c = x[s : s + chunk].to("cpu", torch.float64)
        sq += float(c.pow(2).sum())
        total += c.sum(0)
    if not math.isfinite(sq) or not torch.isfinite(total).all():
        raise SAEError(f"train_sae: {name} contains non-finite values")
    if sq == 0:
        raise SAEError(f"train_sae: {name} are all zero")
    return math.sqrt(sq / x.shape[0]), total / x.shape[0]

def _check_stream(x: torch.Tensor | None, name: str, d: int | None) -> None:
    if x is None:
        return
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise SAEError(f"train_sae: {name} must be a 2-D float tensor [n, d]")
    if x.shape[0] == 0:
        raise SAEError(f"train_sae: {name} is empty")
    if d is not None and x.shape[1] != d:
        raise SAEError(f"train_sae: {name} has d={x.shape[1]} but keys have d={d}")

class _Sampler:
    """Endless shuffled batches from one stream: a fresh permutation each pass."""

    def __init__(self, x: torch.Tensor, gen: torch.Generator) -> None:
        self.x, self.gen = x, gen
        self.perm = torch.randperm(x.shape[0], generator=gen)
        self.pos = 0

    def take(self, m: int) -> torch.Tensor:
        parts = []
        while m > 0:
            if self.pos == self.perm.numel():
                self.perm = torch.randperm(self.x.shape[0], generator=self.gen)
                self.pos = 0
            n = min(m, self.perm.numel() - self.pos)
            parts.append(self.perm[self.pos : self.pos + n])
            self.pos += n
            m -= n
        idx = parts[0] if len(parts) == 1 else torch.cat(parts)
        return self.x[idx.to(self.x.device)]

def default_lr(num_latents: int) -> float:
    """Adam learning rate ``2e-4 / sqrt(num_latents / 16384)`` (the Top-k SAE scaling rule).

    >>> round(default_lr(16384), 6), round(default_lr(4096), 6)
    (0.0002, 0.0004)
    """
    return 2e-4 / math.sqrt(num_latents / 2**14)

def default_dead_after(num_latents: int, k: int, batch_size: int) -> int:
    """Vectors without firing after which a latent counts as dead (for AuxK).

    A latent used uniformly fires once every ``num_latents / k`` vectors; silence for 10 times
    that means dead, but never before 10 batches. The floor matters: on small synthetic runs a
    one-batch threshold flagged merely rare latents and AuxK then shrank them for good.

    >>> default_dead_after(4096, 16, 512)
    5120
    >>> default_dead_after(16384, 8, 4096)
    40960
    """
    return max(10 * num_latents // k, 10 * batch_size)

def train_sae(
    keys: torch.Tensor,
    queries: torch.Tensor | None = None,
    *,
    num_latents: int,
    k: int,
    hookpoint: str,
    layer: int | None = None,
    model_id: str | None = None,
    trained_on: str = "",
    steps: int | None = None,
    epochs: float = 1.0,
    batch_size: int = 4096,
    lr: float | None = None,
    auxk_alpha: float = 1 / 32,
    dead_after: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    show_progress: bool = True,
) -> TopKSAE:
    """Train a :class:`TopKSAE` on key (and optionally query) vectors.

    Each stream is divided by its RMS vector norm (stored as ``key_scale`` / ``query_scale``);
    with queries, every batch is half keys, half queries. Loss: reconstruction MSE divided by
    the data's total variance (reads as FVU) + ``auxk_alpha`` * AuxK (dead latents'
    top-``d_in // 2`` reconstruct the residual, normalised by its variance). Adam; decoder rows
    kept unit-norm (gradient parallel to each row removed before the step, rows renormalised
    after).

    Args:
        keys: ``[Nk, d]`` key vectors; queries: ``[Nq, d]`` query vectors or None.
        num_latents, k, hookpoint, layer, model_id, trained_on: go into the config.
        steps: optimizer steps; default ``ceil(epochs * (Nk + Nq) / batch_size)`` (with
            queries the smaller stream is cycled more often, each pass freshly shuffled).
        batch_size: vectors per step (capped at the data size).
        lr: Adam learning rate; default :func:`default_lr` (``2e-4 / sqrt(D / 16384)``).
            Short runs on small data want more: D=512 on synthetic data reached FVU 0.11
            in 200 steps with lr=1e-2 but stayed at 0.43 with the default (~1.1e-3).
        dead_after: see :func:`default_dead_after`.
        seed: seeds the init and the batch order (runs are reproducible on CPU).
        device: where to train; default ``keys.device``. Data stays where it is; only
            batches move.

    ``cfg.train_stats`` gets ``steps``, ``fvu`` (mean training FVU over the last steps),
    ``dead_fraction`` and the hyper-parameters. Returns the SAE in eval mode.

    >>> g = torch.Generator().manual_seed(0)
    >>> data = torch.randn(512, 8, generator=g)
    >>> sae = train_sae(data, num_latents=32, k=4, hookpoint="h", steps=5, batch_size=128,
    ...                 show_progress=False)
    >>> sorted(sae.cfg.train_stats)[:3], sae.cfg.key_scale > 0
    (['auxk_alpha', 'batch_size', 'dead_after'], True)
    """
    _check_stream(keys, "keys", None)
    d = keys.shape[1]
    _check_stream(queries, "queries", d)
    nk = keys.shape[0]
    nq = 0 if queries is None else queries.shape[0]
    for name, v in (("num_latents", num_latents), ("k", k), ("batch_size", batch_size)):
        if not _is_int(v) or v <= 0:
            raise SAEError(f"train_sae: {name} must be a positive int, got {v!r}")
    if steps is not None and (not _is_int(steps) or steps <= 0):
        raise SAEError(f"train_sae: steps must be a positive int, got {steps!r}")
    if steps is None and not (_is_number(epochs) and epochs > 0):
        raise SAEError(f"train_sae: epochs must be positive, got {epochs!r}")
    if dead_after is not None and (not _is_int(dead_after) or dead_after <= 0):
        raise SAEError(f"train_sae: dead_after must be a positive int, got {dead_after!r}")
    if auxk_alpha < 0:
        raise SAEError(f"train_sae: auxk_alpha must be >= 0, got {auxk_alpha!r}")
    batch_size = min(batch_size, nk + nq)
    if steps is None:
        steps = max(1, math.ceil(epochs * (nk + nq) / batch_size))
    lr = default_lr(num_latents) if lr is None else float(lr)
    dead_after = dead_after or default_dead_after(num_latents, k, batch_size)
    device = torch.device(device) if device is not None else keys.device

    key_scale, key_mean = _rms_norm_and_mean(keys, "keys")
    query_scale, query_mean = 1.0, None
    if queries is not None:
        query_scale, query_mean = _rms_norm_and_mean(queries, "queries")
    mu = key_mean / key_scale
    if query_mean is not None:
        mu = 0.5 * (mu + query_mean / query_scale)
    # Each normalised stream has E||x||^2 = 1, so the mixture's total variance is 1 - ||mu||^2.
    total_var = max(1.0 - float(mu.pow(2).sum()), 1e-6)

    cfg = SAEConfig(
        d_in=d, num_latents=num_latents, k=k, hookpoint=hookpoint, layer=layer,
        key_scale=key_scale, query_scale=query_scale, model_id=model_id,
        trained_on=trained_on,
    )
    gen = torch.Generator().manual_seed(seed)
    sae = TopKSAE(cfg, generator=gen).to(device)
    with torch.no_grad():
        sae.b_dec.copy_(mu.to(device, torch.float32))
    sae.train()
    opt = torch.optim.Adam(sae.parameters(), lr=lr)

    key_sampler = _Sampler(keys, gen)
    query_sampler = _Sampler(queries, gen) if queries is not None else None
    nk_batch = batch_size if query_sampler is None else max(1, batch_size // 2)
    since_fired = torch.zeros(num_latents, dtype=torch.int64, device=device)
    recent: collections.deque[float] = collections.deque(maxlen=max(1, min(50, steps // 10)))
    bar = tqdm(range(steps), desc=f"SAE {hookpoint}", disable=not show_progress)
    for step in bar:
        x = key_sampler.take(nk_batch).to(device, torch.float32) / key_scale
        if query_sampler is not None:
            q = query_sampler.take(batch_size - nk_batch).to(device, torch.float32)
            x = torch.cat([x, q / query_scale])
        dead = since_fired >= dead_after if auxk_alpha > 0 else None
        out = _training_losses(sae, x, dead, total_var)
        loss = out["fvu"] + auxk_alpha * out["auxk"] if "auxk" in out else out["fvu"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            W, g = sae.W_dec, sae.W_dec.grad
            g -= (g * W).sum(1, keepdim=True) * W
        opt.step()
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
            since_fired += x.shape[0]
            since_fired[out["ids"][out["acts"] > 0]] = 0
        recent.append(out["fvu"].item())
        if show_progress and (step % 10 == 0 or step == steps - 1):
            bar.set_postfix(
                fvu=f"{recent[-1]:.4f}",
                dead=f"{float((since_fired >= dead_after).float().mean()):.3f}",
            )
    bar.close()

    cfg.train_stats = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "auxk_alpha": auxk_alpha,
        "dead_after": dead_after,
        "seed": seed,
        "n_keys": nk,
        "n_queries": nq,
        "fvu": sum(recent) / len(recent),
        "dead_fraction": float((since_fired >= dead_after).float().mean()),
    }
    sae.requires_grad_(False)
    return sae.eval()

@torch.no_grad()
def evaluate_sae(
    sae: TopKSAE, x: torch.Tensor, kind: str | None = None, batch_size: int = 65536
) -> dict[str, float]:
    """Reconstruction quality and latent usage of ``sae`` on ``x`` ``[..., d_in]``.

    Returns ``fvu`` (``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``, in the original,
    unscaled space), ``dead_fraction`` (latents never active with act > 0 on ``x``),
    ``mean_density`` (mean over latents of the fraction of vectors activating it) and ``n``.

    >>> sae = TopKSAE(SAEConfig(d_in=4, num_latents=8, k=2, hookpoint="h"))
    >>> r = evaluate_sae(sae, torch.randn(100, 4))
    >>> sorted(r), r["n"]
    (['dead_fraction', 'fvu', 'mean_density', 'n'], 100)
    """
    sae._check_input(x)
    flat = x.reshape(-1, sae.cfg.d_in)
    n = flat.shape[0]
    if n == 0:
        raise SAEError("evaluate_sae: x is empty")
    D = sae.cfg.num_latents
    counts = torch.zeros(D, dtype=torch.int64, device=sae.device)
    err = 0.0
    sq = 0.0
    total = torch.zeros(sae.cfg.d_in, dtype=torch.float64)
    for s in range(0, n, batch_size):
        xb = flat[s : s + batch_size].to(sae.device)
        acts, ids = sae.encode(xb, kind)
        x_hat = sae.decode(acts, ids, kind)
        xb64 = xb.double()
        err += float((xb64 - x_hat.double()).pow(2).sum())
        sq += float(xb64.pow(2).sum())
        total += xb64.sum(0).cpu()
        counts += torch.bincount(ids[acts > 0], minlength=D)
    # sum ||x - mean||^2 = sum ||x||^2 - n ||mean||^2 (float64 keeps the cancellation benign)
    var = sq - float(total.pow(2).sum()) / n
    return {
        "fvu": err / var if var > 0 else float("nan"),
        "dead_fraction": float((counts == 0).double().mean()),
        "mean_density": float(counts.sum()) / (n * D),
        "n": n,
    }


@dataclass
class QKVectors:
    """Flattened vectors per layer: ``keys[layer]`` is [tokens * n_kv_heads, head_dim] and
    ``queries[layer]`` is [tokens * n_heads, head_dim] (float32, on the CPU)."""

    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    queries: dict[int, torch.Tensor] = field(default_factory=dict)
    n_tokens: int = 0

def token_chunks(lm: LoadedModel, texts: Iterable[str], chunk_tokens: int,
                 max_tokens: int | None = None) -> list[list[int]]:
    """Tokenise ``texts`` (joined by blank lines) into chunks of ``chunk_tokens`` ids."""
    ids: list[int] = []
    sep = lm.tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    for t in texts:
        ids.extend(lm.tokenizer(t, add_special_tokens=False)["input_ids"])
        ids.extend(sep)
        if max_tokens is not None and len(ids) >= max_tokens:
            ids = ids[:max_tokens]
            break
    return [ids[i:i + chunk_tokens] for i in range(0, len(ids), chunk_tokens)]

def collect_qk(lm: LoadedModel, texts: Sequence[str], layers: Sequence[int], *,
               chunk_tokens: int = 512, max_tokens: int | None = None,
               show_progress: bool = True) -> QKVectors:
    """Run ``texts`` through the model in chunks (each after the model's sink prefix, as the
    scan runs them) and keep every key and query vector of the text's tokens."""
    skip_first = len(lm.sink_ids)
    chunks = token_chunks(lm, texts, chunk_tokens, max_tokens)
    out = QKVectors()
    ks: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    qs: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    with QKHooks(lm.model, layers, keys=True, queries=True) as hooks:
        for chunk in tqdm(chunks, desc="collecting keys/queries", disable=not show_progress,
                          unit="chunk"):
            cap = hooks.run(input_ids=lm.input_tensor(chunk))
            for i in layers:
                ks[i].append(cap.keys[i][0, skip_first:].float().cpu().reshape(-1, lm.spec.head_dim))
                qs[i].append(cap.queries[i][0, skip_first:].float().cpu()
                             .reshape(-1, lm.spec.head_dim))
            out.n_tokens += len(chunk)
    for i in layers:
        out.keys[i] = torch.cat(ks[i]) if ks[i] else torch.empty(0, lm.spec.head_dim)
        out.queries[i] = torch.cat(qs[i]) if qs[i] else torch.empty(0, lm.spec.head_dim)
    return out


GENERIC_CORPUS_NOTE = ("HotpotQA dev paragraphs of the questions reserved for SAE training "
                       "(s3_retriever.corpus.RESERVED_SAE_QUESTIONS), CC BY-SA 4.0")

def train_model_saes(model: str | LoadedModel, layers: Sequence[int], out: str | os.PathLike,
                     *, num_latents: int = 2048, k: int = 16, texts: Sequence[str] | None = None,
                     max_tokens: int = 300_000, held_out_tokens: int = 40_000,
                     steps: int | None = None, epochs: float = 2.0, auxk_alpha: float = 0.125,
                     lr: float | None = None, batch_size: int = 4096, seed: int = 0,
                     device: str | None = None, overwrite: bool = False,
                     show_progress: bool = True) -> dict[str, Any]:
    """Train and save one SAE per layer; returns FVU / dead / density per layer on held-out
    keys and queries (the last 10% of the texts, never seen in training).

    ``out`` must be a new or empty folder, or (with ``overwrite``) an SAE folder; it is
    checked before any training."""
    storage.check_folder_output(out, overwrite=overwrite, recognise=is_sae_folder)
    lm = model if isinstance(model, LoadedModel) else load_model(model, device)
    source = "user texts" if texts is not None else GENERIC_CORPUS_NOTE
    texts = list(texts) if texts is not None else generic_corpus()
    if len(texts) < 2:
        raise ValueError("need at least 2 texts (training and held-out parts)")
    cut = max(1, int(len(texts) * 0.9))
    train = collect_qk(lm, texts[:cut], layers, max_tokens=max_tokens,
                       show_progress=show_progress)
    held = collect_qk(lm, texts[cut:], layers, max_tokens=held_out_tokens,
                      show_progress=show_progress)
    saes: dict[str, TopKSAE] = {}
    report: dict[str, Any] = {}
    for layer in layers:
        hp = hookpoint_name(layer)
        held_k, held_q = held.keys[layer], held.queries[layer]
        sae = train_sae(train.keys[layer], train.queries[layer], num_latents=num_latents, k=k,
                        hookpoint=hp, layer=layer, model_id=lm.model_id,
                        trained_on=f"{source}; {train.n_tokens} tokens", steps=steps,
                        epochs=epochs, auxk_alpha=auxk_alpha, lr=lr, batch_size=batch_size,
                        seed=seed, show_progress=show_progress)
        ev = {"keys": evaluate_sae(sae, held_k, kind="key"),
              "queries": evaluate_sae(sae, held_q, kind="query")}
        sae.cfg.train_stats["held_out"] = ev
        saes[hp] = sae
        report[hp] = {"held_out": ev, "train_tokens": train.n_tokens,
                      "held_out_tokens": held.n_tokens}
    save_saes(saes, Path(out), overwrite=overwrite)
    return report
