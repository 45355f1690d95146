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


def is_pool_admin(scope: Scope) -> bool:
    """PUT and DELETE on ``/pools/...``: what the admin key guards."""
    return scope["method"] in ("PUT", "DELETE") and str(scope["path"]).startswith("/pools/")


class AuthMiddleware:
    """``Authorization: Bearer <key>`` on every path but ``/health``; 401 otherwise.

    With an admin key, PUT and DELETE on ``/pools`` need it (and only it); other routes need the
    API key (none: open). Without an admin key the API key guards everything, pools included."""

    def __init__(self, app: ASGIApp, api_key: str | None, admin_key: str | None = None) -> None:
        self.app = app
        self._key = api_key.encode() if api_key else None
        self._admin = admin_key.encode() if admin_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        admin = self._admin is not None and is_pool_admin(scope)
        key, name = (self._admin, "NEAR_ADMIN_KEY") if admin else (self._key, "NEAR_API_KEY")
        if key is None:
            await self.app(scope, receive, send)
            return
        auth = Headers(scope=scope).get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), key):
            why = ("missing" if not auth else "wrong") + (" admin key" if admin else " API key")
            # the body is never read: close the connection rather than drain it
            headers = {"WWW-Authenticate": "Bearer"}
            if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
                headers["Connection"] = "close"
            await send_error(send, AuthError(f"{why}: send 'Authorization: Bearer <{name}>'"), headers)
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``: by Content-Length up front, else while it streams in;
    408 for a body that takes longer than ``timeout_s`` to arrive.

    The body is read here and replayed to the app, so a chunked upload is refused before any of it
    reaches request parsing.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, timeout_s: float = 30.0, pool_max_bytes: int | None = None
    ) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s
        self.pool_max_bytes = pool_max_bytes if pool_max_bytes is not None else max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "PUT" and str(scope["path"]).startswith("/pools/"):
            await self._streamed(scope, receive, send)
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

    async def _streamed(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A pool body (up to ``pool_max_bytes``) is not buffered here: the route reads it as it
        streams in (NDJSON line by line); each chunk must arrive within ``timeout_s``."""
        limit = self.pool_max_bytes
        too_big = LimitError(f"pool body over {limit} bytes (NEAR_MAX_POOL_BODY_BYTES); send files or split it")
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await send_error(send, too_big, {"Connection": "close"})
            return
        size = 0

        async def limited() -> Message:
            nonlocal size
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except asyncio.TimeoutError:
                raise BodyTimeoutError(
                    f"no part of the pool body arrived for {self.timeout_s:g}s (NEAR_BODY_TIMEOUT)"
                ) from None
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    raise too_big
            return message

        await self.app(scope, limited, send)

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
