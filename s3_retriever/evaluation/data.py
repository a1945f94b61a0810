"""Benchmark data: long haystacks with exactly located gold evidence.

The corpus is a dict of :class:`Document` (one paragraph each), scanned once; each
:class:`Example` names its haystack (document ids) and its gold :class:`Evidence`, a char
span of one document. Padding comes from one shared, seeded pool of paragraphs
(``pool_factor`` x the haystack length). Data: CC BY-SA 4.0 (HotpotQA, SQuAD 2.0).

Example:
    >>> doc = Document("d1", "Paris is in France. It is big.", {})
    >>> bench = Benchmark("toy", {"d1": doc}, [Example("q1", "Where is Paris?", ["France"],
    ...     ["d1"], [Evidence("d1", 0, 19)], "toy", 7)])
    >>> bench.documents["d1"].text[0:19]
    'Paris is in France.'
    >>> bench.haystack_text(bench.examples[0])
    'Paris is in France. It is big.'
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from s3_retriever import corpus as _corpus

__all__ = [
    "Benchmark",
    "Document",
    "Evidence",
    "Example",
    "hotpotqa_benchmark",
    "load_squad",
    "needle_benchmark",
    "squad_benchmark",
]

SEPARATOR = "\n\n"
_MAX_MISSES = 8  # consecutive padding paragraphs that do not fit before we stop


@dataclass
class Document:
    """One paragraph of the evaluation corpus.

    Example:
        >>> Document("hp:Paris", "Paris is the capital of France.", {"title": "Paris"}).doc_id
        'hp:Paris'
    """

    doc_id: str
    text: str
    metadata: dict = field(default_factory=dict)


@dataclass
class Evidence:
    """A gold evidence span: ``text[start_char:end_char]`` of document ``doc_id``.

    ``group``: evidence items sharing a non-None group are *alternatives* (SQuAD's several
    annotated answer spans): the group counts as covered when any one of them is. Items
    with ``group=None`` are each required on their own (HotpotQA's supporting sentences).

    Example:
        >>> ev = Evidence("d1", 0, 5)
        >>> (ev.doc_id, ev.start_char, ev.end_char, ev.group)
        ('d1', 0, 5, None)
    """

    doc_id: str
    start_char: int
    end_char: int
    group: int | None = None


@dataclass
class Example:
    """One question over one haystack.

    ``doc_ids``: the haystack, in haystack order. ``context_tokens``: the haystack's
    measured length in tokens (the requested length is ``metadata["target_tokens"]``).

    Example:
        >>> ex = Example("q1", "Who?", ["Ann"], ["d1", "d2"], [], "toy", 42)
        >>> ex.doc_ids, ex.metadata
        (['d1', 'd2'], {})
    """

    qid: str
    question: str
    answers: list[str]
    doc_ids: list[str]
    evidence: list[Evidence]
    dataset: str
    context_tokens: int
    metadata: dict = field(default_factory=dict)


@dataclass
class Benchmark:
    """Documents shared by all examples (by ``doc_id``) and the examples.

    Example:
        >>> b = Benchmark("toy", {"a": Document("a", "One.", {}), "b": Document("b", "Two.", {})},
        ...               [Example("q", "?", ["x"], ["b", "a"], [], "toy", 2)])
        >>> b.haystack_text(b.examples[0])
        'Two.\\n\\nOne.'
        >>> b.doc_offsets(b.examples[0])
        {'b': 0, 'a': 6}
    """

    name: str
    documents: dict[str, Document]
    examples: list[Example]

    def haystack_text(self, example: Example) -> str:
        """The haystack as one string: documents joined by a blank line, in order."""
        return SEPARATOR.join(self.documents[d].text for d in example.doc_ids)

    def doc_offsets(self, example: Example) -> dict[str, int]:
        """Character offset of each document inside :meth:`haystack_text`."""
        out: dict[str, int] = {}
        pos = 0
        for d in example.doc_ids:
            out[d] = pos
            pos += len(self.documents[d].text) + len(SEPARATOR)
        return out

    def evidence_by_qid(self) -> dict[str, list[Evidence]]:
        """``{qid: evidence}`` (what :class:`~.baselines.OracleRetriever` takes)."""
        return {ex.qid: ex.evidence for ex in self.examples}


# --------------------------------------------------------------------------- helpers


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Shrink ``[start, end)`` so it has no leading/trailing whitespace.

    >>> _strip_span("  ab c  ", 0, 8)
    (2, 6)
    """
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


class _TokenCache:
    """Per-document token counts (each document counted once per build)."""

    def __init__(self, count_tokens: Callable[[str], int], documents: dict[str, Document]):
        self.count_tokens = count_tokens
        self.documents = documents
        self.cache: dict[str, int] = {}
        self.sep = int(count_tokens(SEPARATOR))

    def __call__(self, doc_id: str) -> int:
        n = self.cache.get(doc_id)
        if n is None:
            n = self.cache[doc_id] = int(self.count_tokens(self.documents[doc_id].text))
        return n

    def total(self, doc_ids: Sequence[str]) -> int:
        if not doc_ids:
            return 0
        return sum(self(d) for d in doc_ids) + self.sep * (len(doc_ids) - 1)


def _pool_prefix(pool: list[str], tokens: _TokenCache, target: float) -> list[str]:
    """The shortest prefix of ``pool`` holding at least ``target`` tokens (or all of it)."""
    total = 0
    for i, d in enumerate(pool):
        total += tokens(d)
        if total >= target:
            return pool[: i + 1]
    return list(pool)


def _fill(base: list[str], pool: Sequence[str], tokens: _TokenCache, budget: int,
          skip: Callable[[str], bool]) -> list[str]:
    """Append pool documents to ``base`` while the haystack stays within ``budget`` tokens.

    A document that does not fit is skipped; the walk stops after ``_MAX_MISSES``
    consecutive misses or at the end of the pool.
    """
    out = list(base)
    have = set(out)
    total = tokens.total(out)
    misses = 0
    for d in pool:
        if d in have or skip(d):
            continue
        extra = tokens(d) + (tokens.sep if out else 0)
        if total + extra <= budget:
            out.append(d)
            have.add(d)
            total += extra
            misses = 0
        else:
            misses += 1
            if misses >= _MAX_MISSES:
                break
    return out


def _fit_own(gold: list[str], others: list[str], tokens: _TokenCache, budget: int) -> list[str]:
    """Gold documents always; the question's own other documents while they fit."""
    out = list(gold)
    total = tokens.total(out)
    for d in others:
        extra = tokens(d) + (tokens.sep if out else 0)
        if total + extra <= budget:
            out.append(d)
            total += extra
    return out


# --------------------------------------------------------------------------- HotpotQA


@functools.lru_cache(maxsize=2)
def _hotpot_ids(path: str | None) -> dict[tuple[str, tuple[str, ...]], str]:
    """``(title, sentences) -> doc_id`` over the whole file.

    The same title is the same paragraph almost everywhere in HotpotQA; where a title
    comes with differing sentence lists (a few dozen in the dev set), the first variant
    in file order keeps ``"hp:" + title`` and later ones get ``"#2"``, ``"#3"``...
    """
    data = _corpus.load_hotpotqa(path)
    ids: dict[tuple[str, tuple[str, ...]], str] = {}
    variants: dict[str, int] = {}
    for q in data:
        for title, sentences in q["context"]:
            key = (title, tuple(sentences))
            if key in ids:
                continue
            k = variants.get(title, 0) + 1
            variants[title] = k
            ids[key] = f"hp:{title}" if k == 1 else f"hp:{title}#{k}"
    return ids


def _hotpot_document(doc_id: str, title: str, sentences: Sequence[str]
                     ) -> tuple[Document, list[tuple[int, int]]]:
    """The paragraph as a Document plus each sentence's stripped span in its text."""
    raw = "".join(sentences)
    lead = len(raw) - len(raw.lstrip())
    text = raw.strip()
    spans = []
    pos = 0
    for s in sentences:
        a = min(max(pos - lead, 0), len(text))
        b = min(max(pos + len(s) - lead, 0), len(text))
        spans.append(_strip_span(text, a, b))
        pos += len(s)
    return Document(doc_id, text, {"title": title, "source": "hotpotqa"}), spans


def _hotpot_pool(path: str | None, seed: int) -> tuple[list[str], dict[str, Document]]:
    """All paragraphs of evaluable questions (reserved titles excluded), seeded order."""
    order, docs = _hotpot_pool_cached(path, seed)
    return list(order), docs


@functools.lru_cache(maxsize=4)
def _hotpot_pool_cached(path: str | None, seed: int) -> tuple[tuple[str, ...], dict[str, Document]]:
    data = _corpus.load_hotpotqa(path)
    ids = _hotpot_ids(path)
    reserved = _corpus.reserved_titles(path)
    docs: dict[str, Document] = {}
    order: list[str] = []
    for i, q in enumerate(data):
        if i in _corpus.RESERVED_SAE_QUESTIONS:
            continue
        for title, sentences in q["context"]:
            if title in reserved:
                continue
            doc_id = ids[(title, tuple(sentences))]
            if doc_id in docs:
                continue
            doc, _ = _hotpot_document(doc_id, title, sentences)
            if not doc.text:
                continue
            docs[doc_id] = doc
            order.append(doc_id)
    random.Random(f"hotpotqa-pool:{seed}").shuffle(order)
    return tuple(order), docs


def _padding_pool(key: str | None, seed: int, count_tokens: Callable[[str], int], target: float
                  ) -> tuple[dict[str, Document], _TokenCache, list[str]]:
    """The shared padding pool: every document, a token counter, and the seeded prefix of
    paragraph ids holding ``target`` tokens."""
    order, pool_docs = _hotpot_pool(key, seed)
    all_docs: dict[str, Document] = dict(pool_docs)
    tokens = _TokenCache(count_tokens, all_docs)
    return all_docs, tokens, _pool_prefix(order, tokens, target)


def _path_key(path: str | os.PathLike | None) -> str | None:
    return None if path is None else str(path)


def hotpotqa_benchmark(questions: slice | range | Sequence[int], context_tokens: int,
                       count_tokens: Callable[[str], int], *,
                       path: str | os.PathLike | None = None, seed: int = 0,
                       pool_factor: float = 2.0) -> Benchmark:
    """HotpotQA (distractor dev) questions, each in a haystack of ``context_tokens`` tokens.

    Each haystack holds the question's gold paragraphs, its other 8 paragraphs while
    they fit, then padding paragraphs from the shared pool (see the module docstring)
    while they fit, all shuffled with a per-question seeded RNG so the gold paragraphs
    land at varied depths. No paragraph whose title is in
    :func:`s3_retriever.corpus.reserved_titles` is ever used. If the gold paragraphs
    alone exceed ``context_tokens`` they are kept anyway
    (``metadata["over_budget"] = True``).

    Evidence: each supporting sentence's span in its paragraph, stripped of whitespace
    (supporting facts pointing past a paragraph's last sentence, or at an empty
    sentence, are dropped and counted in ``metadata["dropped_evidence"]``).

    Args:
        questions: indices in file order (a slice, range or list).
        context_tokens: the haystack length to reach without exceeding it.
        count_tokens: token counter for texts.
        path: the data folder (see :func:`s3_retriever.corpus.data_dir`).
        seed: seeds the padding pool and each haystack's order.
        pool_factor: the shared padding pool holds this many times ``context_tokens``.

    Raises:
        ValueError: an index is reserved for SAE training, or out of range.

    Example:
        >>> bench = hotpotqa_benchmark(range(2), 8000, lambda s: len(s.split()))  # doctest: +SKIP
        >>> len(bench.examples)  # doctest: +SKIP
        2
    """
    if context_tokens <= 0:
        raise ValueError(f"context_tokens must be positive, got {context_tokens}")
    key = _path_key(path)
    if isinstance(questions, slice):
        indices = list(range(len(_corpus.load_hotpotqa(key))))[questions]
    else:
        indices = [int(i) for i in questions]
    bad = [i for i in indices if i in _corpus.RESERVED_SAE_QUESTIONS]
    if bad:
        raise ValueError(f"questions {bad[:5]} are reserved for SAE training "
                         f"(RESERVED_SAE_QUESTIONS = {_corpus.RESERVED_SAE_QUESTIONS})")
    data = _corpus.load_hotpotqa(key)
    out_of_range = [i for i in indices if not 0 <= i < len(data)]
    if out_of_range:
        raise ValueError(f"question indices {out_of_range[:5]} out of range 0..{len(data) - 1}")

    ids = _hotpot_ids(key)
    all_docs, tokens, pool = _padding_pool(key, seed, count_tokens, pool_factor * context_tokens)

    documents: dict[str, Document] = {}
    examples: list[Example] = []
    for i in indices:
        q = data[i]
        support: dict[str, set[int]] = {}
        for title, sent_idx in q["supporting_facts"]:
            support.setdefault(title, set()).add(int(sent_idx))
        gold: list[str] = []
        others: list[str] = []
        evidence: list[Evidence] = []
        dropped = 0
        own_titles = set()
        for title, sentences in q["context"]:
            doc_id = ids[(title, tuple(sentences))]
            doc, spans = _hotpot_document(doc_id, title, sentences)
            own_titles.add(title)
            all_docs.setdefault(doc_id, doc)
            if title in support:
                gold.append(doc_id)
                for s in sorted(support[title]):
                    if 0 <= s < len(spans) and spans[s][0] < spans[s][1]:
                        evidence.append(Evidence(doc_id, spans[s][0], spans[s][1]))
                    else:
                        dropped += 1
            elif doc.text:
                others.append(doc_id)
        dropped += sum(len(v) for t, v in support.items() if t not in own_titles)
        hay = _fit_own(gold, others, tokens, context_tokens)
        rng = random.Random(f"hotpotqa:{seed}:{q['_id']}")
        walk = list(pool)
        rng.shuffle(walk)
        hay = _fill(hay, walk, tokens, context_tokens,
                    lambda d, own=own_titles: all_docs[d].metadata["title"] in own)
        rng.shuffle(hay)
        for d in hay:
            documents[d] = all_docs[d]
        n_tok = tokens.total(hay)
        examples.append(Example(
            qid=q["_id"], question=q["question"], answers=[q["answer"]], doc_ids=hay,
            evidence=evidence, dataset="hotpotqa", context_tokens=n_tok,
            metadata={"index": i, "type": q.get("type"), "level": q.get("level"),
                      "target_tokens": context_tokens, "gold_doc_ids": gold,
                      "dropped_evidence": dropped, "over_budget": n_tok > context_tokens}))
    return Benchmark(f"hotpotqa-{context_tokens}", documents, examples)


# --------------------------------------------------------------------------- SQuAD


@functools.lru_cache(maxsize=2)
def _load_squad_cached(path: str | None) -> list[dict]:
    folder = _squad_dir(path)
    with gzip.open(os.path.join(folder, _corpus.SQUAD_FILE), "rt", encoding="utf-8") as f:
        return json.load(f)["data"]


def _squad_dir(path: str | None) -> str:
    if path is not None and os.path.isfile(os.path.join(path, _corpus.SQUAD_FILE)):
        return str(path)
    folder = _corpus.data_dir(path)
    if not (folder / _corpus.SQUAD_FILE).is_file():
        raise FileNotFoundError(f"{_corpus.SQUAD_FILE} not found in {folder}")
    return str(folder)


def load_squad(path: str | os.PathLike | None = None) -> list[dict]:
    """The SQuAD 2.0 dev articles (the file's ``"data"`` list), in file order (cached).

    ``path`` is the data folder, as for :func:`s3_retriever.corpus.load_hotpotqa`.

    Example:
        >>> articles = load_squad()  # doctest: +SKIP
        >>> sorted(articles[0])  # doctest: +SKIP
        ['paragraphs', 'title']
    """
    return _load_squad_cached(_path_key(path))


def _squad_document(title: str, p_idx: int, context: str) -> tuple[Document, int]:
    """Paragraph as a Document (stripped) and the number of leading characters removed."""
    lead = len(context) - len(context.lstrip())
    doc = Document(f"squad:{title}:{p_idx}", context.strip(),
                   {"title": title, "paragraph": p_idx, "source": "squad2"})
    return doc, lead


def squad_benchmark(n_questions: int, context_tokens: int, count_tokens: Callable[[str], int],
                    *, path: str | os.PathLike | None = None, seed: int = 0,
                    pool_factor: float = 2.0) -> Benchmark:
    """Answerable SQuAD 2.0 questions, each in a haystack of ``context_tokens`` tokens.

    ``n_questions`` answerable questions are drawn with a seeded RNG (kept in file
    order). A haystack is the gold paragraph plus paragraphs of *other* articles from
    the shared padding pool, while they fit, shuffled per question.

    Evidence: every distinct annotated answer span, all in one alternative group
    (``Evidence.group = 0``): evidence recall counts the question as covered when any
    one of them is covered. ``answers``: all distinct gold answer texts.

    Raises:
        ValueError: fewer answerable questions than ``n_questions``.

    Example:
        >>> bench = squad_benchmark(5, 4000, lambda s: len(s.split()))  # doctest: +SKIP
        >>> bench.examples[0].evidence[0].group  # doctest: +SKIP
        0
    """
    if context_tokens <= 0:
        raise ValueError(f"context_tokens must be positive, got {context_tokens}")
    articles = load_squad(path)
    all_docs: dict[str, Document] = {}
    leads: dict[str, int] = {}
    order: list[str] = []
    candidates: list[tuple[str, dict]] = []
    for article in articles:
        title = article["title"]
        for p_idx, para in enumerate(article["paragraphs"]):
            doc, lead = _squad_document(title, p_idx, para["context"])
            if not doc.text:
                continue
            all_docs[doc.doc_id] = doc
            leads[doc.doc_id] = lead
            order.append(doc.doc_id)
            for qa in para["qas"]:
                if not qa.get("is_impossible") and qa.get("answers"):
                    candidates.append((doc.doc_id, qa))
    if n_questions > len(candidates):
        raise ValueError(f"asked for {n_questions} questions, only {len(candidates)} "
                         "answerable SQuAD questions available")
    picked = sorted(random.Random(f"squad-questions:{seed}").sample(
        range(len(candidates)), n_questions))
    random.Random(f"squad-pool:{seed}").shuffle(order)
    tokens = _TokenCache(count_tokens, all_docs)
    pool = _pool_prefix(order, tokens, pool_factor * context_tokens)

    documents: dict[str, Document] = {}
    examples: list[Example] = []
    for c in picked:
        doc_id, qa = candidates[c]
        doc = all_docs[doc_id]
        lead = leads[doc_id]
        evidence: list[Evidence] = []
        seen_spans: set[tuple[int, int]] = set()
        answers: list[str] = []
        for ans in qa["answers"]:
            if ans["text"] not in answers:
                answers.append(ans["text"])
            a = int(ans["answer_start"]) - lead
            span = _strip_span(doc.text, max(a, 0), min(a + len(ans["text"]), len(doc.text)))
            if span[0] < span[1] and span not in seen_spans:
                seen_spans.add(span)
                evidence.append(Evidence(doc_id, span[0], span[1], group=0))
        article = doc.metadata["title"]
        hay = [doc_id]
        rng = random.Random(f"squad:{seed}:{qa['id']}")
        walk = list(pool)
        rng.shuffle(walk)
        hay = _fill(hay, walk, tokens, context_tokens,
                    lambda d, article=article: all_docs[d].metadata["title"] == article)
        rng.shuffle(hay)
        for d in hay:
            documents[d] = all_docs[d]
        n_tok = tokens.total(hay)
        examples.append(Example(
            qid=qa["id"], question=qa["question"], answers=answers, doc_ids=hay,
            evidence=evidence, dataset="squad2", context_tokens=n_tok,
            metadata={"target_tokens": context_tokens, "gold_doc_ids": [doc_id],
                      "over_budget": n_tok > context_tokens}))
    return Benchmark(f"squad2-{context_tokens}", documents, examples)


# --------------------------------------------------------------------------- needles

_ADJECTIVES = ["Vermilion", "Silent", "Northern", "Amber", "Crystal", "Hollow", "Golden",
               "Obsidian", "Whispering", "Cobalt", "Ivory", "Scarlet", "Emerald", "Iron",
               "Misty", "Sunken", "Azure", "Copper", "Frozen", "Velvet"]
_PLACES = ["Archive", "Lighthouse", "Observatory", "Orchard", "Citadel", "Harbor", "Library",
           "Monastery", "Foundry", "Garden", "Vault", "Bridge", "Tower", "Academy", "Mill",
           "Conservatory", "Gallery", "Station", "Abbey", "Market"]
_WORDS = ["lantern", "falcon", "river", "marble", "compass", "willow", "thunder", "saffron",
          "harp", "glacier", "pepper", "meadow", "anchor", "cinder", "orchid", "quartz",
          "raven", "tulip", "canyon", "ember"]
_TEMPLATES = [
    ("The secret passphrase of the {name} is '{value}'.",
     "What is the secret passphrase of the {name}?"),
    ("The access code for the {name} is '{value}'.",
     "What is the access code for the {name}?"),
    ("The password that opens the {name} is '{value}'.",
     "What is the password that opens the {name}?"),
]


def _needles(n: int, seed: int) -> list[tuple[str, str, str, str]]:
    """``n`` distinct (name, value, fact sentence, question) tuples, seeded."""
    rng = random.Random(f"needles:{seed}")
    names: set[str] = set()
    out = []
    while len(out) < n:
        name = f"{rng.choice(_ADJECTIVES)} {rng.choice(_PLACES)}"
        if len(names) < len(_ADJECTIVES) * len(_PLACES):
            if name in names:
                continue
        else:
            name = f"{name} {len(out)}"
        names.add(name)
        value = f"{rng.choice(_WORDS)} {rng.choice(_WORDS)} {rng.randint(1000, 9999)}"
        fact, question = rng.choice(_TEMPLATES)
        out.append((name, value, fact.format(name=name, value=value),
                    question.format(name=name)))
    return out


# Paraphrased needles: the question names the place by synonyms and asks with other words,
# so it shares no content word with the fact (checked by the tests with the BM25 tokenizer).
_PARA_ADJECTIVES = [("Silent", "Quiet"), ("Northern", "Boreal"), ("Crystal", "Glass"),
                    ("Hollow", "Empty"), ("Golden", "Gilded"), ("Scarlet", "Crimson"),
                    ("Frozen", "Icy"), ("Misty", "Foggy"), ("Sunken", "Submerged"),
                    ("Ancient", "Old"), ("Tiny", "Small"), ("Hidden", "Concealed")]
_PARA_PLACES = [("Lighthouse", "Beacon"), ("Harbor", "Port"), ("Tower", "Spire"),
                ("Garden", "Park"), ("Vault", "Strongroom"), ("Bridge", "Viaduct"),
                ("Academy", "School"), ("Market", "Bazaar"), ("Abbey", "Priory"),
                ("Station", "Depot"), ("Orchard", "Grove"), ("Citadel", "Fortress")]
_PARA_TEMPLATES = [
    ("Only guests who whisper '{value}' are let in by the keeper of the {name}.",
     "What phrase grants entry to the {alias}?"),
    ("To open the {name}, a visitor must say '{value}' to the gatekeeper.",
     "Which words unlock the doors of the {alias}?"),
    ("The watchman at the {name} admits nobody unless they recite '{value}'.",
     "What must be spoken to get inside the {alias}?"),
]
NEEDLE_VARIANTS = ("plain", "near", "multi", "para")
"""``plain``: one fact whose question repeats its words. ``near``: the fact among three
near-duplicates (same place or same adjective, or the same name with a qualifier) holding
other values. ``multi``: three facts about one place, each a required piece of evidence.
``para``: the question shares no content word with the fact."""


def _near_keys(name: str, rng: random.Random) -> list[str]:
    """Three keys close to ``name``: another adjective, another place, a qualifier."""
    adj, place = name.split(" ", 1)
    return [f"{rng.choice([a for a in _ADJECTIVES if a != adj])} {place}",
            f"{adj} {rng.choice([p for p in _PLACES if p != place])}",
            f"{name} Annex"]


def _variant_facts(variant: str, name: str, value: str, fact: str, question: str,
                   rng: random.Random) -> tuple[str, list[str], list[str], list[str]]:
    """(question, gold fact sentences, answers, distractor sentences) of one needle."""
    if variant == "plain":
        return question, [fact], [value], []
    if variant == "near":
        template = next(f for f, q in _TEMPLATES if q.format(name=name) == question)
        others = [template.format(name=k, value=f"{rng.choice(_WORDS)} {rng.choice(_WORDS)} "
                                                f"{rng.randint(1000, 9999)}")
                  for k in _near_keys(name, rng)]
        return question, [fact], [value], others
    if variant == "multi":
        values = [value] + [f"{rng.choice(_WORDS)} {rng.randint(1000, 9999)}" for _ in range(2)]
        facts = [f"One of the three keys to the {name} is '{v}'." for v in values]
        return f"What are the three keys to the {name}?", facts, values, []
    adj, alias_adj = rng.choice(_PARA_ADJECTIVES)
    place, alias_place = rng.choice(_PARA_PLACES)
    f, q = rng.choice(_PARA_TEMPLATES)
    return (q.format(alias=f"{alias_adj} {alias_place}"),
            [f.format(name=f"{adj} {place}", value=value)], [value], [])


def needle_benchmark(n_questions: int, context_tokens: int, count_tokens: Callable[[str], int],
                     *, depths: Iterable[float] = (0.1, 0.3, 0.5, 0.7, 0.9), seed: int = 0,
                     path: str | os.PathLike | None = None,
                     pool_factor: float = 2.0, variant: str = "plain") -> Benchmark:
    """Needle-in-a-haystack: a synthetic fact, as its own document, among real paragraphs.

    ``variant`` (:data:`NEEDLE_VARIANTS`) makes needles that separate retrievers: with
    ``near`` the other near-duplicate facts and with ``multi`` the other two facts are
    documents of their own at seeded random positions; ``para`` asks in other words.

    Question ``i`` gets depth ``depths[i % len(depths)]``: the needle document is placed
    at the document boundary whose token position (fraction of the haystack before it)
    is closest to that depth. Filler: HotpotQA non-reserved paragraphs from the shared
    padding pool. Evidence: the whole needle sentence. ``metadata`` records
    ``depth`` (requested) and ``actual_depth`` (measured in tokens).

    Example:
        >>> bench = needle_benchmark(5, 2000, lambda s: len(s.split()))  # doctest: +SKIP
        >>> [ex.metadata["depth"] for ex in bench.examples]  # doctest: +SKIP
        [0.1, 0.3, 0.5, 0.7, 0.9]
    """
    if context_tokens <= 0:
        raise ValueError(f"context_tokens must be positive, got {context_tokens}")
    if variant not in NEEDLE_VARIANTS:
        raise ValueError(f"unknown needle variant {variant!r}; known: {NEEDLE_VARIANTS}")
    depths = [float(d) for d in depths]
    if not depths or any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"depths must be non-empty fractions in [0, 1], got {depths}")
    key = _path_key(path)
    all_docs, tokens, pool = _padding_pool(key, seed, count_tokens, pool_factor * context_tokens)

    documents: dict[str, Document] = {}
    examples: list[Example] = []
    tag = "" if variant == "plain" else f"{variant}:"
    for i, (name, value, fact, question) in enumerate(_needles(n_questions, seed)):
        qid = f"needle-{tag.replace(':', '-')}{seed}-{i}"
        rng = random.Random(f"needle:{tag}{seed}:{i}")
        question, facts, answers, others = _variant_facts(variant, name, value, fact,
                                                          question, rng)
        needle = Document(f"needle:{tag}{seed}:{i}", facts[0],
                          {"source": "needle", "name": name})
        extra = [Document(f"needle:{tag}{seed}:{i}:{j}", t, {"source": "needle"})
                 for j, t in enumerate(facts[1:] + others, start=1)]
        for d in [needle, *extra]:
            all_docs[d.doc_id] = d
        budget = context_tokens - sum(tokens(d.doc_id) + tokens.sep for d in [needle, *extra])
        walk = list(pool)
        rng.shuffle(walk)
        filler = _fill([], walk, tokens, max(budget, 0), lambda d: False)
        for d in extra:  # the other facts at seeded random places
            filler.insert(rng.randint(0, len(filler)), d.doc_id)
        depth = depths[i % len(depths)]
        total = tokens.total(filler)
        best, best_err, before = 0, float("inf"), 0
        for pos in range(len(filler) + 1):
            frac = before / total if total else 0.0
            if abs(frac - depth) < best_err:
                best, best_err = pos, abs(frac - depth)
            if pos < len(filler):
                before += tokens(filler[pos]) + tokens.sep
        hay = filler[:best] + [needle.doc_id] + filler[best:]
        n_tok = tokens.total(hay)
        actual = (tokens.total(hay[:best]) + (tokens.sep if best else 0)) / max(n_tok, 1)
        for d in hay:
            documents[d] = all_docs[d]
        gold = [needle.doc_id] + [d.doc_id for d in extra[:len(facts) - 1]]
        examples.append(Example(
            qid=qid, question=question, answers=answers, doc_ids=hay,
            evidence=[Evidence(d, 0, len(all_docs[d].text)) for d in gold],
            dataset="needle" if variant == "plain" else f"needle-{variant}",
            context_tokens=n_tok,
            metadata={"depth": depth, "actual_depth": actual, "position": best,
                      "target_tokens": context_tokens, "gold_doc_ids": gold,
                      "over_budget": n_tok > context_tokens}))
    return Benchmark(f"needle-{tag.replace(':', '-')}{context_tokens}", documents, examples)
