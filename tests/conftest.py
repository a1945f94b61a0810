"""Shared fixtures: the real embedded model is loaded once per session (offline)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def lm():
    """The embedded default model (SmolLM2-135M-Instruct), loaded through the cache."""
    from s3_retriever.model.loading import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def saes():
    """The SAEs the adapter tests build indexes with: None selects the ones shipped for the
    default model (the package must ship them; test_real_model checks they load)."""
    return None


def pytest_collection_modifyitems(items):
    """Every test that uses the real model (the ``lm`` fixture, directly or through another
    fixture) is marked ``model``: ``pytest -m model`` reruns them in the other dtype."""
    for item in items:
        if "lm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.model)
