"""The built-in generic text: where SAE training text and the shared data live.

SAEs are trained on generic text, never on what an evaluation asks about: the paragraphs
of HotpotQA questions ``RESERVED_SAE_QUESTIONS`` (never evaluated; English Wikipedia, CC
BY-SA 4.0) form :func:`generic_corpus`, and every haystack excludes them
(:func:`reserved_titles`).

Example:
    >>> from s3_retriever.corpus import RESERVED_SAE_QUESTIONS
    >>> RESERVED_SAE_QUESTIONS.start
    5000
"""

from __future__ import annotations

import functools
import gzip
import json
import os
from pathlib import Path

HOTPOTQA_FILE = "hotpotqa_distractor.json.gz"
SQUAD_FILE = "squad2.json.gz"
RESERVED_SAE_QUESTIONS = range(5000, 5405)


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder with the shared QA data.

    Order: the argument, ``$S3_RETRIEVER_DATA``, then ``../shared/data`` beside the
    repository (the project's layout), then ``./shared/data``.

    Raises:
        FileNotFoundError: no candidate folder holds the HotpotQA file.
    """
    candidates = []
    if path is not None:
        candidates.append(Path(path))
    if os.environ.get("S3_RETRIEVER_DATA"):
        candidates.append(Path(os.environ["S3_RETRIEVER_DATA"]))
    repo = Path(__file__).resolve().parent.parent
    candidates += [repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data",
                   Path.cwd() / "shared" / "data"]
    for c in candidates:
        if (c / HOTPOTQA_FILE).is_file():
            return c
    raise FileNotFoundError(
        f"no QA data folder found (looked for {HOTPOTQA_FILE} in "
        f"{', '.join(str(c) for c in candidates)}); pass a path or set S3_RETRIEVER_DATA"
    )


@functools.lru_cache(maxsize=2)
def load_hotpotqa(path: str | None = None) -> list[dict]:
    """All HotpotQA distractor-dev questions, in file order (cached)."""
    with gzip.open(data_dir(path) / HOTPOTQA_FILE, "rt", encoding="utf-8") as f:
        return json.load(f)


def reserved_titles(path: str | None = None) -> frozenset[str]:
    """Titles of the paragraphs reserved for SAE training (excluded from evaluation)."""
    data = load_hotpotqa(path)
    evaluable = {t for i, q in enumerate(data) if i not in RESERVED_SAE_QUESTIONS
                 for t, _ in q["context"]}
    return frozenset(t for i in RESERVED_SAE_QUESTIONS if i < len(data)
                     for t, _ in data[i]["context"] if t not in evaluable)


def generic_corpus(path: str | None = None, max_paragraphs: int | None = None) -> list[str]:
    """Paragraph texts for SAE training: the reserved slice, deduplicated, in file order.

    Example:
        >>> texts = generic_corpus(max_paragraphs=3)  # doctest: +SKIP
        >>> len(texts)  # doctest: +SKIP
        3
    """
    data = load_hotpotqa(path)
    keep = reserved_titles(path)
    seen: set[str] = set()
    out: list[str] = []
    for i in RESERVED_SAE_QUESTIONS:
        if i >= len(data):
            break
        for title, sentences in data[i]["context"]:
            if title in keep and title not in seen:
                seen.add(title)
                text = "".join(sentences).strip()
                if text:
                    out.append(text)
                if max_paragraphs is not None and len(out) >= max_paragraphs:
                    return out
    return out
