"""NEAR Select client: what a training job imports.

Importing this package is cheap: no torch, transformers, faiss or redis.
"""

from .fingerprint import fingerprint
from .schema import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorBody,
    InfoResponse,
    PoolInfo,
    ReadyResponse,
    RunInfo,
    SelectRequest,
    SelectResponse,
)

__version__ = "0.1.0"

__all__ = [
    "EmbeddingsRequest",
    "EmbeddingsResponse",
    "ErrorBody",
    "InfoResponse",
    "PoolInfo",
    "ReadyResponse",
    "RunInfo",
    "SelectRequest",
    "SelectResponse",
    "__version__",
    "fingerprint",
]
