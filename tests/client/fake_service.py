"""FakeNearService: a scripted stand-in for the NEAR service, for what the real one cannot be made
to do on cue (answer 429 with a given Retry-After, 503 twice then 200, refuse connections for a while).

It is no server: an ``httpx.MockTransport`` handler that the clients it makes
(:meth:`FakeNearService.client`, :meth:`FakeNearService.async_client`) send their requests to, so the
client's retry logic runs on real ``httpx`` requests and responses without a socket. Each path
answers the responses scripted for it first, in order, then a valid default answer. Every request is
recorded. Tests against the real service use the ``near`` / ``service_factory`` fixtures instead.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from near_client import AsyncNearClient, NearClient

Answer = tuple[int, Any] | tuple[int, Any, dict[str, str]]


@dataclass
class Seen:
    method: str
    path: str
    body: Any
    at: float
    headers: dict[str, str]


class FakeNearService:
    """A fake NEAR service with scripted answers (see module docstring)."""

    url = "http://near.test"

    def __init__(self, pool_size: int = 48, fingerprint: str = "fake0fingerprint") -> None:
        self.pool = {"size": pool_size, "fingerprint": fingerprint, "model": "fake-model"}
        self.redis = "ok"
        self.requests: list[Seen] = []
        self.down_until = 0.0  # time.monotonic() before which every connection is refused
        self._script: dict[str, list[tuple[int, Any, dict[str, str]]]] = defaultdict(list)
        self.transport = httpx.MockTransport(self._handle)

    def client(self, **kwargs: Any) -> NearClient:
        """A :class:`NearClient` (``kwargs``: its options) whose requests this fake answers."""
        return NearClient(self.url, transport=self.transport, **kwargs)

    def async_client(self, **kwargs: Any) -> AsyncNearClient:
        """An :class:`AsyncNearClient` (``kwargs``: its options) whose requests this fake answers."""
        return AsyncNearClient(self.url, transport=self.transport, **kwargs)

    def script(self, path: str, *answers: Answer) -> None:
        """Queue answers ``(status, json_body[, headers])`` for ``path`` (e.g. "/select")."""
        for a in answers:
            self._script[path].append((a[0], a[1], a[2] if len(a) > 2 else {}))  # type: ignore[misc]

    def seen(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.path == path]

    def _handle(self, request: httpx.Request) -> httpx.Response:
        if time.monotonic() < self.down_until:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        path = request.url.path
        raw = request.read()
        body = json.loads(raw) if raw else None
        self.requests.append(Seen(request.method, path, body, time.monotonic(), dict(request.headers)))
        if self._script[path]:
            status, payload, headers = self._script[path].pop(0)
            if isinstance(payload, str):
                return httpx.Response(status, text=payload, headers={"content-type": "text/html", **headers})
            return httpx.Response(status, json=payload, headers=headers)
        return httpx.Response(200, json=self._default(request.method, path, body))

    def _default(self, method: str, path: str, body: Any) -> Any:
        if path == "/health":
            return {"status": "ok"}
        if path == "/ready":
            return {"status": "ready", "redis": self.redis}
        if path == "/info":
            return {
                "version": "0",
                "model": "fake-model",
                "revision": "0",
                "backend": "fake",
                "device": "cpu",
                "dtype": "float32",
                "dim": 4,
                "max_length": 16,
                "pooling": "mean",
                "query_prompt": "",
                "index": "flat",
                "pool": self.pool,
                "redis": self.redis,
            }
        if path == "/select":
            n, k = self.pool["size"], body["max_k"]
            rng = np.random.default_rng(body.get("round") or 0)
            indices = [rng.permutation(n)[:k].tolist() for _ in body["queries"]]
            selected = rng.permutation(n)[: body["budget"]].tolist() if body.get("budget") else None
            return {"indices": indices, "scores": [[1.0] * k for _ in indices], "selected": selected, "pool": self.pool}
        if path.startswith("/runs/"):
            return {"run_id": path[len("/runs/") :], "pool": self.pool, "rounds": []}
        if path == "/v1/embeddings":
            texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
            return {
                "object": "list",
                "model": "fake-model",
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
                "data": [{"object": "embedding", "index": i, "embedding": [0.5] * 4} for i in range(len(texts))],
            }
        return {"error": {"code": "not_found", "message": path}}
