"""The public surface of near_client is locked, and importing it stays cheap."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import near_client

PUBLIC = [
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


def test_public_surface_is_locked() -> None:
    assert sorted(near_client.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        obj = getattr(near_client, name)  # lazy names resolve too, each to the thing it names
        if name == "__version__":
            assert obj == importlib.metadata.version("near-select")
        else:
            assert obj.__name__ == name and obj.__module__.split(".")[0] in {"near_client", "near_schema"}


def test_import_is_cheap() -> None:
    code = (
        "import sys, json, near_client; near_client.NearClient; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'transformers', 'faiss', 'redis', 'near_service', 'sentence_transformers', 'accelerate'})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


def test_training_pieces_load_on_first_use() -> None:
    code = (
        "import sys, near_client; assert 'transformers' not in sys.modules; "
        "near_client.NearSelectionCallback; assert 'transformers' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
