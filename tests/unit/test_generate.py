"""Tests for s3_retriever.generate: answer cleaning, prompt building, generation limits on a
tiny model, and answering from spans."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from s3_retriever import generate as gen
from s3_retriever.errors import InvalidInputError
from s3_retriever.generate import (
    SYSTEM_PROMPT,
    Answer,
    answer_from_spans,
    build_messages,
    clean_answer,
    generate_text,
    prompt_ids,
)
from s3_retriever.retrieval.spans import Span
from tests.helpers import tiny_lm


@pytest.fixture(scope="module")
def tiny(lm):
    return tiny_lm(lm.tokenizer)


@pytest.mark.parametrize("raw, want", [
    ("The answer is: Warsaw.", "Warsaw"),
    ("Answer: Paris", "Paris"),
    ("answer - 42.", "42"),
    ("Final answer: Bach", "Bach"),
    ("The short answer is Leipzig.", "Leipzig"),
    ("  \n\nWarsaw.\nIt is in Poland.", "Warsaw"),  # the first non-blank line only
    ("Wait...", "Wait..."),                          # an ellipsis is kept
    ("1867", "1867"),
    ("", ""),
    ("   \n ", ""),
])
def test_clean_answer(raw, want):
    assert clean_answer(raw) == want


@pytest.mark.parametrize("raw, want", [("Answers vary.", "Answers vary"),
                                       ("Answering machines.", "Answering machines")])
def test_clean_answer_keeps_words_that_start_with_answer(raw, want):
    assert clean_answer(raw) == want


def _spans():
    return [Span("b", 10, 20, "Second   b\nspan", 0.9), Span("a", 0, 5, "First", 0.5),
            Span("b", 0, 5, "First b", 0.1)]


def test_build_messages_order_and_numbering():
    msgs = build_messages("Who?", _spans())
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[0]["content"] == SYSTEM_PROMPT
    # spans numbered in the order given, whitespace collapsed, the question last
    assert msgs[1]["content"] == ("Context:\n[1] Second b span\n[2] First\n[3] First b\n\n"
                                  "Question: Who?")
    assert build_messages("Q", [], system="Be brief.")[0]["content"] == "Be brief."
    assert build_messages("Q", [])[1]["content"] == "Context:\n\n\nQuestion: Q"


def test_prompt_ids_use_the_chat_template(tiny):
    msgs = build_messages("Where was Marie Curie born?", [Span("d", 0, 6, "Warsaw", 1.0)])
    ids = prompt_ids(tiny, msgs)
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
    text = tiny.tokenizer.decode(ids)
    assert text.index(SYSTEM_PROMPT) < text.index("[1] Warsaw") < text.index("Question: Where")
    # the template's generation prompt: the reply starts right after it
    with_prompt = tiny.tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
    without = tiny.tokenizer.apply_chat_template(msgs, add_generation_prompt=False)

    def ids_of(enc):
        return list(enc["input_ids"]) if hasattr(enc, "keys") else list(enc)

    assert ids == ids_of(with_prompt) and len(ids) > len(ids_of(without))


def test_prompt_ids_without_a_chat_template():
    seen = []

    class Tok:
        chat_template = None

        def __call__(self, text, add_special_tokens):
            seen.append((text, add_special_tokens))
            return {"input_ids": [1, 2, 3]}

    stub = SimpleNamespace(tokenizer=Tok())
    assert prompt_ids(stub, [{"role": "system", "content": "S"},
                             {"role": "user", "content": "U"}]) == [1, 2, 3]
    assert seen == [("S\n\nU\n\nAnswer:", True)]


def _spy_generate(tiny, monkeypatch):
    """Record the prompt length and output length of every ``model.generate`` call."""
    calls = []
    real = tiny.model.generate

    def spy(x, **kw):
        out = real(x, **kw)
        calls.append((x.shape[1], out.shape[1], kw["max_new_tokens"]))
        return out

    monkeypatch.setattr(tiny.model, "generate", spy)
    return calls


@pytest.mark.parametrize("max_new_tokens", [1, 5])
def test_generate_text_respects_max_new_tokens(tiny, monkeypatch, max_new_tokens):
    calls = _spy_generate(tiny, monkeypatch)
    msgs = build_messages("Who composed it?", [Span("d", 0, 4, "Bach", 1.0)])
    text, n_prompt = generate_text(tiny, msgs, max_new_tokens=max_new_tokens)
    assert isinstance(text, str) and n_prompt == len(prompt_ids(tiny, msgs))
    [(n_in, n_out, asked)] = calls
    assert n_in == n_prompt and asked == max_new_tokens
    assert 1 <= n_out - n_in <= max_new_tokens


def test_generate_text_holds_the_lock(tiny):
    events = []

    class Lock:
        def __enter__(self):
            events.append("enter")

        def __exit__(self, *exc):
            events.append("exit")

    generate_text(tiny, build_messages("Q?", []), max_new_tokens=1, lock=Lock())
    assert events == ["enter", "exit"]


def test_generate_text_refuses_a_prompt_too_long(tiny, monkeypatch):
    calls = _spy_generate(tiny, monkeypatch)
    long = [Span("d", 0, 1, "word " * 1200, 1.0)]
    with pytest.raises(InvalidInputError, match="exceeds the model's context of 1024"):
        generate_text(tiny, build_messages("Q?", long), max_new_tokens=4)
    # the prompt alone fits, but not with the new tokens
    msgs = build_messages("Q?", [])
    room = tiny.max_length - len(prompt_ids(tiny, msgs))
    with pytest.raises(InvalidInputError, match=f"with {room + 1} new tokens"):
        generate_text(tiny, msgs, max_new_tokens=room + 1)
    assert calls == []  # refused before generating


def test_answer_from_spans_orders_the_evidence(monkeypatch):
    seen = {}

    def fake(lm, messages, *, max_new_tokens, lock):
        seen.update(messages=messages, max_new_tokens=max_new_tokens, lock=lock)
        return "The answer is: Leipzig.", 17

    monkeypatch.setattr(gen, "generate_text", fake)
    lock = object()
    ans = answer_from_spans(None, "Where?", _spans(), max_new_tokens=9, lock=lock,
                            doc_order={"a": 0, "b": 1})
    assert isinstance(ans, Answer) and str(ans) == ans.text == "Leipzig"
    assert ans.prompt_tokens == 17
    assert [s.id for s in ans.spans] == ["a:0-5", "b:0-5", "b:10-20"]  # reading order
    assert seen["messages"] == build_messages("Where?", ans.spans)
    assert seen["max_new_tokens"] == 9 and seen["lock"] is lock
    # without doc_order: documents in first-appearance order
    ans = answer_from_spans(None, "Where?", _spans())
    assert [s.id for s in ans.spans] == ["b:0-5", "b:10-20", "a:0-5"]


def test_answer_from_spans_on_a_tiny_model(tiny):
    spans = _spans()
    ans = answer_from_spans(tiny, "Where?", spans, max_new_tokens=3)
    assert isinstance(ans.text, str) and "\n" not in ans.text
    assert [s.id for s in ans.spans] == ["b:0-5", "b:10-20", "a:0-5"]
    assert ans.prompt_tokens == len(prompt_ids(tiny, build_messages("Where?", ans.spans)))


# ---------------------------------------------------------------- options, streaming
def test_generation_options_merge_alias_and_check():
    opts = gen.generation_options({"max_tokens": 32, "stop": "\n", "temperature": 0.5},
                                  {"temperature": 0, "max_new_tokens": 4})
    assert opts == {"max_new_tokens": 4, "temperature": 0.0, "top_p": None, "stop": ["\n"],
                    "timeout": None, "seed": None, "max_retries": 0}
    assert gen.generation_options({})["max_new_tokens"] == gen.MAX_NEW_TOKENS
    with pytest.raises(InvalidInputError, match=r"unknown generation arguments \['top_k'\]"):
        gen.generation_options({}, {"top_k": 3})
    with pytest.raises(InvalidInputError, match="not both"):
        gen.generation_options({"max_tokens": 3, "max_new_tokens": 3})
    for bad, match in [({"max_tokens": 0}, "max_tokens must be a positive integer, got 0"),
                       ({"max_new_tokens": 0}, "max_new_tokens must be a positive integer"),
                       ({"max_tokens": True}, "max_tokens must be a positive integer"),
                       ({"temperature": -0.1}, "temperature must be >= 0"),
                       ({"temperature": float("nan")}, "temperature must be a finite"),
                       ({"top_p": 0}, r"top_p must be in \(0, 1\]"),
                       ({"stop": [""]}, "non-empty"), ({"stop": [1]}, "list of str"),
                       ({"timeout": 0}, "timeout must be > 0"), ({"seed": "1"}, "seed"),
                       ({"max_retries": -1}, "max_retries")]:
        with pytest.raises(InvalidInputError, match=match):
            gen.generation_options(bad)


def _feed(reply, pieces, final=False):
    raw, out = "", []
    for i, piece in enumerate(pieces):
        raw += piece
        out.append(reply.update(raw, final=final and i == len(pieces) - 1))
    return out


def test_reply_text_gives_out_only_what_cannot_change():
    r = gen._Reply(("STOP",))
    # leading space dropped; a trailing space and a possible stop start wait; the stop cuts
    assert _feed(r, ["  Hel", "lo ", "wor", "ld S", "TO", "P more"]) == \
        ["Hel", "lo", " wor", "ld", "", ""]
    assert r.text == "Hello world" and r.stopped
    r = gen._Reply(("STOP",))
    assert _feed(r, ["a ST", "ay"]) == ["a", " STay"]  # a false start is given out
    r = gen._Reply(())  # a character cut in two bytes decodes as U+FFFD until complete
    assert [r.update("caf"), r.update("caf\ufffd"), r.update("café  "),
            r.update("café  ", final=True)] == ["caf", "", "é", ""]
    assert r.text == "café" and not r.stopped
    r = gen._Reply(("\n", "##"))  # the earliest stop string wins
    assert _feed(r, ["x ## y\n"]) == ["x"] and r.text == "x"


def test_stream_text_equals_generate_reply_on_a_tiny_model(tiny):
    msgs = build_messages("Who?", [Span("d", 0, 4, "Bach", 1.0)])
    reply = gen.generate_reply(tiny, msgs, max_new_tokens=6)
    stream = gen.stream_text(tiny, msgs, max_new_tokens=6)
    assert stream.prompt_tokens == reply.prompt_tokens == len(prompt_ids(tiny, msgs))
    assert stream.generation is None
    assert "".join(stream) == stream.text == reply.text
    assert stream.generation == reply and 1 <= reply.output_tokens <= 6
    assert reply.finish_reason == ("length" if reply.output_tokens == 6 else "stop")
    assert generate_text(tiny, msgs, max_new_tokens=6) == (reply.text, reply.prompt_tokens)
    assert list(stream) == []  # exhausted


def test_seeded_sampling_repeats_on_a_tiny_model(tiny):
    msgs = build_messages("Who?", [])
    a = gen.generate_reply(tiny, msgs, max_new_tokens=5, temperature=1.0, top_p=0.9, seed=1)
    assert gen.generate_reply(tiny, msgs, max_new_tokens=5, temperature=1.0, top_p=0.9,
                              seed=1) == a
    assert "".join(gen.stream_text(tiny, msgs, max_new_tokens=5, temperature=1.0, top_p=0.9,
                                   seed=1)) == a.text


def test_stream_text_checks_its_arguments_at_once(tiny, monkeypatch):
    calls = _spy_generate(tiny, monkeypatch)
    with pytest.raises(InvalidInputError, match="max_new_tokens"):
        gen.stream_text(tiny, build_messages("Q?", []), max_new_tokens=0)
    with pytest.raises(InvalidInputError, match="exceeds the model's context"):
        gen.stream_text(tiny, build_messages("Q?", [Span("d", 0, 1, "word " * 1200, 1.0)]))
    stream = gen.stream_text(tiny, build_messages("Q?", []), max_new_tokens=2)
    stream.close()  # closed before the first token: nothing generated
    assert list(stream) == [] and stream.generation is None
    assert calls == []
