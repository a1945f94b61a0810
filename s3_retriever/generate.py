"""KV-free generation: a fresh, short prompt of retrieved spans + the question.

The document's KV cache never exists: the model only ever sees the spans (bounded by the
retrieval budget) and the question, so the memory of answering does not depend on how much
text is indexed. Replies come whole (:func:`generate_reply`) or token by token
(:func:`stream_text`), with the usual chat options (max tokens, temperature, top_p, stop
strings, timeout), always under the model's lock.

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

import asyncio
import contextlib
import math
import numbers
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from s3_retriever import validate
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


# ----------------------------------------------------------------- generation options
#: The options :func:`generate_reply`, :func:`generate_text` and :func:`stream_text` take,
#: besides ``lock``; the adapters accept the same names (``max_tokens`` for ``max_new_tokens``).
GENERATION_OPTIONS = ("max_new_tokens", "temperature", "top_p", "stop", "timeout", "seed",
                      "max_retries")


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            not math.isfinite(value):
        raise InvalidInputError(f"{what} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class _Options:
    max_new_tokens: int
    temperature: float | None
    top_p: float | None
    stop: tuple[str, ...]
    timeout: float | None
    seed: int | None
    max_retries: int


def _options(max_new_tokens: Any = MAX_NEW_TOKENS, temperature: Any = None, top_p: Any = None,
             stop: Any = None, timeout: Any = None, seed: Any = None, max_retries: Any = 0,
             *, max_name: str = "max_new_tokens") -> _Options:
    """Check every generation option; raise :class:`InvalidInputError` naming a bad one."""
    max_new_tokens = validate.positive_int(max_new_tokens, max_name)
    if temperature is not None and _number(temperature, "temperature") < 0:
        raise InvalidInputError(f"temperature must be >= 0 (0 or None: greedy), got {temperature}")
    if top_p is not None and not 0 < _number(top_p, "top_p") <= 1:
        raise InvalidInputError(f"top_p must be in (0, 1], got {top_p}")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    elif isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop):
        stop = tuple(stop)
    else:
        raise InvalidInputError(f"stop must be a str or a list of str, got {stop!r}")
    if "" in stop:
        raise InvalidInputError("stop strings must be non-empty")
    if timeout is not None and _number(timeout, "timeout") <= 0:
        raise InvalidInputError(f"timeout must be > 0 seconds (None: no limit), got {timeout}")
    if seed is not None and not validate.is_int(seed):
        raise InvalidInputError(f"seed must be an integer, got {seed!r}")
    if not validate.is_int(max_retries) or max_retries < 0:
        raise InvalidInputError(f"max_retries must be an integer >= 0, got {max_retries!r}")
    return _Options(max_new_tokens, None if temperature is None else float(temperature),
                    None if top_p is None else float(top_p), stop,
                    None if timeout is None else float(timeout),
                    None if seed is None else int(seed), int(max_retries))


def generation_options(defaults: Mapping[str, Any],
                       overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``defaults`` updated by per-call ``overrides``, checked: the keyword arguments of
    :func:`generate_reply` / :func:`stream_text`.

    Both mappings take the names of :data:`GENERATION_OPTIONS`, and ``max_tokens`` for
    ``max_new_tokens``. An unknown name or a bad value raises :class:`InvalidInputError`.
    This is how the LangChain and LlamaIndex wrappers read their fields and per-call options.

    Example:
        >>> generation_options({"max_tokens": 32, "stop": ["\\n"]}, {"temperature": 0.7})
        ... # doctest: +NORMALIZE_WHITESPACE
        {'max_new_tokens': 32, 'temperature': 0.7, 'top_p': None, 'stop': ['\\n'],
         'timeout': None, 'seed': None, 'max_retries': 0}
    """
    merged: dict[str, Any] = {}
    max_name = "max_new_tokens"  # the name the caller used, for error messages
    for layer in (defaults, overrides or {}):
        layer = dict(layer)
        if "max_tokens" in layer:
            if "max_new_tokens" in layer:
                raise InvalidInputError("give max_tokens or max_new_tokens, not both")
            layer["max_new_tokens"] = layer.pop("max_tokens")
            max_name = "max_tokens"
        elif "max_new_tokens" in layer:
            max_name = "max_new_tokens"
        unknown = sorted(set(layer) - set(GENERATION_OPTIONS))
        if unknown:
            raise InvalidInputError(
                f"unknown generation arguments {unknown}; accepted: max_tokens (or "
                f"max_new_tokens), {', '.join(GENERATION_OPTIONS[1:])}")
        merged.update(layer)
    opts = _options(**merged, max_name=max_name)
    return {"max_new_tokens": opts.max_new_tokens, "temperature": opts.temperature,
            "top_p": opts.top_p, "stop": list(opts.stop), "timeout": opts.timeout,
            "seed": opts.seed, "max_retries": opts.max_retries}


# ----------------------------------------------------------------- the reply's text
class _Reply:
    """The reply's text as tokens arrive: leading and trailing whitespace dropped, cut
    before the first stop string. :meth:`update` returns only text that can no longer
    change (a trailing space or the start of a stop string is held back), so the deltas
    joined always equal the final text."""

    def __init__(self, stop: tuple[str, ...]) -> None:
        self.stop = stop
        self.text = ""  # the text given out so far
        self.stopped = False  # a stop string was reached

    def update(self, raw: str, final: bool = False) -> str:
        """The new text of the reply, given its whole raw decoding so far."""
        if self.stopped:
            return ""
        body = raw.lstrip()
        cuts = [i for i in (body.find(s) for s in self.stop) if i >= 0]
        if cuts:
            body, final, self.stopped = body[:min(cuts)], True, True
        if final:
            safe = len(body.rstrip())
        else:
            body = body.rstrip("\ufffd")  # an incomplete UTF-8 character: wait for the rest
            hold = max((k for s in self.stop for k in range(1, len(s))
                        if body.endswith(s[:k])), default=0)
            safe = len(body[:len(body) - hold].rstrip())
        delta = body[len(self.text):safe]
        self.text += delta
        return delta


class _Observer(StoppingCriteria):
    """Called by ``model.generate`` after each new token: gives out the new text, and
    halts at a stop string, at the deadline or when the reader is gone."""

    def __init__(self, tokenizer: Any, n_prompt: int, eos: set[int], opts: _Options,
                 emit: Callable[[str], None], cancel: threading.Event,
                 deadline: float | None) -> None:
        self.tok, self.n_prompt, self.eos, self.opts = tokenizer, n_prompt, eos, opts
        self.emit, self.cancel, self.deadline = emit, cancel, deadline
        self.reply = _Reply(opts.stop)
        self.ids: list[int] = []
        self.ended = self.halted = self.timed_out = False

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        if not (self.ended or self.halted):
            self.ids = input_ids[0, self.n_prompt:].tolist()
            self.ended = bool(self.ids) and self.ids[-1] in self.eos
            self.flush(final=self.ended)
            if self.reply.stopped:
                self.halted = True
            elif (self.deadline is not None and time.monotonic() > self.deadline
                  and not self.ended and len(self.ids) < self.opts.max_new_tokens):
                self.halted = self.timed_out = True
            elif self.cancel.is_set():
                self.halted = True
        return torch.full((input_ids.shape[0],), self.halted, dtype=torch.bool,
                          device=input_ids.device)

    def flush(self, final: bool) -> None:
        delta = self.reply.update(self.tok.decode(self.ids, skip_special_tokens=True), final)
        if delta:
            self.emit(delta)


class _Cancelled(Exception):
    """The reader of a stream went away: nothing to report."""


@dataclass
class Generation:
    """A generated reply and what it cost.

    Attributes:
        text: the reply, stripped, cut before the first stop string.
        prompt_tokens: tokens of the prompt (the chat template's rendering of the messages).
        output_tokens: tokens generated (the end-of-turn token included); at most
            ``max_new_tokens``.
        finish_reason: ``"stop"`` (end of turn or a stop string) or ``"length"``
            (``max_new_tokens`` reached).
    """

    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str


def _eos_ids(tok: Any) -> set[int]:
    return {t for t in {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
            if isinstance(t, int) and t >= 0}


def _checked_prompt(lm: LoadedModel, messages: list[dict[str, str]],
                    opts: _Options) -> list[int]:
    ids = prompt_ids(lm, messages)
    if len(ids) + opts.max_new_tokens > lm.max_length:
        raise InvalidInputError(f"the prompt is {len(ids)} tokens; with {opts.max_new_tokens} "
                                f"new tokens it exceeds the model's context of {lm.max_length}: "
                                "lower the budget")
    return ids


def _timeout_error(opts: _Options, what: str) -> TimeoutError:
    return TimeoutError(f"generation exceeded timeout={opts.timeout:g} s {what}; raise the "
                        "timeout, lower max_new_tokens or pass max_retries")


@contextlib.contextmanager
def _holding(lock: Any, deadline: float | None, cancel: threading.Event | None,
             opts: _Options) -> Iterator[None]:
    """Hold ``lock``, waiting at most until ``deadline``, and giving up if ``cancel`` is set."""
    if not hasattr(lock, "acquire") or (deadline is None and cancel is None):
        with lock:
            yield
        return
    while not lock.acquire(blocking=False):  # a free model is taken however short the timeout
        wait = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
        if wait <= 0:
            raise _timeout_error(opts, "waiting for the model (busy with another search "
                                       "or generation)")
        if lock.acquire(timeout=wait):
            break
        if cancel is not None and cancel.is_set():
            raise _Cancelled
    try:
        yield
    finally:
        lock.release()


def _run(lm: LoadedModel, ids: list[int], opts: _Options, lock: Any,
         emit: Callable[[str], None], cancel: threading.Event | None) -> Generation:
    """One generation of ``ids`` under ``lock``: text to ``emit`` as it is produced."""
    deadline = None if opts.timeout is None else time.monotonic() + opts.timeout
    tok = lm.tokenizer
    eos = _eos_ids(tok)
    observer = _Observer(tok, len(ids), eos, opts, emit, cancel or threading.Event(), deadline)
    x = torch.tensor([ids], device=lm.device)
    sampling = bool(opts.temperature)
    kwargs: dict[str, Any] = {"do_sample": sampling}
    if sampling:  # top_k=0: plain temperature / nucleus sampling, as other chat APIs do
        kwargs.update(temperature=opts.temperature, top_p=opts.top_p or 1.0, top_k=0)
    pad = tok.pad_token_id if tok.pad_token_id is not None else min(eos, default=None)
    devices = [lm.device.index or 0] if lm.device.type == "cuda" else []
    with _holding(lock, deadline, cancel, opts), torch.inference_mode(), \
            torch.random.fork_rng(devices=devices, enabled=opts.seed is not None):
        if opts.seed is not None:
            torch.manual_seed(opts.seed)
        lm.model.generate(x, attention_mask=torch.ones_like(x),
                          max_new_tokens=opts.max_new_tokens, eos_token_id=sorted(eos) or None,
                          pad_token_id=pad, stopping_criteria=StoppingCriteriaList([observer]),
                          **kwargs)
    if observer.reply.stopped or observer.ended:
        finish = "stop"
    elif observer.timed_out:
        raise _timeout_error(opts, f"after {len(observer.ids)} tokens")
    elif cancel is not None and cancel.is_set():
        raise _Cancelled
    else:
        observer.flush(final=True)
        finish = "length"
    return Generation(observer.reply.text, len(ids), len(observer.ids), finish)


def generate_reply(lm: LoadedModel, messages: list[dict[str, str]], *,
                   max_new_tokens: int = MAX_NEW_TOKENS, temperature: float | None = None,
                   top_p: float | None = None, stop: str | Sequence[str] | None = None,
                   timeout: float | None = None, seed: int | None = None,
                   max_retries: int = 0, lock: Any = None) -> Generation:
    """Generate a reply to chat ``messages`` through the model's chat template.

    Args:
        max_new_tokens: the most tokens generated.
        temperature: ``None`` or 0: greedy (deterministic); > 0: sampling at that temperature.
        top_p: nucleus sampling mass (only when sampling).
        stop: a string or strings; the reply is cut before the first one and generation
            stops there.
        timeout: seconds for the whole call, waiting for the model included; past it a
            ``TimeoutError`` is raised.
        seed: seeds the sampling, for reproducible replies.
        max_retries: attempts more after a timeout.
        lock: held for the whole generation (default: the model's own lock), so it never
            overlaps a scan, a search or another generation.

    Example:
        >>> from s3_retriever import load_model
        >>> lm = load_model("smollm2-135m")
        >>> g = generate_reply(lm, [{"role": "user", "content": "Name a colour."}],
        ...                    max_new_tokens=8)
        >>> g.output_tokens <= 8 and g.finish_reason in ("stop", "length")
        True
    """
    opts = _options(max_new_tokens, temperature, top_p, stop, timeout, seed, max_retries)
    ids = _checked_prompt(lm, messages, opts)
    for attempt in range(opts.max_retries + 1):
        try:
            return _run(lm, ids, opts, lm.lock if lock is None else lock, _ignore, None)
        except TimeoutError:
            if attempt == opts.max_retries:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _ignore(text: str) -> None:
    pass


def generate_text(lm: LoadedModel, messages: list[dict[str, str]], *,
                  max_new_tokens: int = MAX_NEW_TOKENS, temperature: float | None = None,
                  top_p: float | None = None, stop: str | Sequence[str] | None = None,
                  timeout: float | None = None, seed: int | None = None,
                  max_retries: int = 0, lock: Any = None) -> tuple[str, int]:
    """:func:`generate_reply` as ``(text, prompt token count)``; greedy by default.

    Holds ``lock`` (default: the model's own lock) so it never overlaps a scan or search.
    """
    g = generate_reply(lm, messages, max_new_tokens=max_new_tokens, temperature=temperature,
                       top_p=top_p, stop=stop, timeout=timeout, seed=seed,
                       max_retries=max_retries, lock=lock)
    return g.text, g.prompt_tokens


_END = object()


def _work(lm: LoadedModel, ids: list[int], opts: _Options, lock: Any,
          put: Callable[[Any], None], cancel: threading.Event) -> None:
    """A stream's worker: text, then the :class:`Generation` (or the error, or ``_END``)."""
    emitted = False

    def emit(text: str) -> None:
        nonlocal emitted
        emitted = True
        put(text)

    try:
        for attempt in range(opts.max_retries + 1):
            try:
                put(_run(lm, ids, opts, lock, emit, cancel))
                return
            except TimeoutError:
                if emitted or attempt == opts.max_retries:
                    raise
    except _Cancelled:
        put(_END)
    except BaseException as e:  # noqa: BLE001 - handed to the reader, raised there
        put(e)


class TextStream:
    """The text of a reply as it is generated: iterate it (``for`` or ``async for``) for the
    new text of each step; :attr:`generation` gives the counts once it is exhausted.

    Generation runs in a worker thread that holds the model's lock throughout; it starts
    at the first ``next`` and stops at the next token once the stream is closed
    (``close()``, the end of a ``with`` block, or the stream dropped). Made by
    :func:`stream_text`.

    Attributes:
        prompt_tokens: tokens of the prompt.
        text: the text given out so far.
        generation: the :class:`Generation` once the stream is exhausted, else ``None``.
    """

    def __init__(self, lm: LoadedModel, ids: list[int], opts: _Options, lock: Any) -> None:
        self.prompt_tokens = len(ids)
        self.text = ""
        self.generation: Generation | None = None
        self._lm, self._ids, self._opts, self._lock = lm, ids, opts, lock
        self._cancel = threading.Event()
        self._queue: queue.SimpleQueue[Any] | asyncio.Queue[Any] | None = None
        self._done = False

    def _start(self, put: Callable[[Any], None]) -> None:
        # The worker holds no reference to the stream, so dropping it cancels (``__del__``).
        threading.Thread(target=_work, name="s3-generate", daemon=True,
                         args=(self._lm, self._ids, self._opts, self._lock, put,
                               self._cancel)).start()

    # --------------------------------------------------------------- reader side
    def _take(self, item: Any) -> str:
        if isinstance(item, str):
            self.text += item
            return item
        self._done = True
        if isinstance(item, Generation):
            self.generation = item
        if isinstance(item, BaseException):
            raise item
        raise StopIteration

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        if self._done:
            raise StopIteration
        if self._queue is None:
            self._queue = q = queue.SimpleQueue()
            self._start(q.put)
        if not isinstance(self._queue, queue.SimpleQueue):
            raise RuntimeError("this stream is being read with async for")
        return self._take(self._queue.get())

    def __aiter__(self) -> TextStream:
        return self

    async def __anext__(self) -> str:
        if self._done:
            raise StopAsyncIteration
        if self._queue is None:
            loop = asyncio.get_running_loop()
            self._queue = q = asyncio.Queue()
            cancel = self._cancel

            def put(item: Any) -> None:
                try:
                    loop.call_soon_threadsafe(q.put_nowait, item)
                except RuntimeError:  # the event loop is closed: nobody is reading
                    cancel.set()

            self._start(put)
        if not isinstance(self._queue, asyncio.Queue):
            raise RuntimeError("this stream is being read with a plain for")
        try:
            item = await self._queue.get()
        except BaseException:  # cancelled: stop generating
            self.close()
            raise
        try:
            return self._take(item)
        except StopIteration:
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Stop generating (at the next token) and end the stream."""
        self._cancel.set()
        self._done = True

    def __enter__(self) -> TextStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        self._cancel.set()


def stream_text(lm: LoadedModel, messages: list[dict[str, str]], *,
                max_new_tokens: int = MAX_NEW_TOKENS, temperature: float | None = None,
                top_p: float | None = None, stop: str | Sequence[str] | None = None,
                timeout: float | None = None, seed: int | None = None,
                max_retries: int = 0, lock: Any = None) -> TextStream:
    """:func:`generate_reply`, streamed: a :class:`TextStream` of text deltas.

    The options are those of :func:`generate_reply` and are checked now; the deltas joined
    equal the reply :func:`generate_reply` gives for the same options. A timeout raises
    ``TimeoutError`` from the loop (after the text produced in time); retries happen only
    while no text was given out. Do not call it while holding the model's lock yourself:
    generation runs in another thread, which needs it.

    Example:
        >>> from s3_retriever import load_model
        >>> lm = load_model("smollm2-135m")
        >>> stream = stream_text(lm, [{"role": "user", "content": "Count to five."}],
        ...                      max_new_tokens=12)
        >>> pieces = list(stream)
        >>> "".join(pieces) == stream.generation.text == stream.text
        True
        >>> stream.generation.output_tokens <= 12
        True
    """
    opts = _options(max_new_tokens, temperature, top_p, stop, timeout, seed, max_retries)
    return TextStream(lm, _checked_prompt(lm, messages, opts), opts,
                      lm.lock if lock is None else lock)


def answer_from_spans(lm: LoadedModel, question: str, spans: Sequence[Span], *,
                      max_new_tokens: int = MAX_NEW_TOKENS, doc_order: dict[str, int] | None = None,
                      lock: threading.Lock | threading.RLock | None = None) -> Answer:
    """Lay ``spans`` out in document order, prompt the model with them and the question;
    the reply is trimmed to a short answer (:func:`clean_answer`)."""
    ordered = order_for_prompt(spans, doc_order)
    text, n = generate_text(lm, build_messages(question, ordered), max_new_tokens=max_new_tokens,
                       lock=lock)
    return Answer(text=clean_answer(text), spans=list(ordered), prompt_tokens=n)
