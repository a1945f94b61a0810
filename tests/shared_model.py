"""A fixture that lets code written for users (tutorials, docstring examples) call
``load_model("smollm2-135m")`` as users do, while the tests load the model only once."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from s3_retriever.model import loading as models

_PREFIXES = ("s3_retriever", "langchain_s3", "llama_index.retrievers.s3")


@pytest.fixture()
def reuse_session_model(lm, monkeypatch):
    """Patch every module's ``load_model`` so that a request the session's model satisfies
    (same name, device and dtype) returns it; any other request loads as usual."""
    original = models.load_model

    def load_model(name_or_path: Any = models.DEFAULT_MODEL, device: Any = None,
                   dtype: Any = None) -> models.LoadedModel:
        dev = models.choose_device(device)
        if (name_or_path == lm.model_id and dev.type == lm.device.type
                and models.choose_dtype(dev, dtype) == lm.dtype):
            return lm
        return original(name_or_path, device, dtype)

    for name, module in list(sys.modules.items()):
        if name.startswith(_PREFIXES) and getattr(module, "load_model", None) is original:
            monkeypatch.setattr(module, "load_model", load_model)
    return lm
