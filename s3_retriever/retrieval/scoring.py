"""Score indexed tokens for a question from its attention queries, per scoring head:
``"attention"`` (the default) is the softmax mass of ``q . k_hat`` on keys rebuilt from the
codes, with the exact query-mean term ``(q - m) . k_hat + m . k`` when kept;
``"coactivation"`` (the paper's feature match) is ``sum_f idf_f a_q(f) a_k(p, f)`` over the
features a token shares with the question's encoded queries, read from the postings.

Example:
    >>> HeadWeight("layers.17", 3, kv=1).stream
    'layers.17.kv1'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from s3_retriever.config import SCORE_BLOCK_TOKENS
from s3_retriever.model.hooks import hookpoint_layer, stream_name
from s3_retriever.sae.coder import TopKSAE


@dataclass(frozen=True)
class HeadWeight:
    """One query head used for scoring: ``hookpoint`` (SAE), query ``head``, its ``kv`` head,
    its ``weight``, and optionally its mean query with the index's bias ``column`` holding
    ``mean . key`` for every token."""

    hookpoint: str
    head: int
    kv: int
    weight: float = 1.0
    query_mean: tuple[float, ...] | None = None
    column: int | None = None

    @property
    def stream(self) -> str:
        """The key stream it reads (:func:`~s3_retriever.model.hooks.stream_name`)."""
        return stream_name(self.hookpoint, self.kv)

    @property
    def name(self) -> str:
        """``"layers.17/3"``: hookpoint / query head."""
        return f"{self.hookpoint}/{self.head}"

    def to_entry(self) -> list:
        """The head file entry: ``[hookpoint, head, weight]`` plus the mean query if any."""
        entry: list = [self.hookpoint, self.head, self.weight]
        if self.query_mean is not None:
            entry.append(list(self.query_mean))
        return entry


def resolve_heads(entries: list[list[Any]] | None, saes: dict[str, TopKSAE], spec: Any, *,
                  query_mean: bool = True) -> list[HeadWeight]:
    """Head entries ``[hookpoint, head, weight(, mean query)]`` (None: every head of every
    hookpoint, weight 1) as :class:`HeadWeight` objects; a mean query is kept only with
    ``query_mean``, and each gets its bias column within its key stream.

    Raises:
        SAEError: an SAE that does not fit the model.
        ValueError: a head of a hookpoint without an SAE, a bad mean query, no heads.
    """
    for hp, sae in saes.items():
        sae.check_compatible(spec.head_dim, hookpoint_layer(hp))
    if entries is None:
        entries = [[hp, h, 1.0] for hp in sorted(saes) for h in range(spec.n_heads)]
    out = []
    columns: dict[str, int] = {}
    for entry in entries:
        hp, h, *rest = entry
        if hp not in saes:
            raise ValueError(f"head {str(entry)[:60]} names hookpoint {hp!r}, which has no "
                             f"SAE (have {sorted(saes)})")
        w = float(rest[0]) if rest else 1.0
        mean = column = None
        kv = spec.kv_group(int(h))
        if len(rest) > 1 and rest[1] is not None and query_mean:
            mean = tuple(float(x) for x in rest[1])
            if len(mean) != spec.head_dim or not all(map(math.isfinite, mean)):
                raise ValueError(f"head [{hp!r}, {h}]: the mean query must be "
                                 f"{spec.head_dim} finite floats")
            name = stream_name(hp, kv)
            column = columns[name] = columns.get(name, -1) + 1
        out.append(HeadWeight(hp, int(h), kv, w, mean, column))
    if not out:
        raise ValueError("no query heads selected")
    return out


class QueryPlan:
    """A question's queries prepared for scoring: per key stream, the queries of every head
    that reads it stacked ``[sum T, d]`` (minus the head's mean query where the index keeps
    the query-mean term), so heads sharing a kv head are scored in one pass over the codes.
    """

    def __init__(self, queries: dict[str, torch.Tensor], saes: dict[str, TopKSAE],
                 heads: list[HeadWeight], bias_streams: set[str] | frozenset = frozenset()):
        self.heads = heads
        self.streams: dict[str, list[int]] = {}
        for i, hw in enumerate(heads):
            self.streams.setdefault(hw.stream, []).append(i)
        self.q: dict[str, torch.Tensor] = {}    # stream -> [sum T, d] (mean removed)
        self.cols: dict[int, slice] = {}       # head -> its columns in its stream's block
        self.uses_bias = {i: hw.column is not None and hw.stream in bias_streams
                          for i, hw in enumerate(heads)}
        self._u: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, members in self.streams.items():
            parts, at = [], 0
            for i in members:
                hw = heads[i]
                q = queries[hw.hookpoint][:, hw.head].float()
                if self.uses_bias[i]:
                    q = q - torch.tensor(hw.query_mean, dtype=torch.float32)
                parts.append(q)
                self.cols[i] = slice(at, at + len(q))
                at += len(q)
            self.q[name] = torch.cat(parts)
            sae = saes[heads[members[0]].hookpoint]
            d = self.q[name].shape[1]
            factor = float(sae.cfg.key_scale) / math.sqrt(d)
            self._u[name] = ((sae.W_dec.detach().float() @ self.q[name].T) * factor,
                             (self.q[name] @ sae.b_dec.detach().float()) * factor)
        self.d = next(iter(self.q.values())).shape[1]

    def logits(self, name: str, ids: np.ndarray, acts: np.ndarray,
               bias: np.ndarray | None = None, block: int = 32768) -> np.ndarray:
        """``[n, sum T]`` float32 logits of every head reading stream ``name`` on the given
        codes (``bias``: the positions' exact query-mean columns)."""
        u, base = self._u[name]
        out = np.empty((len(ids), u.shape[1]), np.float32)
        for s in range(0, len(ids), block):
            i = torch.from_numpy(np.asarray(ids[s:s + block], dtype=np.int64))
            a = torch.from_numpy(np.asarray(acts[s:s + block], dtype=np.float32))
            # sum_i a_i * u[id_i] per row as one fused gather-multiply-add (embedding_bag)
            out[s:s + block] = (torch.nn.functional.embedding_bag(
                i, u, per_sample_weights=a, mode="sum") + base).numpy()
        if bias is not None:
            for i in self.streams[name]:
                if self.uses_bias[i]:
                    col = np.asarray(bias[:, self.heads[i].column], np.float32)
                    out[:, self.cols[i]] += (col / math.sqrt(self.d))[:, None]
        return out


#: A softmax normaliser per key stream: ``(top, total)``, the running max (float32) and the
#: sum of ``exp(logit - top)`` (float64) of every query column over all scored positions.
Normaliser = dict[str, tuple[torch.Tensor, torch.Tensor]]


def _stream_logits(plan: QueryPlan, name: str, codes: dict[str, tuple[np.ndarray, np.ndarray]],
                   bias: dict[str, np.ndarray], block: int):
    """``s -> [block, W]`` logits of positions ``s:s + block`` for every head on ``name``."""
    ids, acts = codes[name]
    b = bias.get(name)

    def logits(s: int) -> torch.Tensor:
        return torch.from_numpy(plan.logits(name, ids[s:s + block], acts[s:s + block],
                                            None if b is None else b[s:s + block]))
    return logits


def _partials(plan: QueryPlan, codes: dict[str, tuple[np.ndarray, np.ndarray]],
              bias: dict[str, np.ndarray], n: int, block: int) -> Normaliser:
    """Pass 1 of :func:`attention_scores`: per stream, the running max and sum of exp of each
    query column over the ``n`` positions, ``block`` at a time."""
    out: Normaliser = {}
    for name, members in plan.streams.items():
        logits = _stream_logits(plan, name, codes, bias, block)
        width = sum(plan.cols[i].stop - plan.cols[i].start for i in members)
        top = torch.full((width,), -math.inf)
        total = torch.zeros(width, dtype=torch.float64)
        for s in range(0, n, block):  # running max and sum of exp per column
            lg = logits(s)
            new_top = torch.maximum(top, lg.max(dim=0).values)
            total = total * torch.exp(top - new_top).double() + \
                torch.exp(lg - new_top).sum(dim=0).double()
            top = new_top
        out[name] = (top, total)
    return out


def combine_normalisers(parts: Sequence[Normaliser]) -> Normaliser:
    """The normaliser of the union of the positions behind ``parts`` (e.g. one per shard):
    per column the max of the maxima, and each part's sum rescaled to it -- the same update
    pass 1 of :func:`attention_scores` applies from one block to the next.

    Example:
        >>> a = {"s": (torch.tensor([1.0]), torch.tensor([2.0], dtype=torch.float64))}
        >>> b = {"s": (torch.tensor([-math.inf]), torch.tensor([0.0], dtype=torch.float64))}
        >>> combine_normalisers([a, b])["s"][1].tolist()
        [2.0]
    """
    out: Normaliser = {}
    for part in parts:
        for name, (t, s) in part.items():
            if name not in out:
                out[name] = (t.clone(), s.clone())
                continue
            top, total = out[name]
            new_top = torch.maximum(top, t)
            # rescaled in float64; a part without positions (max -inf, sum 0) adds nothing
            old = torch.where(torch.isneginf(top), 0.0,
                              torch.exp(top.double() - new_top.double()))
            new = torch.where(torch.isneginf(t), 0.0, torch.exp(t.double() - new_top.double()))
            out[name] = (new_top, total * old + s.double() * new)
    return out


def attention_partials(queries: dict[str, torch.Tensor],
                       codes: dict[str, tuple[np.ndarray, np.ndarray]],
                       saes: dict[str, TopKSAE], heads: list[HeadWeight],
                       bias: dict[str, np.ndarray] | None = None, *,
                       block: int = SCORE_BLOCK_TOKENS) -> Normaliser:
    """Pass 1 of :func:`attention_scores` alone: the softmax normaliser of these positions.

    A sharded search computes it per shard, merges the parts with
    :func:`combine_normalisers` and hands the result back to every shard's
    :func:`attention_scores` (``normaliser=``), so each shard's masses are shares of one
    softmax over all shards' positions.
    """
    if not heads:
        raise ValueError("no heads selected for scoring")
    bias = bias or {}
    plan = QueryPlan(queries, saes, heads, set(bias))
    n = len(next(iter(codes.values()))[0])
    return _partials(plan, codes, bias, n, block)


def attention_scores(queries: dict[str, torch.Tensor], codes: dict[str, tuple[np.ndarray,
                     np.ndarray]], saes: dict[str, TopKSAE], heads: list[HeadWeight],
                     bias: dict[str, np.ndarray] | None = None, *, per_head: bool = False,
                     block: int = SCORE_BLOCK_TOKENS,
                     normaliser: Normaliser | None = None) -> np.ndarray:
    """Attention mass per haystack position, summed over heads with their weights
    (``per_head``: [n_heads, n], one unweighted row per head).

    Positions are scored ``block`` at a time in two passes (the running max and sum of each
    head and query token, then the normalised mass), so memory holds one block of logits
    whatever the number of positions; heads that read the same kv head share each pass.

    Args:
        queries: hookpoint -> the question's queries [T, n_heads, d].
        codes: stream name (``"layers.17.kv0"``) -> (ids, acts) [n, k] of the haystack.
        saes: hookpoint -> SAE.
        heads: which query heads, with weights.
        bias: stream name -> [n, m] exact ``mean_query . key`` columns; a head with a
            ``column`` uses the query-mean term from it.
        normaliser: the softmax normaliser to divide by instead of these positions' own
            (pass 1 is skipped): :func:`combine_normalisers` of every shard's
            :func:`attention_partials`.
    """
    if not heads:
        raise ValueError("no heads selected for scoring")
    bias = bias or {}
    plan = QueryPlan(queries, saes, heads, set(bias))
    n = len(next(iter(codes.values()))[0])
    out = np.zeros((len(heads), n), np.float32)
    norm = _partials(plan, codes, bias, n, block) if normaliser is None else normaliser
    for name, members in plan.streams.items():
        logits = _stream_logits(plan, name, codes, bias, block)
        top, total = norm[name]
        inv = (1.0 / total).float()
        for s in range(0, n, block):  # pass 2: sum over query tokens of exp / normaliser
            lg = logits(s).sub_(top).exp_()
            for i in members:
                out[i, s:s + block] = (lg[:, plan.cols[i]] @ inv[plan.cols[i]]).numpy()
    if per_head:
        return out.astype(np.float64)
    return np.asarray(sum(row.astype(np.float64) * hw.weight for row, hw in zip(out, heads)))


def query_feature_weights(queries: dict[str, torch.Tensor], saes: dict[str, TopKSAE],
                          heads: list[HeadWeight], idf: dict[str, np.ndarray],
                          pruned: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Per postings name, a dense [num_latents] weight: ``sum idf_f * a_q(f)`` over the
    question's tokens and the heads reading that kv head (pruned features get 0)."""
    out: dict[str, np.ndarray] = {}
    for hw in heads:
        sae = saes[hw.hookpoint]
        name = hw.stream
        acts, ids = sae.encode(queries[hw.hookpoint][:, hw.head].float(), kind="query")
        w = out.setdefault(name, np.zeros(sae.cfg.num_latents, np.float64))
        np.add.at(w, ids.numpy().ravel(), acts.numpy().ravel() * hw.weight)
    for name, w in out.items():
        w *= idf[name]
        if pruned is not None and name in pruned:
            w[pruned[name]] = 0.0
    return out


def _contiguous(ranges: Sequence[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """``(segment, start, end)`` token ranges with consecutive touching ones merged."""
    out: list[tuple[int, int, int]] = []
    for seg, s, e in ranges:
        if out and out[-1][0] == seg and out[-1][2] == s:
            out[-1] = (seg, out[-1][1], e)
        else:
            out.append((seg, s, e))
    return out


def _join(parts: list[np.ndarray]) -> np.ndarray:
    """``np.concatenate(parts)``, but a single part is returned as is (a view, no copy)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _row_codes(store: Any, rows: Sequence[int], streams: Sequence[str]
               ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, np.ndarray]]:
    """The codes (and bias columns) of the tokens of document ``rows``, concatenated in row
    order, per stream (views where one contiguous range suffices)."""
    docs = store.docs
    spans = [(docs[r].segment, docs[r].token_start, docs[r].token_end) for r in rows]
    codes, bias = {}, {}
    for name in streams:
        parts_i, parts_a, parts_b = [], [], []
        for seg, s, e in _contiguous(spans):
            c = store.segments[seg].codes[name]
            ids, acts = c.ids, c.acts
            parts_i.append(ids[s:e])
            parts_a.append(acts[s:e])
            if name in store.segments[seg].bias:
                parts_b.append(store.segments[seg].bias[name][s:e])
        codes[name] = (_join(parts_i), _join(parts_a))
        if parts_b:
            bias[name] = _join(parts_b)
    return codes, bias


def feature_stats(doc_freq: np.ndarray, live_tokens: int, max_df_fraction: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(idf, pruned)`` of one stream from its feature document frequencies, as
    :meth:`InvertedIndex.idf <s3_retriever.index.segments.InvertedIndex.idf>` and
    :meth:`~s3_retriever.index.segments.InvertedIndex.pruned` compute them; a sharded index
    passes the sums over its shards, so the co-activation scorer weighs features globally.

    Example:
        >>> idf, pruned = feature_stats(np.array([0, 3]), 3, 0.5)
        >>> idf.astype(float).round(3).tolist(), pruned.tolist()
        ([2.386, 1.0], [False, True])
    """
    df = np.asarray(doc_freq)
    idf = (np.log((live_tokens + 1.0) / (df + 1.0)) + 1.0).astype(np.float32)
    return idf, df > max_df_fraction * live_tokens


def token_partials(store: Any, rows: Sequence[int], queries: dict[str, torch.Tensor],
                   saes: dict[str, TopKSAE], heads: list[HeadWeight]) -> Normaliser:
    """:func:`attention_partials` of the tokens of document ``rows`` of ``store``: this
    store's share of a softmax normaliser (see :func:`token_scores`' ``normaliser``)."""
    codes, bias = _row_codes(store, rows, sorted({hw.stream for hw in heads}))
    return attention_partials(queries, codes, saes, heads, bias)


def token_scores(store: Any, rows: Sequence[int], queries: dict[str, torch.Tensor],
                 saes: dict[str, TopKSAE], heads: list[HeadWeight], *,
                 scorer: str = "attention", max_df_fraction: float = 0.01,
                 per_head: bool = False, normaliser: Normaliser | None = None,
                 features: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
                 ) -> np.ndarray:
    """The S3 score of every token of the document ``rows`` of ``store`` (an
    :class:`~s3_retriever.index.segments.InvertedIndex`), concatenated in row order:
    ``[n]``, or with ``per_head`` ``[n_heads, n]`` unweighted attention masses (attention
    scorer only).

    ``normaliser`` (attention) and ``features`` (co-activation: stream -> ``(idf,
    pruned)`` from :func:`feature_stats`) replace the statistics this store would compute
    over its own tokens: a shard scores with those of the whole sharded index.
    """
    docs = store.docs
    spans = [(docs[r].segment, docs[r].token_start, docs[r].token_end) for r in rows]
    streams = sorted({hw.stream for hw in heads})
    if scorer == "attention":
        codes, bias = _row_codes(store, rows, streams)
        flat = attention_scores(queries, codes, saes, heads, bias, per_head=per_head,
                                normaliser=normaliser)
    else:
        if features is None:
            idf = {n: store.idf(n) for n in streams}
            pruned = {n: store.pruned(n, max_df_fraction) for n in streams}
        else:
            idf = {n: features[n][0] for n in streams}
            pruned = {n: features[n][1] for n in streams}
        weights = query_feature_weights(queries, saes, heads, idf, pruned)
        per_seg: dict[int, np.ndarray] = {}
        for seg in sorted({s for s, _, _ in spans}):
            segment = store.segments[seg]
            tot = np.zeros(segment.n_tokens, np.float64)
            for name, w in weights.items():
                feats = np.flatnonzero(w)
                pos, acts, which = segment.postings[name].gather(feats)
                tot += np.bincount(np.asarray(pos, np.int64),
                                   weights=np.asarray(acts, np.float64) * w[feats][which],
                                   minlength=segment.n_tokens)
            per_seg[seg] = tot
        flat = np.concatenate([per_seg[seg][s:e] for seg, s, e in spans])
    return np.asarray(flat, np.float64)
