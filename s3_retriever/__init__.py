"""s3-retriever: S3-Attention retrieval (sparse-autoencoder codes of attention keys).

Example:
    >>> from s3_retriever import S3Index
    >>> index = S3Index.from_model("smollm2-135m")
"""

from s3_retriever.engine import EmptyIndexError, S3Index, S3Settings
from s3_retriever.generate import Answer
from s3_retriever.models import DEFAULT_MODEL, LoadedModel, ModelLoadError, load_model
from s3_retriever.sae import SAEError, TopKSAE
from s3_retriever.spans import Span
from s3_retriever.storage import IndexFormatError

__version__ = "0.1.0"

__all__ = [
    "Answer", "DEFAULT_MODEL", "EmptyIndexError", "IndexFormatError", "LoadedModel",
    "ModelLoadError", "S3Index", "S3Settings", "SAEError", "Span", "TopKSAE", "load_model",
]
