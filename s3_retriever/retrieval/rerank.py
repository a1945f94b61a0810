"""In-context attention reranking: re-read a small candidate pool together with the question
and rank the pool's sentences by the attention the question's tokens put on them.

The scan's attention is diffuse over a long corpus; over a pool of 2-4k tokens read in one
context, the retrieval heads are sharp (QRHead, Zhang et al. 2025; in-context re-ranking,
Chen et al. 2024). One forward pass reads the pool (stopping after the last head's layer,
its KV cache dropped afterwards), a second short pass reads ``"Question: ...\\nAnswer:"``
with eager attention, and a sentence's score is the softmax weight the question's tokens put
on its tokens, averaged over those tokens and summed over the heads. With ``calibrate``
the same weight from a content-free question (``"N/A"``) is subtracted: what a head gives a
sentence whatever is asked (position, sink-like tokens) is not evidence (the ICR
calibration). Memory and time are bounded by the pool, never by the index.

:func:`rerank_spans` is the stage a search runs: the first stage's spans (the pool) are cut
into sentences, scored, and the best sentences that fit the budget come back as spans
(neighbouring picks of one document merged), each exactly ``document[start:end]``.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from s3_retriever import storage
from s3_retriever.config import RERANK_HOP_WEIGHT
from s3_retriever.errors import SAEError
from s3_retriever.model.hooks import decoder_layers
from s3_retriever.model.loading import LoadedModel
from s3_retriever.retrieval.fusion import normalize
from s3_retriever.retrieval.packing import check_budget, greedy_fill
from s3_retriever.retrieval.scan import tokenize_document
from s3_retriever.retrieval.spans import Span, order_for_prompt
from s3_retriever.retrieval.units import token_sentence_map
from s3_retriever.sae.io import RERANK_HEADS_FILE, shipped_sae_dir
from s3_retriever.text.sentences import split_sentences

__all__ = ["AttentionReranker", "RerankPrompt", "answer_mode_for", "build_prompt", "pick_spans", "pool_prompt",
           "rerank_spans",
           "reranker_for", "shipped_rerank_heads"]

SEPARATOR = "\n\n"
NULL_QUESTION = "N/A"


def _suffix(question: str) -> tuple[str, int, int]:
    """The text read after the pool, and the character range of the question inside it."""
    head = f"{SEPARATOR}Question: "
    return f"{head}{question}\nAnswer:", len(head), len(head) + len(question)


@dataclass
class RerankPrompt:
    """The pool as the model reads it: token ids and the sentence unit of each token."""

    ids: np.ndarray  # [n] context token ids (no sink)
    token_unit: np.ndarray  # [n] unit index, -1 for separators
    n_units: int
    texts: list[str]  # each unit's text


def build_prompt(tokenizer, segments: Sequence[str],
                 unit_bounds: Sequence[Sequence[tuple[int, int]]]) -> RerankPrompt:
    """Join the pool's segments (contiguous text of one document each, in reading order)
    with blank lines and map every token to the sentence unit it starts in.

    Args:
        segments: the pool's texts.
        unit_bounds: per segment, its units' ``(start, end)`` character offsets in it.
    """
    if len(segments) != len(unit_bounds):
        raise ValueError(f"{len(segments)} segments but {len(unit_bounds)} unit bound lists")
    bounds: list[tuple[int, int]] = []
    pos = 0
    for i, (seg, ub) in enumerate(zip(segments, unit_bounds)):
        if i:
            pos += len(SEPARATOR)
        bounds.extend((pos + s, pos + e) for s, e in ub)
        pos += len(seg)
    ids, offsets = tokenize_document(tokenizer, SEPARATOR.join(segments))
    token_unit = token_sentence_map(offsets, bounds)
    # a token that starts in the separator before a unit is not the unit's content
    starts = np.array([s for s, _ in bounds] or [0], dtype=np.int64)
    if len(bounds):
        before = (token_unit >= 0) & (offsets[:, 0] < starts[np.maximum(token_unit, 0)])
        token_unit[before & (offsets[:, 1] <= starts[np.maximum(token_unit, 0)])] = -1
    texts = [seg[s:e] for seg, ub in zip(segments, unit_bounds) for s, e in ub]
    return RerankPrompt(ids, token_unit, len(bounds), texts)


@functools.lru_cache(maxsize=8)
def _read_shipped(model_id: str) -> tuple[tuple[int, int], ...] | None:
    folder = shipped_sae_dir(model_id)
    path = None if folder is None else folder / RERANK_HEADS_FILE
    if path is None or not path.is_file():
        return None
    return tuple((int(a), int(b)) for a, b in storage.read_json(path)["heads"])


def shipped_rerank_heads(model_id: str) -> list[tuple[int, int]]:
    """The ``(layer, head)`` pairs calibrated for in-context reranking with ``model_id``
    (``rerank_heads.json`` beside the model's shipped SAEs, written by
    ``s3-retriever calibrate-rerank``).

    Raises:
        SAEError: none are shipped for the model: give ``rerank_heads`` in the settings.
    """
    found = _read_shipped(model_id)
    if found is None:
        raise SAEError(f"no rerank heads are shipped for model {model_id!r}; find them with "
                       f"`s3-retriever calibrate-rerank` and pass rerank_heads=[[layer, head], "
                       "...] in the settings")
    return list(found)


def answer_mode_for(lm: LoadedModel, settings: Any) -> str:
    """The mode ``answer()`` retrieves with when none is given: ``settings.answer_mode``,
    except ``"rerank"`` for a model without rerank heads (none in the settings, none
    shipped), which answers with ``settings.mode``."""
    if settings.answer_mode == "rerank" and settings.rerank_heads is None \
            and _read_shipped(lm.model_id) is None:
        return settings.mode
    return settings.answer_mode


def reranker_for(lm: LoadedModel, settings: Any) -> AttentionReranker:
    """The reranker an index's :class:`~s3_retriever.config.S3Settings` describe (heads:
    ``rerank_heads``, else the model's shipped ones)."""
    heads = settings.rerank_heads or shipped_rerank_heads(lm.model_id)
    return AttentionReranker(lm, heads, calibrate=settings.rerank_calibrate,
                             hops=settings.rerank_hops, hop_weight=RERANK_HOP_WEIGHT)


class _Stop(Exception):
    """Raised after the last needed layer: the layers above never run."""


_RECENT: OrderedDict[tuple, np.ndarray] = OrderedDict()
_RECENT_LOCK = threading.Lock()
_RECENT_SIZE = 64


class AttentionReranker:
    """Score a pool's sentence units by in-context attention of chosen heads.

    Args:
        lm: the loaded model (its lock is held during the forward passes).
        heads: ``(layer, query_head)`` pairs; the forward stops after the highest layer.
        calibrate: subtract a content-free question's attention (ICR).
        hops: 2 asks a second question of the same reading, the question followed by the
            first hop's best sentence (the bridge of a multi-hop question), and adds its
            min-max scaled scores, times ``hop_weight``, to the first hop's.
    """

    def __init__(self, lm: LoadedModel, heads: Sequence[tuple[int, int]], *,
                 calibrate: bool = True, hops: int = 1, hop_weight: float = 0.5):
        if not heads:
            raise ValueError("the reranker needs at least one head")
        if hops not in (1, 2):
            raise ValueError(f"hops must be 1 or 2, got {hops!r}")
        self.lm = lm
        self.heads = [(int(layer), int(h)) for layer, h in heads]
        self.layers = sorted({layer for layer, _ in self.heads})
        self.calibrate = bool(calibrate)
        self.hops = hops
        self.hop_weight = float(hop_weight)

    def scores(self, question: str, prompt: RerankPrompt) -> np.ndarray:
        """``[n_units]`` scores: summed over the heads (see :meth:`head_scores`). The last
        few results are kept (a search repeated at another budget re-reads nothing)."""
        key = (self.lm.fingerprint, str(self.lm.dtype), tuple(self.heads), self.calibrate,
               self.hops, self.hop_weight, question,
               hashlib.sha1(prompt.ids.tobytes()).hexdigest())
        with _RECENT_LOCK:
            hit = _RECENT.get(key)
            if hit is not None:
                _RECENT.move_to_end(key)
                return hit
        out = (self.head_scores(question, prompt).sum(axis=0) if self.hops == 1
               else self._two_hops(question, prompt))
        with _RECENT_LOCK:
            _RECENT[key] = out
            while len(_RECENT) > _RECENT_SIZE:
                _RECENT.popitem(last=False)
        return out

    def _two_hops(self, question: str, prompt: RerankPrompt) -> np.ndarray:
        asked = [question] + ([NULL_QUESTION] if self.calibrate else [])

        def first(res: list[np.ndarray]) -> np.ndarray:
            return (res[0] - res[1] if self.calibrate else res[0]).sum(axis=0)

        def follow_up(res: list[np.ndarray]) -> list[str]:
            return [f"{question} {prompt.texts[int(np.argmax(first(res)))]}"]

        res = self.attention_on_units(prompt, asked, then=follow_up)
        second = (res[-1] - res[1] if self.calibrate else res[-1]).sum(axis=0)
        return normalize(first(res)) + self.hop_weight * normalize(second)

    def head_scores(self, question: str, prompt: RerankPrompt) -> np.ndarray:
        """``[n_heads, n_units]``: per head, the mean over the question's tokens of the
        attention weight on each unit's tokens (minus the content-free question's, when
        calibrating). Units without tokens score 0."""
        if not self.calibrate:
            return self.attention_on_units(prompt, [question])[0]
        asked, null = self.attention_on_units(prompt, [question, NULL_QUESTION])
        return asked - null

    def attention_on_units(self, prompt: RerankPrompt, questions: Sequence[str],
                           then: Callable[[list[np.ndarray]], Sequence[str]] | None = None
                           ) -> list[np.ndarray]:
        """Per question, ``[n_heads, n_units]`` raw attention on the units: the pool is
        read once for all of them. ``then``: given those results, more questions to ask of
        the same reading (a second hop); their results follow."""
        lm = self.lm
        sink = len(lm.sink_ids)
        keep = prompt.token_unit >= 0

        def on_units(w: np.ndarray) -> np.ndarray:  # [n_heads, n_ctx] -> [n_heads, n_units]
            s = np.zeros((len(self.heads), prompt.n_units))
            for i in range(len(self.heads)):
                np.add.at(s[i], prompt.token_unit[keep], w[i, sink:][keep])
            return s

        with lm.lock, torch.inference_mode():
            cache, n_ctx = self._read_context(prompt.ids)
            out = [on_units(self._question_weights(cache, n_ctx, q)) for q in questions]
            if then is not None:
                out += [on_units(self._question_weights(cache, n_ctx, q)) for q in then(out)]
        del cache
        return out

    def _read_context(self, ids: np.ndarray) -> tuple[DynamicCache, int]:
        """Run the sink + pool through the layers up to the last head's; keep their cache."""
        model = self.lm.model
        x = self.lm.input_tensor(ids)
        cache = DynamicCache()
        with _StopAfter(model, self.layers[-1]):
            try:
                model(input_ids=x, cache=cache, use_cache=True)
            except _Stop:
                pass
        return cache, int(x.shape[1])

    def _question_weights(self, cache: DynamicCache, n_ctx: int, question: str) -> np.ndarray:
        """Attention of the question's tokens on the context: ``[n_heads, n_ctx]``."""
        model = self.lm.model
        text, q0, q1 = _suffix(question)
        ids, offsets = tokenize_document(self.lm.tokenizer, text)
        in_q = (offsets[:, 1] > q0) & (offsets[:, 0] < q1)
        if not in_q.any():
            in_q[:] = True
        extra = cache.get_seq_length() - n_ctx
        if extra > 0:  # the previous question's tokens
            cache.crop(-extra)
        x = torch.as_tensor(ids, dtype=torch.long, device=self.lm.device).unsqueeze(0)
        pos = torch.arange(n_ctx, n_ctx + x.shape[1], device=x.device).unsqueeze(0)
        weights: dict[int, torch.Tensor] = {}
        layers = decoder_layers(model)
        handles = []

        def grab(layer: int):
            def hook(_mod, _inp, out):
                if out[1] is None or out[1].shape[-1] != n_ctx + x.shape[1]:
                    raise ValueError(f"layer {layer} does not attend over the whole pool "
                                     "(a sliding-window layer?): choose heads of global "
                                     "attention layers")
                weights[layer] = out[1][0, :, :, :n_ctx].float()  # [heads, q, n_ctx]
            return hook

        cfg = getattr(model.config, "text_config", None) or model.config
        before = cfg._attn_implementation
        try:
            for layer in self.layers:
                attn = getattr(layers[layer], "self_attn", None) or layers[layer].attention
                handles.append(attn.register_forward_hook(grab(layer)))
            cfg._attn_implementation = "eager"
            with _StopAfter(model, self.layers[-1]):
                try:
                    model(input_ids=x, position_ids=pos, cache=cache, use_cache=True)
                except _Stop:
                    pass
        finally:
            cfg._attn_implementation = before
            for h in handles:
                h.remove()
        sel = torch.as_tensor(np.flatnonzero(in_q), device=x.device)
        rows = [weights[layer][h].index_select(0, sel).mean(dim=0) for layer, h in self.heads]
        return torch.stack(rows).cpu().numpy().astype(np.float64)


class _StopAfter:
    """Context manager: a hook on decoder layer ``layer`` that stops the forward pass."""

    def __init__(self, model, layer: int):
        self.layer = decoder_layers(model)[layer]
        self.handle = None

    def __enter__(self) -> _StopAfter:
        def stop(_mod, _inp, _out):
            raise _Stop
        self.handle = self.layer.register_forward_hook(stop)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


TokenBounds = Callable[[str, int, int], tuple[int, int]]


def rerank_spans(reranker: AttentionReranker, question: str, pool: Sequence[Span], *,
                 k: int | None, budget_tokens: int | None,
                 doc_order: Mapping[str, int] | None = None,
                 token_bounds: TokenBounds | None = None) -> list[Span]:
    """Re-rank the sentences of ``pool`` by in-context attention; best spans first.

    The pool is read in document order (``doc_order``: doc id -> rank), each span cut into
    sentences. The best sentences fill ``budget_tokens`` and stop at ``k`` (either may be
    None, not both); picks that are neighbours in one pool span merge into one span whose
    score is its best sentence's.

    Args:
        token_bounds: ``(doc_id, start_char, end_char) -> (start_token, end_token)`` in the
            document's own tokenisation: sentences are then counted as the index counts
            them and the spans carry token bounds; None: counted as the reranker reads them.
    """
    pool, pieces, prompt = pool_prompt(reranker.lm.tokenizer, pool, doc_order)
    if prompt.n_units == 0:
        return []
    return pick_spans(pool, pieces, prompt, reranker.scores(question, prompt), k=k,
                      budget_tokens=budget_tokens, token_bounds=token_bounds)


def pool_prompt(tokenizer, pool: Sequence[Span], doc_order: Mapping[str, int] | None = None
                ) -> tuple[list[Span], list[list[tuple[int, int]]], RerankPrompt]:
    """The pool in reading order, each span's sentences (offsets in its text), and the
    prompt the reranker reads."""
    pool = order_for_prompt(pool, doc_order)
    pieces = [split_sentences(s.text) or [(0, len(s.text))] for s in pool]
    return pool, pieces, build_prompt(tokenizer, [s.text for s in pool], pieces)


def pick_spans(pool: Sequence[Span], pieces: Sequence[Sequence[tuple[int, int]]],
               prompt: RerankPrompt, scores: np.ndarray, *, k: int | None,
               budget_tokens: int | None, token_bounds: TokenBounds | None = None
               ) -> list[Span]:
    """The best-scoring sentences of the pool that fit, as spans (see :func:`rerank_spans`)."""
    owner = np.repeat(np.arange(len(pool)), [len(p) for p in pieces])
    local = np.concatenate([np.arange(len(p)) for p in pieces])
    if token_bounds is None:
        tokens = np.bincount(prompt.token_unit[prompt.token_unit >= 0],
                             minlength=prompt.n_units)
    else:
        tokens = np.zeros(prompt.n_units, dtype=np.int64)
        for u, (o, (a, b)) in enumerate(zip(owner, (ab for p in pieces for ab in p))):
            first, end = token_bounds(pool[o].doc_id, pool[o].start_char + a,
                                      pool[o].start_char + b)
            tokens[u] = end - first
    order = np.argsort(-scores, kind="stable")
    order = order[tokens[order] > 0]
    if budget_tokens is not None and order.size:
        u = int(order[np.argmin(tokens[order])])
        check_budget(budget_tokens, int(tokens[u]), f"a sentence of {pool[owner[u]].id}")
    kept = order[greedy_fill(tokens[order], budget_tokens,
                             k=k if budget_tokens is None else None)]
    picked = sorted(kept.tolist())
    out: list[Span] = []
    run: list[int] = []
    for u in picked + [-1]:
        if run and (u < 0 or owner[u] != owner[run[-1]] or local[u] != local[run[-1]] + 1):
            src, cut = pool[owner[run[0]]], pieces[owner[run[0]]]
            a, b = cut[local[run[0]]][0], cut[local[run[-1]]][1]
            tb = (None, None) if token_bounds is None else token_bounds(
                src.doc_id, src.start_char + a, src.start_char + b)
            out.append(replace(src, start_char=src.start_char + a, end_char=src.start_char + b,
                               text=src.text[a:b], score=float(scores[run].max()),
                               s3_score=None, bm25_score=None, metadata=dict(src.metadata),
                               start_token=tb[0], end_token=tb[1]))
            run = []
        if u >= 0:
            run.append(u)
    out.sort(key=lambda s: -s.score)
    return out[:k] if k is not None else out
