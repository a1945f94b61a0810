"""Griffe extension: render the package's docstrings well without changing them.

The docstrings are written for ``help()`` and doctest first; this adapts them for the API
reference, at render time only:

* ``Example:`` section titles become ``Examples:`` (the Google-style title griffe turns
  into highlighted, doctest-flag-free code);
* doctest blocks outside a section become fenced ``pycon`` code;
* an ``Examples:`` section without doctest lines (shell commands) becomes a code block;
* Sphinx roles (``:class:`~a.b.C```) become code spans (``C``), and a reST ``::`` before a
  literal block becomes ``:``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`(~?)\.*([^`]+)`")
_FLAGS = re.compile(r"\s*#\s*doctest:.+$")
_EXAMPLE = re.compile(r"^(\s*)Examples?:\s*$")


def _role(match: re.Match[str]) -> str:
    name = match.group(2)
    return f"`{name.rsplit('.', 1)[-1] if match.group(1) else name}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def rewrite(text: str) -> str:
    """The docstring ``text`` adapted for rendering (see the module docstring)."""
    lines = [ln if ln.lstrip().startswith((">>>", "...")) else _ROLE.sub(_role, ln)
             for ln in text.split("\n")]
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        head = _EXAMPLE.match(line)
        if head:
            # the section: following lines indented deeper (blank lines inside kept)
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > len(head[1])):
                j += 1
            body = lines[i + 1:j]
            while body and not body[-1].strip():
                body.pop()
            if any(b.lstrip().startswith(">>>") for b in body):
                out += [f"{head[1]}Examples:", *body]
            else:  # commands, not doctests: show them as a code block
                pad = min((_indent(b) for b in body if b.strip()), default=0)
                out += ["", "```text", *[b[pad:] for b in body], "```"]
            out += lines[len(body) + i + 1:j]
            i = j
            continue
        if line.startswith(">>>"):
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(_FLAGS.sub("", lines[i]))
                i += 1
            if out and out[-1].strip():
                out.append("")
            out += ["```pycon", *block, "```"]
            continue
        if line.endswith("::") and not line.endswith(":::"):
            line = line[:-1]
        out.append(line)
        i += 1
    return "\n".join(out)


class DocstringsForMkdocs(griffe.Extension):
    """Apply :func:`rewrite` to every docstring griffe loads."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
