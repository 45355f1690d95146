"""FakeNearService: a scripted stand-in for the NEAR service, for what the real one cannot be made
to do on cue (answer 429 with a given Retry-After, 503 twice then 200, an unexpected status).

It is a real HTTP server (Starlette under uvicorn, in a thread, on a free port). Each path answers
the responses scripted for it first, in order, then a valid default answer. Every request is
recorded. Tests against the real service use the ``near`` / ``service_factory`` fixtures instead.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.conftest import free_port


@dataclass
class Seen:
    method: str
    path: str
    body: Any
    at: float
    headers: dict[str, str]


class FakeNearService:
    """A fake NEAR service with scripted answers (see module docstring)."""

    def __init__(self, pool_size: int = 48, fingerprint: str = "fake0fingerprint") -> None:
        self.pool = {"size": pool_size, "fingerprint": fingerprint, "model": "fake-model"}
        self.redis = "ok"
        self.port = free_port()
        self.requests: list[Seen] = []
        self._script: dict[str, list[tuple[int, Any, dict[str, str]]]] = defaultdict(list)
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, path: str, *answers: tuple[int, Any] | tuple[int, Any, dict[str, str]]) -> None:
        """Queue answers ``(status, json_body[, headers])`` for ``path`` (e.g. "/select")."""
        for a in answers:
            self._script[path].append((a[0], a[1], a[2] if len(a) > 2 else {}))  # type: ignore[misc]

    def seen(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.path == path]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake service did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    async def _handle(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        raw = await request.body()
        body = json.loads(raw) if raw else None
        self.requests.append(Seen(request.method, path, body, time.monotonic(), dict(request.headers)))
        if self._script[path]:
            status, payload, headers = self._script[path].pop(0)
            if isinstance(payload, str):
                return Response(payload, status_code=status, headers=headers, media_type="text/html")
            return JSONResponse(payload, status_code=status, headers=headers)
        return JSONResponse(self._default(request.method, path, body))

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
