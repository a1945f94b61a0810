"""The causal LM: loading (embedded default, folder, GGUF, Hub id; dtype and device choice;
conversion cache) and the hooks that capture pre-RoPE per-head queries and keys."""

from s3_retriever.model.hooks import AttentionSpec, QKHooks, capture_qk
from s3_retriever.model.loading import LoadedModel, load_model

__all__ = ["AttentionSpec", "LoadedModel", "QKHooks", "capture_qk", "load_model"]
