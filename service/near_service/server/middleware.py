"""Pure ASGI middleware: the bearer API key and the request body limit.

Both answer before the app sees the request, with the service's one JSON error body, so they hold
for every path (unknown ones included). The API key is compared in constant time and never logged.
"""

from __future__ import annotations

import secrets

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from near_service.core.errors import AuthError, LimitError, NearError
from near_service.server.api.errors import error_response

OPEN_PATHS = frozenset({"/health"})


async def send_error(send: Send, exc: NearError, headers: dict[str, str] | None = None) -> None:
    """Send ``{"error": {"code", "message"}}`` with the error's status (used outside FastAPI's handlers)."""
    response = error_response(exc, headers)
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


async def _drain(receive: Receive) -> None:
    """Read what is left of a refused request's body (cheaply), so the connection can be reused."""
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False) and message["type"] == "http.request"


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
            await _drain(receive)
            why = "missing API key" if not auth else "wrong API key"
            await send_error(
                send, AuthError(f"{why}: send 'Authorization: Bearer <NEAR_API_KEY>'"), {"WWW-Authenticate": "Bearer"}
            )
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``: by Content-Length up front, else while it streams in.

    The body is read here and replayed to the app, so a chunked upload is refused before any of it
    reaches request parsing.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_big = LimitError(f"request body over {self.max_bytes} bytes (NEAR_MAX_BODY_BYTES)")
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await send_error(send, too_big, {"Connection": "close"})
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await send_error(send, too_big, {"Connection": "close"})
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
