"""Generation through the wrappers, on the real model: LangChain's ChatS3 and LlamaIndex's
S3LocalLLM stream token by token and take the same options, applied the same way."""

# Both wrappers sit on s3_retriever.generate (generate_reply, stream_text). The tests check
# what holds on every machine: streamed text equals the non-streamed reply, stop strings
# cut it, sampling is seeded, max_tokens caps it, timeouts raise, the model's lock is held
# for the whole generation. Generated wording is never pinned (bf16 and fp32 differ).

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time

import pytest
import torch
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_s3 import ChatS3
from langchain_s3.chat_models import to_chat_messages
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from llama_index.core.llms import ChatMessage
from llama_index.retrievers.s3 import S3LocalLLM

from s3_retriever import S3Index
from s3_retriever.generate import generate_reply, prompt_ids, stream_text

pytestmark = pytest.mark.model

LONG = "Count from one to fifty, separated by commas."  # a reply longer than any cap here
MESSAGES = [{"role": "user", "content": LONG}]


N = 8  # the wrappers' max_tokens in these tests: short replies keep the suite fast


@pytest.fixture(scope="module")
def chat(lm):
    return ChatS3(model=lm, max_tokens=N)


@pytest.fixture(scope="module")
def llm(lm):
    return S3LocalLLM(lm, max_tokens=N)


@pytest.fixture(scope="module")
def greedy(lm):
    """The greedy reply to ``LONG`` (N tokens), non-streamed: what every wrapper must give."""
    return generate_reply(lm, MESSAGES, max_new_tokens=N)


@contextlib.contextmanager
def recorded_forward(lm, delay: float = 0.0):
    """Record ``(thread name, start, end)`` of every forward pass, each made ``delay``
    seconds slower (to make a generation last)."""
    calls: list[tuple[str, float, float]] = []
    real = lm.model.forward

    @functools.wraps(real)
    def forward(*args, **kwargs):
        start = time.monotonic()
        try:
            time.sleep(delay)
            return real(*args, **kwargs)
        finally:
            calls.append((threading.current_thread().name, start, time.monotonic()))

    lm.model.forward = forward
    try:
        yield calls
    finally:
        del lm.model.forward


def lock_free(lm, wait: float = 0.0) -> bool:
    """Whether another thread can take the model's lock (within ``wait`` seconds)."""
    got = []

    def take():
        ok = lm.lock.acquire(timeout=wait) if wait else lm.lock.acquire(blocking=False)
        if ok:
            lm.lock.release()
        got.append(ok)

    t = threading.Thread(target=take)
    t.start()
    t.join()
    return got[0]


# ---------------------------------------------------------------- the standard suites
class TestChatS3Unit(ChatModelUnitTests):
    """langchain-tests' chat model unit suite."""

    _lm = None

    @pytest.fixture(autouse=True)
    def _shared_model(self, lm):
        type(self)._lm = lm

    @property
    def chat_model_class(self) -> type[ChatS3]:
        return ChatS3

    @property
    def chat_model_params(self) -> dict:
        return {"model": self._lm}

    @property
    def standard_chat_model_params(self) -> dict:
        params = dict(super().standard_chat_model_params)
        params.pop("api_key")  # a local model has no API key (ChatS3 forbids unknown fields)
        return params

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False


class TestChatS3Integration(ChatModelIntegrationTests):
    """langchain-tests' chat model integration suite, on the real model."""

    pytestmark = [pytest.mark.asyncio,
                  pytest.mark.filterwarnings("ignore:The test <Function test_.*is marked with "
                                             "'@pytest.mark.asyncio':pytest.PytestWarning")]
    _lm = None

    @pytest.fixture(autouse=True)
    def _shared_model(self, lm):
        type(self)._lm = lm

    @property
    def chat_model_class(self) -> type[ChatS3]:
        return ChatS3

    @property
    def chat_model_params(self) -> dict:
        return {"model": self._lm, "max_tokens": N}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False  # one ChatS3 runs one loaded model

    @property
    def returns_usage_metadata(self) -> bool:
        return True


# ---------------------------------------------------------------- streaming
def test_stream_text_equals_the_reply(lm, greedy):
    stream = stream_text(lm, MESSAGES, max_new_tokens=N)
    deltas = list(stream)
    assert len(deltas) > 1 and all(deltas)
    assert "".join(deltas) == stream.text == greedy.text
    assert stream.generation == greedy
    assert greedy.prompt_tokens == len(prompt_ids(lm, MESSAGES))
    assert greedy.output_tokens == N and greedy.finish_reason == "length"


def _usage(g):
    return {"input_tokens": g.prompt_tokens, "output_tokens": g.output_tokens,
            "total_tokens": g.prompt_tokens + g.output_tokens}


def _check_chat_chunks(chunks, greedy):
    texts = [c.content for c in chunks if c.content]
    assert len(texts) > 1  # token by token, not the reply in one piece
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert full.content == "".join(texts) == greedy.text
    last = chunks[-1]
    assert last.chunk_position == "last" and last.content == ""
    assert last.usage_metadata == _usage(greedy)  # the counts, once, at the end
    assert all(c.usage_metadata is None for c in chunks[:-1])
    assert full.response_metadata["finish_reason"] == greedy.finish_reason
    assert full.response_metadata["model_name"] == "smollm2-135m"


def test_chat_stream_and_invoke_give_the_reply(chat, greedy):
    _check_chat_chunks(list(chat.stream(LONG)), greedy)
    reply = chat.invoke(LONG)
    assert reply.content == greedy.text and reply.usage_metadata == _usage(greedy)
    assert reply.response_metadata["finish_reason"] == greedy.finish_reason


@pytest.mark.asyncio
async def test_chat_astream_and_events_give_the_reply(chat, greedy):
    assert (await chat.ainvoke(LONG)).content == greedy.text
    _check_chat_chunks([c async for c in chat.astream(LONG)], greedy)
    events = [e async for e in chat.astream_events(LONG, version="v2")]
    streamed = [e["data"]["chunk"].content for e in events
                if e["event"] == "on_chat_model_stream"]
    assert len([t for t in streamed if t]) > 1 and "".join(streamed) == greedy.text
    assert [e["event"] for e in events][-1] == "on_chat_model_end"


def test_streaming_field_and_callbacks_get_each_token(lm, greedy):
    class Tokens(BaseCallbackHandler):
        def __init__(self):
            self.tokens = []

        def on_llm_new_token(self, token, **kwargs):
            self.tokens.append(token)

    handler = Tokens()
    reply = ChatS3(model=lm, max_tokens=N, streaming=True).invoke(
        LONG, config={"callbacks": [handler]})
    assert len([t for t in handler.tokens if t]) > 1
    assert "".join(handler.tokens) == reply.content == greedy.text
    assert reply.usage_metadata == _usage(greedy)


@pytest.mark.parametrize("kind", ["complete", "chat"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_llamaindex_streams_token_by_token(llm, greedy, kind, mode):
    if kind == "complete":
        def text(r):
            return r.text
        call = {"sync": lambda: llm.stream_complete(LONG),
                "async": lambda: llm.astream_complete(LONG)}[mode]
    else:
        msgs = [ChatMessage(role="user", content=LONG)]

        def text(r):
            return r.message.content
        call = {"sync": lambda: llm.stream_chat(msgs), "async": lambda: llm.astream_chat(msgs)}[mode]

    if mode == "sync":
        responses = list(call())
    else:
        async def collect():
            return [r async for r in await call()]
        responses = asyncio.run(collect())
    deltas = [r.delta for r in responses]
    assert len([d for d in deltas[:-1] if d]) > 1  # several pieces before the answer ends
    for i, r in enumerate(responses):
        assert text(r) == "".join(deltas[:i + 1])  # text: the reply so far
    assert text(responses[-1]) == greedy.text
    assert responses[-1].additional_kwargs == {
        "prompt_tokens": greedy.prompt_tokens, "completion_tokens": greedy.output_tokens,
        "total_tokens": greedy.prompt_tokens + greedy.output_tokens}


def test_llamaindex_complete_and_chat_give_the_reply(llm, greedy):
    done = llm.complete(LONG)
    assert done.text == greedy.text
    assert done.additional_kwargs["completion_tokens"] == greedy.output_tokens
    assert done.raw["finish_reason"] == greedy.finish_reason
    reply = asyncio.run(llm.achat([ChatMessage(role="user", content=LONG)]))
    assert reply.message.content == greedy.text and reply.message.role == "assistant"


# ---------------------------------------------------------------- options
def test_stop_strings_cut_the_reply_and_stop_generating(lm, chat, llm):
    full = generate_reply(lm, MESSAGES, max_new_tokens=16)
    assert len(full.text) >= 8
    p = len(full.text) // 2
    stop = full.text[p:p + 3]  # taken from the reply: the cut is known, the text is not
    expected = full.text[:full.text.find(stop)].rstrip()

    cut = generate_reply(lm, MESSAGES, max_new_tokens=16, stop=[stop, "never in a reply"])
    assert cut.text == expected and cut.finish_reason == "stop"
    assert cut.output_tokens < full.output_tokens  # generation stopped there
    assert "".join(stream_text(lm, MESSAGES, max_new_tokens=16, stop=[stop])) == expected

    msg = chat.invoke(LONG, max_tokens=16, stop=[stop])
    assert msg.content == expected and msg.response_metadata["finish_reason"] == "stop"
    assert msg.usage_metadata["output_tokens"] == cut.output_tokens
    assert "".join(c.content for c in chat.stream(LONG, max_tokens=16, stop=[stop])) == expected
    assert llm.complete(LONG, max_tokens=16, stop=stop).text == expected  # a str is one
    assert list(llm.stream_complete(LONG, max_tokens=16, stop=[stop]))[-1].text == expected


def test_temperature_zero_is_greedy_and_seeded_sampling_repeats(lm, chat, llm, greedy):
    assert chat.invoke(LONG, temperature=0).content == greedy.text
    assert llm.complete(LONG, temperature=0.0).text == greedy.text

    sampled = chat.invoke(LONG, temperature=1.0, seed=7).content
    assert isinstance(sampled, str) and sampled.strip()
    assert chat.invoke(LONG, temperature=1.0, seed=7).content == sampled
    assert llm.complete(LONG, temperature=1.0, seed=7).text == sampled
    assert "".join(stream_text(lm, MESSAGES, max_new_tokens=N, temperature=1.0,
                               seed=7)) == sampled
    # it really samples: at a high temperature, three seeds do not all give one reply
    hot = {generate_reply(lm, MESSAGES, max_new_tokens=4, temperature=3.0, seed=s).text
           for s in range(3)}
    assert len(hot) > 1
    # a seed leaves the caller's random numbers alone
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    generate_reply(lm, MESSAGES, max_new_tokens=1, temperature=1.0, seed=5)
    assert torch.equal(torch.rand(3), before)


@pytest.mark.parametrize("n", [1, 3])
def test_max_tokens_caps_the_output(chat, llm, n):
    msg = chat.invoke(LONG, max_tokens=n)
    assert msg.usage_metadata["output_tokens"] == n
    assert msg.response_metadata["finish_reason"] == "length"
    assert chat.get_num_tokens(msg.content) <= n
    assert chat.invoke(LONG, max_new_tokens=n).content == msg.content  # the alias
    assert llm.complete(LONG, max_tokens=n).additional_kwargs["completion_tokens"] == n
    assert llm.complete(LONG, max_new_tokens=n).text == msg.content


def test_timeout_raises_a_clear_error(lm, chat, llm, greedy):
    with recorded_forward(lm, delay=0.1):  # ~10 tokens a second: 0.25 s is 2-3 tokens
        with pytest.raises(TimeoutError, match=r"timeout=0\.25 s after \d+ tokens"):
            chat.invoke(LONG, max_tokens=40, timeout=0.25)
        deltas = []
        with pytest.raises(TimeoutError, match="timeout"):
            for chunk in chat.stream(LONG, max_tokens=40, timeout=0.25):
                deltas.append(chunk.content)
        assert greedy.text.startswith("".join(deltas))  # the text made in time came first
        with pytest.raises(TimeoutError):
            llm.complete(LONG, max_tokens=40, timeout=0.25)
        with pytest.raises(TimeoutError):
            list(llm.stream_chat([ChatMessage(role="user", content=LONG)], max_tokens=40,
                                 timeout=0.25))
        with pytest.raises(TimeoutError):
            ChatS3(model=lm, max_tokens=40, timeout=1e-6).invoke(LONG)
    assert lock_free(lm)  # released on the way out
    # a timeout long enough changes nothing
    assert chat.invoke(LONG, timeout=60).content == greedy.text


def test_timeout_covers_waiting_for_the_model_and_retries(lm, chat, llm):
    taken, release_at = threading.Event(), time.monotonic() + 0.8

    def hold():
        with lm.lock:
            taken.set()
            time.sleep(max(0.0, release_at - time.monotonic()))

    holder = threading.Thread(target=hold)
    holder.start()
    taken.wait()
    with pytest.raises(TimeoutError, match="waiting for the model"):
        chat.invoke(LONG, max_tokens=1, timeout=0.2)
    assert time.monotonic() < release_at  # it gave up before the model was free
    # retried until the holder lets go (max_tokens=1: no time-out once generating)
    reply = llm.complete(LONG, max_tokens=1, timeout=0.2, max_retries=20)
    assert time.monotonic() >= release_at
    assert reply.additional_kwargs["completion_tokens"] == 1
    holder.join()


def test_token_counts_use_the_models_tokenizer(lm, chat):
    text = "Zanzibar is an archipelago off the coast of Tanzania."
    assert chat.get_num_tokens(text) == len(lm.tokenizer(text, add_special_tokens=False)
                                            ["input_ids"])
    msgs = [SystemMessage("Be brief."), HumanMessage("Where is Zanzibar?")]
    n = chat.get_num_tokens_from_messages(msgs)
    assert n == len(prompt_ids(lm, to_chat_messages(msgs))) > chat.get_num_tokens(
        "Be brief. Where is Zanzibar?")  # the chat template's tokens included
    assert chat.invoke(msgs, max_tokens=1).usage_metadata["input_tokens"] == n
    with pytest.raises(ValueError, match="no tool calling"):
        chat.get_num_tokens_from_messages(msgs, tools=[{"name": "x"}])


# ---------------------------------------------------------------- the model's lock
def test_the_lock_is_held_for_the_whole_stream(lm, saes, chat):
    index = S3Index.from_model(lm, saes=saes)
    index.add_texts(["The harbour was rebuilt in 1902 after the great storm."],
                    show_progress=False)
    found, started = [], []

    def search():
        started.append(time.monotonic())
        found.extend(index.search("When was the harbour rebuilt?", k=1))

    with recorded_forward(lm, delay=0.03) as calls:
        stream = chat.stream(LONG)
        next(stream)
        assert not lock_free(lm)  # mid-generation: held by the generating thread
        searcher = threading.Thread(target=search, name="searcher")
        searcher.start()
        rest = list(stream)
        searcher.join(60)
    assert rest[-1].usage_metadata["output_tokens"] == N and found
    generating = [c for c in calls if c[0] == "s3-generate"]
    searching = [c for c in calls if c[0] == "searcher"]
    assert len(generating) == N and searching
    # the search started while the model generated, and waited for the whole generation
    assert started[0] < max(end for _, _, end in generating)
    assert min(start for _, start, _ in searching) >= max(end for _, _, end in generating)


def test_leaving_a_stream_early_stops_generating(lm, chat, llm):
    with recorded_forward(lm, delay=0.02) as calls:
        for _ in chat.stream(LONG, max_tokens=300):
            break
        assert lock_free(lm, wait=5)  # the generating thread stopped and let go
        for _ in llm.stream_complete(LONG, max_tokens=300):
            break
        assert lock_free(lm, wait=5)
        n = len(calls)
    assert n < 100  # far from the 2 x 300 forward passes of two full replies


# ---------------------------------------------------------------- one set of option names
OPTIONS = {"max_tokens": 6, "temperature": 0.7, "top_p": 0.9, "stop": ["\n\n"],
           "timeout": 60.0, "max_retries": 1, "seed": 3}


def test_both_wrappers_take_the_same_options(lm):
    chat, llm = ChatS3(model=lm, **OPTIONS), S3LocalLLM(lm, **OPTIONS)
    for name, value in OPTIONS.items():
        assert getattr(chat, name) == getattr(llm, name) == value
    assert chat.max_new_tokens == llm.max_new_tokens == llm.metadata.num_output == 6
    # the same options give the same reply (seeded sampling), fields or per call
    reply = chat.invoke(LONG).content
    assert llm.complete(LONG).text == reply
    assert ChatS3(model=lm).invoke(LONG, **OPTIONS).content == reply
    assert S3LocalLLM(lm).complete(LONG, **OPTIONS).text == reply
    assert llm.chat([ChatMessage(role="user", content=LONG)]).message.content == reply


@pytest.mark.parametrize("bad", [
    {"max_tokens": 0}, {"max_tokens": 2, "max_new_tokens": 2}, {"temperature": -1},
    {"top_p": 0}, {"top_p": 1.5}, {"stop": [""]}, {"timeout": 0}, {"max_retries": -1},
    {"seed": 1.5},
])
def test_both_wrappers_refuse_the_same_bad_options(lm, chat, llm, bad):
    with pytest.raises(ValueError):
        ChatS3(model=lm, **bad)
    with pytest.raises(ValueError):
        S3LocalLLM(lm, **bad)
    with pytest.raises(ValueError):
        chat.invoke(LONG, **bad)
    with pytest.raises(ValueError):
        llm.complete(LONG, **bad)


def test_unknown_options_are_named(lm, chat, llm):
    with pytest.raises(TypeError, match=r"unknown generation arguments \['top_k'\]"):
        chat.invoke(LONG, top_k=5)
    with pytest.raises(TypeError, match=r"unknown generation arguments \['top_k'\]"):
        llm.complete(LONG, top_k=5)
    with pytest.raises(TypeError, match="unknown generation arguments"):
        list(llm.stream_chat([ChatMessage(role="user", content=LONG)], top_k=5))
    with pytest.raises(ValueError, match="cannot switch models"):
        chat.invoke(LONG, model="another-model")
    assert chat.invoke(LONG, model=lm.model_id, max_tokens=1).content is not None
