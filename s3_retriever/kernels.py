"""Top-k sparse encoding: the hot loop of the scan.

Every key vector of every indexed token goes through :func:`topk_encode`, so this module is
the single place to optimise (a faiss / Triton path can be added here later without touching
callers). :func:`naive_topk_encode` is the unblocked reference used by the tests.
"""

from __future__ import annotations

import torch

__all__ = ["naive_topk_encode", "topk_encode"]


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


def _encode_block(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    pre = torch.addmm(b_enc, x, W_enc)
    # ReLU is monotone, so the top-k of the pre-activations are a top-k of the activations;
    # selecting before the ReLU also orders ties at zero by pre-activation, deterministically.
    vals, ids = torch.topk(pre, k, dim=1, largest=True, sorted=True)
    return vals.clamp_min_(0).float(), ids


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
        return (
            torch.empty(0, k, dtype=torch.float32, device=x.device),
            torch.empty(0, k, dtype=torch.int64, device=x.device),
        )
    return _encode_block(x, W_enc, b_enc, k)


def topk_encode(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    *,
    block_size: int = 16384,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``relu(x @ W_enc + b_enc)`` per row, computed in row blocks.

    Args:
        x: ``[n, d]`` floating tensor; the computation runs in its dtype and on its device
            (``W_enc``/``b_enc`` are cast to match).
        W_enc: ``[d, D]`` encoder weights.
        b_enc: ``[D]`` encoder bias.
        k: number of latents kept per row, ``1 <= k <= D``.
        block_size: rows per block; peak extra memory is O(block_size * D).

    Returns:
        ``(acts, ids)``: float32 ``[n, k]`` post-ReLU activations (zeros where fewer than
        ``k`` pre-activations are positive) sorted descending per row, and int64 ``[n, k]``
        latent ids, exactly ``k`` per row.

    >>> x = torch.tensor([[1.0, -1.0], [-1.0, 2.0]])
    >>> W = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    >>> acts, ids = topk_encode(x, W, torch.zeros(3), 2, block_size=1)
    >>> acts.tolist(), ids.tolist()
    ([[2.0, 1.0], [2.0, 0.0]], [[2, 0], [1, 0]])
    """
    _check_args(x, W_enc, b_enc, k)
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    W_enc = W_enc.to(device=x.device, dtype=x.dtype)
    b_enc = b_enc.to(device=x.device, dtype=x.dtype)
    n = x.shape[0]
    if n <= block_size:
        return naive_topk_encode(x, W_enc, b_enc, k)
    acts = torch.empty(n, k, dtype=torch.float32, device=x.device)
    ids = torch.empty(n, k, dtype=torch.int64, device=x.device)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        a, i = _encode_block(x[start:stop], W_enc, b_enc, k)
        acts[start:stop] = a
        ids[start:stop] = i
    return acts, ids
