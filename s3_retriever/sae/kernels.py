"""Top-k sparse encoding: the hot loop of the scan.

Every key vector of every indexed token goes through :func:`topk_encode`, so this module is
the single place to optimise. One contract for every path: the top-``k`` of
``relu(x @ W_enc + b_enc)`` per row, as float32 activations sorted descending and int64
latent ids. The paths (``METHODS``; benchmarked in ``benchmarks/perf_kernels.py``):

* ``"topk"`` -- row blocks of ``addmm`` then ``torch.topk(sorted=True)``. Exact. The CPU
  default (the fastest exact path measured at 2,048-65,536 latents on the recorded machine).
* ``"rerank"`` -- candidates from a bf16 matmul (``k + margin`` per row), re-scored exactly
  in the input dtype, top ``k`` of those. Exact unless a true top-``k`` latent falls outside
  the bf16 top ``k + margin`` (never seen in the tests; ``benchmarks/perf_kernels.py`` and
  ``benchmarks/gpu_check.py`` report the agreement). The CUDA default: the big matmul
  runs on bf16 tensor cores, the re-scoring is ``k + margin`` dot products per row.

:func:`naive_topk_encode` is the unblocked reference used by the tests.
"""

from __future__ import annotations

import torch

__all__ = ["METHODS", "default_method", "naive_topk_encode", "topk_encode"]

METHODS = ("auto", "topk", "rerank")


def _check_args(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int) -> None:
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a 2-D float tensor [n, d], got {x.dtype} {tuple(x.shape)}")
    if W_enc.dim() != 2 or W_enc.shape[0] != x.shape[1]:
        raise ValueError(
            f"W_enc must be [d, D] with d={x.shape[1]}, got shape {tuple(W_enc.shape)}"
        )
    if b_enc.shape != (W_enc.shape[1],):
        raise ValueError(f"b_enc must be [{W_enc.shape[1]}], got shape {tuple(b_enc.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= W_enc.shape[1]:
        raise ValueError(f"k must be an int in [1, {W_enc.shape[1]}], got {k!r}")


def _empty(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.empty(0, k, dtype=torch.float32, device=x.device),
            torch.empty(0, k, dtype=torch.int64, device=x.device))


def _encode_block(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    pre = torch.addmm(b_enc, x, W_enc)
    # ReLU is monotone, so the top-k of the pre-activations are a top-k of the activations;
    # selecting before the ReLU also orders ties at zero by pre-activation, deterministically.
    vals, ids = torch.topk(pre, k, dim=1, largest=True, sorted=True)
    return vals.clamp_min_(0).float(), ids






def _rescore(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor,
             cand: torch.Tensor) -> torch.Tensor:
    """Exact pre-activations of the candidate latents: ``[n, m]`` from ``cand`` ``[n, m]``."""
    w = W_enc.t()[cand]  # [n, m, d]
    return torch.bmm(w, x.unsqueeze(-1)).squeeze(-1) + b_enc[cand]


def _encode_block_rerank(
    x: torch.Tensor, W_bf16: torch.Tensor, b_bf16: torch.Tensor, W_enc: torch.Tensor,
    b_enc: torch.Tensor, k: int, margin: int
) -> tuple[torch.Tensor, torch.Tensor]:
    m = min(W_enc.shape[1], k + margin)
    approx = torch.addmm(b_bf16, x.to(torch.bfloat16), W_bf16)
    cand = torch.topk(approx, m, dim=1, largest=True, sorted=False).indices
    exact = _rescore(x, W_enc, b_enc, cand)
    vals, pos = torch.topk(exact, k, dim=1, largest=True, sorted=True)
    return vals.clamp_min_(0).float(), cand.gather(1, pos)


def default_method(device: torch.device | str) -> str:
    """The path ``method="auto"`` takes: ``"rerank"`` on CUDA, ``"topk"`` elsewhere."""
    return "rerank" if torch.device(device).type == "cuda" else "topk"


def naive_topk_encode(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference top-k encode: ``topk(relu(x @ W_enc + b_enc), k)`` in one shot.

    Same contract as :func:`topk_encode`, but memory is O(n * D).

    >>> x = torch.tensor([[1.0, -1.0]])
    >>> W = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    >>> acts, ids = naive_topk_encode(x, W, torch.zeros(3), 2)
    >>> acts.tolist(), ids.tolist()
    ([[2.0, 1.0]], [[2, 0]])
    """
    _check_args(x, W_enc, b_enc, k)
    W_enc = W_enc.to(device=x.device, dtype=x.dtype)
    b_enc = b_enc.to(device=x.device, dtype=x.dtype)
    if x.shape[0] == 0:
        return _empty(x, k)
    return _encode_block(x, W_enc, b_enc, k)


def topk_encode(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    *,
    block_size: int = 16384,
    method: str = "auto",
    margin: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``relu(x @ W_enc + b_enc)`` per row, computed in row blocks.

    Args:
        x: ``[n, d]`` floating tensor; the computation runs in its dtype and on its device
            (``W_enc``/``b_enc`` are cast to match).
        W_enc: ``[d, D]`` encoder weights.
        b_enc: ``[D]`` encoder bias.
        k: number of latents kept per row, ``1 <= k <= D``.
        block_size: rows per block; peak extra memory is O(block_size * D).
        method: one of ``METHODS`` (see the module docstring); ``"auto"`` is
            :func:`default_method` of ``x``'s device.
        margin: extra bf16 candidates per row for ``"rerank"`` (default ``k``).

    Returns:
        ``(acts, ids)``: float32 ``[n, k]`` post-ReLU activations (zeros where fewer than
        ``k`` pre-activations are positive) sorted descending per row, and int64 ``[n, k]``
        latent ids, exactly ``k`` per row.

    >>> x = torch.tensor([[1.0, -1.0], [-1.0, 2.0]])
    >>> W = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    >>> acts, ids = topk_encode(x, W, torch.zeros(3), 2, block_size=1)
    >>> acts.tolist(), ids.tolist()
    ([[2.0, 1.0], [2.0, 0.0]], [[2, 0], [1, 0]])
    >>> topk_encode(x, W, torch.zeros(3), 2, method="rerank")[1].tolist()
    [[2, 0], [1, 0]]
    """
    _check_args(x, W_enc, b_enc, k)
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        method = default_method(x.device)
    margin = k if margin is None else int(margin)
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    W_enc = W_enc.to(device=x.device, dtype=x.dtype)
    b_enc = b_enc.to(device=x.device, dtype=x.dtype)
    n = x.shape[0]
    if n == 0:
        return _empty(x, k)
    if method == "rerank":
        W_bf16, b_bf16 = W_enc.to(torch.bfloat16), b_enc.to(torch.bfloat16)

        def block(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return _encode_block_rerank(xb, W_bf16, b_bf16, W_enc, b_enc, k, margin)
    else:
        def block(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return _encode_block(xb, W_enc, b_enc, k)
    if n <= block_size:
        return block(x)
    acts = torch.empty(n, k, dtype=torch.float32, device=x.device)
    ids = torch.empty(n, k, dtype=torch.int64, device=x.device)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        a, i = block(x[start:stop])
        acts[start:stop] = a
        ids[start:stop] = i
    return acts, ids


