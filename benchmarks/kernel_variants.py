"""Top-k encode paths that lost to the library's (``topk`` on CPU, ``rerank`` on CUDA) and
live on here as the findings of benchmarks/perf_kernels.py and gpu_check.py: a partial
selection with a sort of the survivors, an all-bf16 encode, and faiss inner-product search.

Each has the contract of :func:`s3_retriever.sae.kernels.topk_encode`: float32 activations
sorted descending and int64 latent ids, ``k`` per row.
"""

from __future__ import annotations

from typing import Any

import torch

from s3_retriever.sae.kernels import topk_encode


def _sort_codes(vals: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of (vals, ids) sorted by value descending, ties by id ascending."""
    ids, order = torch.sort(ids, dim=1)
    vals = vals.gather(1, order)
    vals, order = torch.sort(vals, dim=1, descending=True, stable=True)
    return vals, ids.gather(1, order)

def _encode_block_partial(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    pre = torch.addmm(b_enc, x, W_enc)
    vals, ids = torch.topk(pre, k, dim=1, largest=True, sorted=False)
    vals, ids = _sort_codes(vals, ids)
    return vals.clamp_min_(0).float(), ids


def partial_topk_encode(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor,
                        k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An unsorted ``topk`` (partial selection), then a sort of the ``k`` survivors by
    (activation desc, id asc): exact, deterministic tie order."""
    W_enc = W_enc.to(device=x.device, dtype=x.dtype)
    b_enc = b_enc.to(device=x.device, dtype=x.dtype)
    return _encode_block_partial(x, W_enc, b_enc, k)


def bf16_topk_encode(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor,
                     k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The matmul and the selection in bf16: approximate (ids differ where bf16 rounding
    reorders near-ties; the benchmarks report recall@k against the exact path)."""
    return topk_encode(x.to(torch.bfloat16), W_enc, b_enc, k, method="topk")


class FaissTopK:
    """Top-k encode as a faiss maximum-inner-product search over the encoder rows.

    ``x @ W_enc + b_enc`` equals ``[x, 1] . [W_enc; b_enc]`` per latent, so the top-k
    latents of a row are its ``k`` nearest encoder rows by inner product. A flat index
    (``nlist=None``) is exact (up to float rounding of the inner products); an IVF index
    (``nlist`` clusters, ``nprobe`` searched) is approximate: use it only for very large
    dictionaries, with its recall measured (``benchmarks/perf_kernels.py``).

    Args:
        W_enc: ``[d, D]`` encoder weights; b_enc: ``[D]`` bias (float32 copies are kept).
        nlist, nprobe: IVF parameters (None: flat, exact).

    Example:
        >>> W = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
        >>> acts, ids = FaissTopK(W, torch.zeros(3))(torch.tensor([[1.0, -1.0]]), 2)
        >>> acts.tolist(), ids.tolist()
        ([[2.0, 1.0]], [[2, 0]])
    """

    def __init__(self, W_enc: torch.Tensor, b_enc: torch.Tensor, *, nlist: int | None = None,
                 nprobe: int = 8):
        import faiss
        import numpy as np

        rows = torch.cat([W_enc.detach().float().cpu(), b_enc.detach().float().cpu()[None]])
        base = np.ascontiguousarray(rows.t().numpy(), dtype=np.float32)  # [D, d + 1]
        self.num_latents, self.dim = base.shape
        self.index: Any
        if nlist is None:
            self.index = faiss.IndexFlatIP(self.dim)
        else:
            quantizer = faiss.IndexFlatIP(self.dim)
            self.index = faiss.IndexIVFFlat(quantizer, self.dim, int(nlist),
                                            faiss.METRIC_INNER_PRODUCT)
            self.index.train(base)
            self.index.nprobe = int(nprobe)
        self.index.add(base)
        self.exact = nlist is None

    def __call__(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(acts float32 [n, k], ids int64 [n, k])`` of ``x`` ``[n, d]``, as topk_encode."""
        import numpy as np

        if x.dim() != 2 or x.shape[1] + 1 != self.dim:
            raise ValueError(f"x must be [n, {self.dim - 1}], got {tuple(x.shape)}")
        if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= self.num_latents:
            raise ValueError(f"k must be an int in [1, {self.num_latents}], got {k!r}")
        q = np.empty((x.shape[0], self.dim), dtype=np.float32)
        q[:, :-1] = x.detach().float().cpu().numpy()
        q[:, -1] = 1.0
        vals, ids = self.index.search(q, k)
        acts = torch.from_numpy(vals).clamp_min_(0)
        ids_t = torch.from_numpy(ids.astype(np.int64))
        # An IVF search may find fewer than k latents; pad with id 0 / activation 0.
        missing = ids_t < 0
        if missing.any():
            ids_t[missing] = 0
            acts[missing] = 0.0
        return acts, ids_t
