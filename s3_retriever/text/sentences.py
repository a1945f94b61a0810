"""Sentence bounds of a text: the units that BM25 ranks and spans grow from.

Example:
    >>> text = "Dr. Smith arrived. He sat down.\\n\\nA new paragraph"
    >>> [text[a:b] for a, b in split_sentences(text)]
    ['Dr. Smith arrived.', 'He sat down.', 'A new paragraph']
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ['paragraph_breaks', 'split_sentences']


# Lower-case, without the final period. Multi-dot ones ("e.g", "u.s") are also caught by
# the dotted-acronym rule; listed anyway for clarity.
_ABBREVIATIONS = frozenset(
    """
    mr mrs ms mx dr st jr sr vs etc e.g i.e u.s u.k u.n no nos inc ltd co corp mt ft gen col
    lt sgt capt cpt cmdr adm maj prof rev hon gov sen rep pres fr sr sra srta messrs
    jan feb mar apr jun jul aug sep sept oct nov dec
    fig figs vol vols ch chap sec pp approx ca cf al ed eds est dept univ assn bros ave blvd
    rd hwy ph.d a.m p.m a.d b.c
    """.split()
)

_OPENERS = "\"'“‘«([{"

_CLOSERS = "\"'”’»)]}"

# Sentence-final punctuation, optional closing quotes/brackets, then whitespace.
_END_RE = re.compile(r"[.!?]+[\"'”’»)\]}]*\s+")

_BLANK_LINE_RE = re.compile(r"\n[^\S\n]*\n")

_NONSPACE_RE = re.compile(r"\S")

_INITIAL_RE = re.compile(r"[^\W\d_]")  # one letter (any script); upper case checked apart

_ACRONYM_RE = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")  # U.S, e.g, i.e, Ph.D

_LIST_ITEM_RE = re.compile(r"(?:[-*+•‣◦▪–]|\d{1,3}[.)]|\(?[a-zA-Z0-9]{1,2}\))\s")

_LINE_END_PUNCT = ".!?,;:…"

_HEADING_MAX_CHARS = 60

_LOOKBACK = 40  # chars scanned back for the word before a period (keeps the split linear)

def _is_abbreviation(text: str, dot: int) -> bool:
    """Whether the period at ``text[dot]`` ends an abbreviation, initial or list number."""
    lo = max(0, dot - _LOOKBACK)
    before = text[lo:dot]
    ws = max(before.rfind(" "), before.rfind("\n"), before.rfind("\t"), before.rfind("\r"))
    word = before[ws + 1:].lstrip(_OPENERS)
    if not word:
        return False
    if word.lower() in _ABBREVIATIONS or _ACRONYM_RE.fullmatch(word):
        return True
    if len(word) == 1 and _INITIAL_RE.match(word) and word.isupper():
        return True  # "J. R. R. Tolkien", "George W. Bush"
    if word.isdigit() and len(word) <= 3:
        # "1. First item": a list number at the start of a line is not a sentence end.
        line_start = text.rfind("\n", 0, dot - len(word)) + 1
        return not text[line_start:dot - len(word)].strip()
    return False

def _line_cuts(text: str) -> list[int]:
    """Cut positions at single newlines that end a heading or a list item."""
    cuts = []
    lines = text.split("\n")
    offset = 0
    prev = ""  # the previous line, stripped
    for i, line in enumerate(lines[:-1]):
        end = offset + len(line)  # the newline's position
        cur = line.strip()
        nxt = lines[i + 1].lstrip()
        if cur and nxt:
            cut = False
            starts_new = nxt[0].isupper() or nxt[0].isdigit() or nxt[0] in _OPENERS + "#"
            if cur.startswith("#") or _LIST_ITEM_RE.match(nxt + " "):
                cut = True  # a markdown heading ends, or a list item starts
            elif _LIST_ITEM_RE.match(cur + " ") and starts_new:
                cut = True  # a list item ends (a lower-case next line continues it)
            elif (
                len(cur) <= _HEADING_MAX_CHARS
                and cur.rstrip(_CLOSERS)[-1:] not in _LINE_END_PUNCT
                and starts_new
                and (
                    not prev
                    or prev.rstrip(_CLOSERS)[-1:] in ".!?:"
                    or prev.startswith("#")
                    or _LIST_ITEM_RE.match(prev + " ")
                )
            ):
                cut = True  # a short title-like line after a paragraph end
            if cut:
                cuts.append(end)
        prev = cur
        offset = end + 1
    return cuts

def split_sentences(text: str, *, max_chars: int = 1000) -> list[tuple[int, int]]:
    """Character bounds ``(start, end)`` of the sentences of ``text``.

    Rule-based and linear in ``len(text)``. The bounds are in order, do not overlap,
    exclude leading/trailing whitespace and together cover every non-whitespace character.

    A sentence ends:

    * after ``.``, ``!`` or ``?`` (optionally followed by closing quotes/brackets) when
      whitespace and then an upper-case letter, a digit or an opening quote/bracket
      follow -- except after a common abbreviation (Mr., Dr., e.g., U.S., Jan., Inc., ...),
      a single capital initial ("J. R. R. Tolkien") or a list number at a line start
      ("1. Item"); decimals ("3.14") never split as no whitespace follows the period;
    * at a blank line, always;
    * at a single newline that ends a markdown heading (``#``) or a list item, or
      precedes a list item (``-``, ``*``, ``1.``, ``a)``), or that ends a short
      (<= 60 chars) line without final punctuation that follows a blank line, a sentence
      end, a heading or a list item and is followed by a capitalised line (a heading such
      as "Early life"; in hard-wrapped prose a short line after a line ending in a period
      can be taken for one);
    * where a sentence is longer than ``max_chars``: at the last whitespace before the
      limit, or hard at the limit when there is none.

    Args:
        text: the document text.
        max_chars: the longest sentence kept whole (>= 1).

    Returns:
        a list of ``(start, end)`` pairs, ``end`` exclusive; empty for blank text.

    Example:
        >>> t = "Dr. Smith paid $3.50 at 5 p.m. on Jan. 3. He left! Did he?"
        >>> [t[a:b] for a, b in split_sentences(t)]
        ['Dr. Smith paid $3.50 at 5 p.m. on Jan. 3.', 'He left!', 'Did he?']
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    n = len(text)
    cuts = [0, n]
    for m in _END_RE.finditer(text):
        after = m.end()
        if after >= n:
            continue
        nxt = text[after]
        if not (nxt.isupper() or nxt.isdigit() or nxt in _OPENERS):
            continue
        punct_end = m.start()
        while punct_end < n and text[punct_end] in ".!?":
            punct_end += 1
        if punct_end - m.start() == 1 and text[m.start()] == "." and _is_abbreviation(
            text, m.start()
        ):
            continue
        cuts.append(m.start() + len(m.group().rstrip()))  # after the punctuation and closers
    cuts.extend(m.start() for m in _BLANK_LINE_RE.finditer(text))
    cuts.extend(_line_cuts(text))
    cuts = sorted(set(cuts))

    out: list[tuple[int, int]] = []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        seg = text[a:b]
        stripped = seg.lstrip()
        start = a + len(seg) - len(stripped)
        end = start + len(stripped.rstrip())
        while end - start > max_chars:
            piece_end = text.rfind(" ", start + 1, start + max_chars + 1)
            for ws in ("\n", "\t", "\r", "\u00a0"):
                piece_end = max(piece_end, text.rfind(ws, start + 1, start + max_chars + 1))
            if piece_end <= start:
                piece_end = start + max_chars  # no whitespace: hard cut
            piece = text[start:piece_end].rstrip()
            out.append((start, start + len(piece)))
            m = _NONSPACE_RE.search(text, piece_end, end)
            start = m.start() if m else end
        if end > start:
            out.append((start, end))
    return out


def paragraph_breaks(text: str, sentences: list[tuple[int, int]] | tuple) -> np.ndarray:
    """bool ``[len(sentences) - 1]``: whether a blank line separates sentence ``j`` from
    sentence ``j + 1`` (spans do not grow across it unless asked to).

    Example:
        >>> t = "One. Two.\\n\\nThree."
        >>> paragraph_breaks(t, split_sentences(t)).tolist()
        [False, True]
    """
    gaps = [text[a[1]:b[0]] for a, b in zip(sentences[:-1], sentences[1:])]
    return np.fromiter((bool(_BLANK_LINE_RE.search(g)) for g in gaps), bool, len(gaps))
