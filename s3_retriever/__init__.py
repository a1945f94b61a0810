"""s3-retriever: S3-Attention retrieval (sparse-autoencoder codes of attention keys).

Example:
    >>> from s3_retriever import S3Index
    >>> index = S3Index.from_model("smollm2-135m")
"""

from s3_retriever.engine import S3Index, S3Settings
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
from s3_retriever.generate import Answer
from s3_retriever.models import DEFAULT_MODEL, LoadedModel, load_model
from s3_retriever.sae import TopKSAE
from s3_retriever.spans import Span

__version__ = "0.1.0"

__all__ = [
    "Answer", "DEFAULT_MODEL", "EmptyIndexError", "IndexFormatError", "IndexNotFoundError",
    "InvalidInputError", "LoadedModel", "ModelLoadError", "OutputExistsError", "S3Error",
    "S3Index", "S3Settings", "SAEError", "Span", "TopKSAE", "UnknownDocumentError",
    "load_model",
]
