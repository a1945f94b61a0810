"""Tests for s3_retriever.text.sentences: sentence bounds of a text."""

from __future__ import annotations

import random

import numpy as np
import pytest

from s3_retriever.text.sentences import split_sentences


def texts(text: str, **kw) -> list[str]:
    return [text[a:b] for a, b in split_sentences(text, **kw)]


def check_bounds(text: str, bounds: list[tuple[int, int]]) -> None:
    """Ordered, non-overlapping, trimmed, and covering every non-whitespace char."""
    covered = np.zeros(len(text), dtype=bool)
    prev_end = 0
    for a, b in bounds:
        assert prev_end <= a < b <= len(text)
        assert not text[a].isspace() and not text[b - 1].isspace()
        covered[a:b] = True
        prev_end = b
    for i, ch in enumerate(text):
        if not ch.isspace():
            assert covered[i], f"char {i} {ch!r} not covered"


def test_split_basic_exact_bounds():
    t = "  Hello world. How are you?  Fine!\n"
    assert split_sentences(t) == [(2, 14), (15, 27), (29, 34)]


def test_split_abbreviations_not_split():
    t = (
        "Mr. and Mrs. Smith met Dr. Jones on St. Mark's Sq. at 5 p.m. on Jan. 3. "
        "They visited the U.S. Army and the U.K. Parliament, e.g. Westminster. "
        "Acme Inc. Corp. sold No. 5 to Prof. X vs. Gen. Lee."
    )
    assert texts(t) == [
        "Mr. and Mrs. Smith met Dr. Jones on St. Mark's Sq. at 5 p.m. on Jan. 3.",
        "They visited the U.S. Army and the U.K. Parliament, e.g. Westminster.",
        "Acme Inc. Corp. sold No. 5 to Prof. X vs. Gen. Lee.",
    ]


def test_split_initials_and_decimals():
    t = "J. R. R. Tolkien wrote it. George W. Bush read 3.5 pages. Pi is 3.14. Then tea."
    assert texts(t) == [
        "J. R. R. Tolkien wrote it.",
        "George W. Bush read 3.5 pages.",
        "Pi is 3.14.",
        "Then tea.",
    ]


def test_split_quotes_and_brackets():
    t = 'He said "Stop." Then he left. "Why?" she asked. (It rained.) "No!" he cried.'
    assert texts(t) == [
        'He said "Stop."',
        "Then he left.",
        '"Why?" she asked.',
        "(It rained.)",
        '"No!" he cried.',
    ]
    # curly quotes, and no split before a lower-case word
    t2 = "She said “Go.” Then silence. What? no way."
    assert texts(t2) == ["She said “Go.”", "Then silence.", "What? no way."]


def test_split_newlines_headings_lists():
    t = (
        "# Intro\nBody text here.\n\nSecond paragraph\ncontinues here. Done.\n"
        "Steps:\n1. Open the door.\n2. Walk in.\n- a bullet\n- another\n"
        "Early life\nSmith was born in 1990. He grew up."
    )
    assert texts(t) == [
        "# Intro",
        "Body text here.",
        "Second paragraph\ncontinues here.",
        "Done.",
        "Steps:",
        "1. Open the door.",
        "2. Walk in.",
        "- a bullet",
        "- another",
        "Early life",
        "Smith was born in 1990.",
        "He grew up.",
    ]


def test_split_blank_line_always_splits():
    assert texts("no final stop\n\nnext part\n \t\nthird") == ["no final stop", "next part", "third"]
    assert texts("a wrapped line of prose\nthat goes on.") == ["a wrapped line of prose\nthat goes on."]


def test_split_long_sentences():
    t = "aaaa bbbb cccc dddd eeee."
    assert split_sentences(t, max_chars=10) == [(0, 9), (10, 19), (20, 25)]
    # no whitespace: hard cut at the limit
    assert split_sentences("x" * 25, max_chars=10) == [(0, 10), (10, 20), (20, 25)]
    # every piece respects the limit
    t = " ".join(["word"] * 700) + "."
    b = split_sentences(t)
    assert len(b) == 4 and all(e - s <= 1000 for s, e in b)
    check_bounds(t, b)


def test_split_empty_and_errors():
    assert split_sentences("") == []
    assert split_sentences(" \n\t ") == []
    assert split_sentences("x") == [(0, 1)]
    with pytest.raises(TypeError):
        split_sentences(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        split_sentences("x", max_chars=0)


def test_split_property_random_text():
    rng = random.Random(7)
    pieces = ["the", "Dr.", "cat", "3.14", "U.S.", "sat.", "Hello!", "\n\n", "\n", "- x", "A.",
              '"quoted."', "e.g.", "Then", "?", "  ", "\t", "1.", "(", ")", "é", "X."]
    for _ in range(30):
        t = " ".join(rng.choice(pieces) for _ in range(rng.randint(0, 200)))
        limit = rng.choice([5, 40, 1000])
        bounds = split_sentences(t, max_chars=limit)
        check_bounds(t, bounds)
        assert all(b - a <= limit for a, b in bounds)


def test_split_handles_1mb_and_pathological_text():
    rng = random.Random(0)
    words = ["the", "Dr.", "cat", "3.14", "U.S.", "sat.", "Hello!", "\n\n", "\n- x", "Then"]
    t = " ".join(rng.choice(words) for _ in range(220_000))
    assert len(t) > 1_000_000
    b = split_sentences(t)
    assert len(b) > 10_000
    check_bounds(t, b)
    # no whitespace to split at: hard cuts every max_chars
    assert len(split_sentences("a" * 1_000_000)) == 1000
    assert len(split_sentences("ab " * 300_000)) > 800


def test_paragraph_breaks_mark_blank_lines_between_sentences():
    from s3_retriever.text.sentences import paragraph_breaks

    text = "One here. Two here.\n\nThree here.\n  \nFour.\nFive."
    sentences = split_sentences(text)
    assert [text[a:b] for a, b in sentences] == ["One here.", "Two here.", "Three here.",
                                                 "Four.", "Five."]
    assert paragraph_breaks(text, sentences).tolist() == [False, True, True, False]
    assert paragraph_breaks("Alone.", split_sentences("Alone.")).shape == (0,)
