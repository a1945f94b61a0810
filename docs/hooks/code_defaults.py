"""MkDocs hook: default values quoted in the prose come from the code at build time.

``{{ settings.NAME }}`` is the default of the :class:`~s3_retriever.config.S3Settings` field
``NAME``; ``{{ config.NAME }}`` the value of a constant of :mod:`s3_retriever.config` (where
every default is defined); ``{{ default:module.object:param }}`` the default of a parameter
of any function, method or dataclass. A name that does not exist fails the build, so renaming a setting
cannot leave a stale page behind.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

PATTERN = re.compile(
    r"\{\{\s*(settings\.(\w+)|config\.(\w+)|default:([\w.]+):(\w+))\s*\}\}")


def _resolve(dotted: str) -> Any:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"cannot import {dotted}")


def default_of(dotted: str, param: str) -> Any:
    """The default value of parameter ``param`` of the callable at ``dotted``."""
    parameter = inspect.signature(_resolve(dotted)).parameters.get(param)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        raise ValueError(f"{dotted} has no parameter {param!r} with a default")
    return parameter.default


def render(value: Any) -> str:
    """How a default reads in prose: strings quoted, numbers as written in Python."""
    return f'"{value}"' if isinstance(value, str) else repr(value)


def substitute(markdown: str) -> str:
    """Replace every placeholder in ``markdown``."""
    def one(m: re.Match[str]) -> str:
        if m.group(2):
            return render(default_of("s3_retriever.config.S3Settings", m.group(2)))
        if m.group(3):
            return render(getattr(importlib.import_module("s3_retriever.config"), m.group(3)))
        return render(default_of(m.group(4), m.group(5)))

    return PATTERN.sub(one, markdown)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return substitute(markdown)
