"""s3-retriever: S3-Attention retrieval (sparse-autoencoder codes of attention keys).

Example:
    >>> from s3_retriever import S3Index
    >>> index = S3Index.from_model("smollm2-135m")
"""

from s3_retriever import storage
from s3_retriever.config import (
    ANSWER_BUDGET_TOKENS,
    DEFAULT_K,
    DEFAULT_MODEL,
    FUSIONS,
    MAX_NEW_TOKENS,
    MODES,
    S3Settings,
)
from s3_retriever.engine import S3Index
from s3_retriever.errors import (
    EmptyIndexError,
    IndexFormatError,
    IndexNotFoundError,
    InvalidInputError,
    ModelLoadError,
    OutputExistsError,
    S3Error,
    SAEError,
    UnknownDocumentError,
)
from s3_retriever.generate import (
    Answer,
    Generation,
    TextStream,
    generate_reply,
    generate_text,
    generation_options,
    stream_text,
)
from s3_retriever.model.loading import LoadedModel, load_model
from s3_retriever.retrieval.filters import check as check_filters
from s3_retriever.retrieval.spans import Span
from s3_retriever.sae.coder import TopKSAE

__version__ = "0.1.0"

__all__ = [
    "ANSWER_BUDGET_TOKENS", "Answer", "DEFAULT_K", "DEFAULT_MODEL", "EmptyIndexError",
    "FUSIONS", "Generation", "IndexFormatError", "IndexNotFoundError", "InvalidInputError",
    "LoadedModel", "MAX_NEW_TOKENS", "MODES", "ModelLoadError", "OutputExistsError", "S3Error", "S3Index",
    "S3Settings", "SAEError", "Span", "TextStream", "TopKSAE", "UnknownDocumentError",
    "check_filters", "generate_reply", "generate_text", "generation_options", "load_model",
    "storage", "stream_text",
]
