"""Pure ASGI middleware: the bearer API key and the request body limit.

Both answer before the app sees the request, with the service's one JSON error body, so they hold
for every path (unknown ones included). The API key is compared in constant time and never logged.
Auth runs first and never reads the body (a refused request is answered and its connection
closed), so an unauthenticated client cannot make the service read, let alone buffer, a big body.
"""

from __future__ import annotations

import asyncio
import secrets

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from near_service.core.errors import AuthError, BodyTimeoutError, LimitError, NearError
from near_service.server.api.errors import error_response

OPEN_PATHS = frozenset({"/health"})


async def send_error(send: Send, exc: NearError, headers: dict[str, str] | None = None) -> None:
    """Send ``{"error": {"code", "message"}}`` with the error's status (used outside FastAPI's handlers)."""
    response = error_response(exc, headers)
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


class AuthMiddleware:
    """``Authorization: Bearer <key>`` on every path but ``/health``; 401 otherwise."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        auth = Headers(scope=scope).get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), self._key):
            why = "missing API key" if not auth else "wrong API key"
            # the body is never read: close the connection rather than drain it
            headers = {"WWW-Authenticate": "Bearer"}
            if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
                headers["Connection"] = "close"
            await send_error(send, AuthError(f"{why}: send 'Authorization: Bearer <NEAR_API_KEY>'"), headers)
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``: by Content-Length up front, else while it streams in;
    408 for a body that takes longer than ``timeout_s`` to arrive.

    The body is read here and replayed to the app, so a chunked upload is refused before any of it
    reaches request parsing.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 30.0) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_big = LimitError(f"request body over {self.max_bytes} bytes (NEAR_MAX_BODY_BYTES)")
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await send_error(send, too_big, {"Connection": "close"})
            return
        try:
            body = await asyncio.wait_for(self._read(receive), self.timeout_s)
        except asyncio.TimeoutError:
            slow = BodyTimeoutError(f"request body not received within {self.timeout_s:g}s (NEAR_BODY_TIMEOUT)")
            await send_error(send, slow, {"Connection": "close"})
            return
        if body is None:  # client went away
            return
        if len(body) > self.max_bytes:
            await send_error(send, too_big, {"Connection": "close"})
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body; None if the client left; stops at the first chunk past ``max_bytes``."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            if size > self.max_bytes or not message.get("more_body", False):
                return b"".join(chunks)  # past the limit by at most one chunk: the caller refuses it
