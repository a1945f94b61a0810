"""KV-free generation: a fresh, short prompt of retrieved spans + the question.

The document's KV cache never exists: the model only ever sees the spans (bounded by the
retrieval budget) and the question, so the memory of answering does not depend on how much
text is indexed.

Example:
    >>> from s3_retriever.retrieval.spans import Span, order_for_prompt
    >>> spans = [Span("d", 0, 5, "Paris", 1.0)]
    >>> print(build_messages("Capital of France?", spans)[1]["content"])
    Context:
    [1] Paris
    <BLANKLINE>
    Question: Capital of France?
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from s3_retriever.config import MAX_NEW_TOKENS
from s3_retriever.errors import InvalidInputError
from s3_retriever.model.loading import LoadedModel
from s3_retriever.retrieval.spans import Span, order_for_prompt

SYSTEM_PROMPT = ("Answer the question using only the context. Reply with a short answer "
                 "(a few words), no explanation.")


_PREFIXES = re.compile(r"^\s*(?:the\s+)?(?:final\s+|short\s+)?answer\b\s*(?:is\b)?\s*[:\-]?\s*",
                       re.IGNORECASE)


def clean_answer(text: str) -> str:
    """The first line of a reply, without an "Answer:"/"The answer is" lead-in or a final
    full stop (small models wrap short answers in such phrases).

    Example:
        >>> clean_answer("The answer is: Warsaw.")
        'Warsaw'
    """
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    out = _PREFIXES.sub("", first).strip()
    return out[:-1].rstrip() if out.endswith(".") and not out.endswith("..") else out


@dataclass
class Answer:
    """A generated answer and the evidence it was generated from."""

    text: str
    spans: list[Span] = field(default_factory=list)
    prompt_tokens: int = 0

    def __str__(self) -> str:
        return self.text


def build_messages(question: str, spans: Sequence[Span],
                   system: str = SYSTEM_PROMPT) -> list[dict[str, str]]:
    """Chat messages: the system instruction, then numbered context spans and the question."""
    context = "\n".join(f"[{i}] {' '.join(s.text.split())}" for i, s in enumerate(spans, 1))
    return [{"role": "system", "content": system},
            {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {question}"}]


def prompt_ids(lm: LoadedModel, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the prompt: the chat template when the tokenizer has one."""
    tok = lm.tokenizer
    if getattr(tok, "chat_template", None):
        enc = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(enc, dict) or hasattr(enc, "keys"):
            enc = enc["input_ids"]
        return list(enc)
    text = "\n\n".join(m["content"] for m in messages) + "\n\nAnswer:"
    return tok(text, add_special_tokens=True)["input_ids"]


def generate_text(lm: LoadedModel, messages: list[dict[str, str]], *,
             max_new_tokens: int = MAX_NEW_TOKENS,
             lock: threading.Lock | threading.RLock | None = None) -> tuple[str, int]:
    """Greedy generation from chat messages; returns (text, prompt token count).

    Holds ``lock`` (default: the model's own lock) so it never overlaps a scan or search.
    """
    ids = prompt_ids(lm, messages)
    if len(ids) + max_new_tokens > lm.max_length:
        raise InvalidInputError(f"the prompt is {len(ids)} tokens; with {max_new_tokens} new tokens "
                         f"it exceeds the model's context of {lm.max_length}: lower the budget")
    x = torch.tensor([ids], device=lm.device)
    tok = lm.tokenizer
    eos = [t for t in {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
           if isinstance(t, int) and t >= 0]
    with lock if lock is not None else lm.lock, torch.inference_mode():
        out = lm.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                do_sample=False, eos_token_id=eos or None,
                                pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, len(ids):], skip_special_tokens=True).strip()
    return text, len(ids)


def answer_from_spans(lm: LoadedModel, question: str, spans: Sequence[Span], *,
                      max_new_tokens: int = MAX_NEW_TOKENS, doc_order: dict[str, int] | None = None,
                      lock: threading.Lock | threading.RLock | None = None) -> Answer:
    """Lay ``spans`` out in document order, prompt the model with them and the question;
    the reply is trimmed to a short answer (:func:`clean_answer`)."""
    ordered = order_for_prompt(spans, doc_order)
    text, n = generate_text(lm, build_messages(question, ordered), max_new_tokens=max_new_tokens,
                       lock=lock)
    return Answer(text=clean_answer(text), spans=list(ordered), prompt_tokens=n)
