"""NEAR Select client: what a training job imports.

Importing this package is cheap: no torch, transformers, faiss or redis. The training pieces
(:class:`NearSelectionCallback`, :class:`HighestLossQueries`, :class:`SelectionSampler`) are loaded
on first use and need ``pip install 'near-select[train]'``.

>>> import near_client
>>> near_client.NearClient("http://127.0.0.1:8000")
NearClient('http://127.0.0.1:8000')
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from near_schema import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorBody,
    HealthResponse,
    InfoResponse,
    PoolInfo,
    ReadyResponse,
    RunInfo,
    SelectRequest,
    SelectResponse,
    fingerprint,
)

from .client import AsyncNearClient, NearClient, RetryPolicy
from .errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ConnectError,
    InvalidResponseError,
    NearClientError,
    NotFoundError,
    PayloadTooLargeError,
    PoolMismatchError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    ServiceUnavailableError,
    TransportError,
    raise_for_status,
)

if TYPE_CHECKING:
    from .callback import NearSelectionCallback
    from .queries import HighestLossQueries
    from .sampler import SelectionSampler

__version__ = "0.1.0"

# Loaded on first access: they import torch/transformers.
_LAZY = {
    "HighestLossQueries": ".queries",
    "NearSelectionCallback": ".callback",
    "SelectionSampler": ".sampler",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "APIError",
    "AsyncNearClient",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "ConnectError",
    "EmbeddingsRequest",
    "EmbeddingsResponse",
    "ErrorBody",
    "HealthResponse",
    "HighestLossQueries",
    "InfoResponse",
    "InvalidResponseError",
    "NearClient",
    "NearClientError",
    "NearSelectionCallback",
    "NotFoundError",
    "PayloadTooLargeError",
    "PoolInfo",
    "PoolMismatchError",
    "RateLimitedError",
    "ReadyResponse",
    "RequestTimeoutError",
    "RetryPolicy",
    "RunInfo",
    "SelectRequest",
    "SelectResponse",
    "SelectionSampler",
    "ServerError",
    "ServiceUnavailableError",
    "TransportError",
    "__version__",
    "fingerprint",
    "raise_for_status",
]
