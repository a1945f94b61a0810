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
