"""MkDocs hook: the CLI reference is the ``--help`` text of the real argparse parser.

``docs/cli.md`` holds the marker ``<!-- cli-reference -->``; at build time it is replaced by
one section per ``s3-retriever`` subcommand with that subcommand's help, so the page cannot
drift from the code.
"""

from __future__ import annotations

import argparse
from typing import Any

MARKER = "<!-- cli-reference -->"
WIDTH = 96


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog, width=WIDTH)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """``{name: subparser}`` of the parser's subcommands, in definition order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def options_table(parser: argparse.ArgumentParser) -> str:
    """A markdown table of the parser's arguments: name, default, help."""
    rows = ["| argument | default | description |", "|---|---|---|"]
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        name = ", ".join(f"`{o}`" for o in a.option_strings) or f"`{a.dest}`"
        if a.required and a.option_strings:
            default = "required"
        elif isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            default = "off" if a.default is False else "on"
        elif a.default is None or a.default == argparse.SUPPRESS:
            default = ""
        else:
            d = a.default
            default = f"`{' '.join(map(str, d)) if isinstance(d, (list, tuple)) else d}`"
        desc = a.help or ""
        if a.choices and not isinstance(a.choices, dict):
            desc = f"{desc} (one of {', '.join(map(str, a.choices))})".strip()
        rows.append(f"| {name} | {default} | {_cell(desc)} |")
    return "\n".join(rows)


def cli_reference_markdown() -> str:
    """Markdown: the top-level help, then a section per subcommand with its help."""
    from s3_retriever.cli import build_parser

    parser = build_parser()
    parser.formatter_class = _formatter
    out = [f"```text\n{parser.format_help()}```\n"]
    summaries = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {a.dest: a.help for a in action._choices_actions}
    for name, sub in subcommands(parser).items():
        sub.formatter_class = _formatter
        summary = summaries.get(name) or ""
        out.append(f"## `s3-retriever {name}`\n\n{summary[:1].upper() + summary[1:]}.\n\n"
                   f"```text\n{sub.format_help()}```\n\n{options_table(sub)}\n")
    return "\n".join(out)


def on_page_markdown(markdown: str, *, page: Any, **kwargs: Any) -> str:
    """Replace the marker on the CLI page with the generated reference."""
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_reference_markdown())
    return markdown
