"""The HTTP server settings of ``near-select serve``: uvicorn on h11, with a deadline for request headers.

Two holes of uvicorn's defaults, both found by sending bytes to a running service:

- **Header size.** With ``http="auto"`` uvicorn parses with ``httptools`` wherever it is installed
  (vLLM and Ray install it), and ``httptools`` has no header size limit: one connection that sent
  190 MB of header lines grew the process by 194 MB, and a handful would exhaust its memory.
  ``NEAR_MAX_HEADER_BYTES`` is uvicorn's ``h11_max_incomplete_event_size``, which only h11 applies, so
  the service always runs h11 (there the same connection was cut at 16 KiB).
- **Header time.** uvicorn times out idle keep-alive connections but never a request whose headers
  have not arrived: a connection that sends nothing, or one header line a minute, holds its slot
  forever, and ``NEAR_MAX_CONNECTIONS`` of them answer every other client 503 (slowloris).
  :class:`NearH11Protocol` gives each request ``NEAR_HEADER_TIMEOUT`` seconds, from the connection
  (or the previous response) to the end of its headers, then answers 408 and closes the connection
  (or just closes it where not a byte of a request came: a client that sends its next request on a
  kept-alive connection just then must not read a 408 as its answer).

The request body has its own deadline (``NEAR_BODY_TIMEOUT``,
:class:`~near_service.server.middleware.BodyLimitMiddleware`).

>>> uvicorn.Server(uvicorn_config(create_app(settings), settings)).run()   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from near_service.core.settings import Settings
from near_service.server.api.errors import error_body

__all__ = ["NearH11Protocol", "uvicorn_config"]

log = logging.getLogger(__name__)


class NearH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers (``header_timeout`` seconds)."""

    header_timeout: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        # a kept-alive connection: the next request's headers are due. Armed first: uvicorn may start
        # a pipelined request in the call below, and that one's headers have arrived
        self._arm_header_deadline()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._header_timer is not None:
            self._header_timer.cancel()

    def _arm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        # the deadline holds while no new request has begun: uvicorn makes a new cycle for each one
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_deadline, self.cycle)

    def _header_deadline(self, cycle: Any) -> None:
        if self.cycle is not cycle or self.transport.is_closing():
            return  # a request's headers arrived in time, or the connection is gone
        who = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        if not self.conn.trailing_data[0]:  # not a byte of a request: nothing to answer, like an idle keep-alive
            log.info("%s sent nothing in %gs: connection closed", who, self.header_timeout)
            self.transport.close()
            return
        log.warning("%s sent no complete request headers in %gs: 408, connection closed", who, self.header_timeout)
        body = _timeout_body(self.header_timeout)
        head = (
            "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode()
        self.transport.write(head + body)
        self.transport.close()


def _timeout_body(seconds: float) -> bytes:
    message = f"request headers did not arrive within {seconds:g}s (NEAR_HEADER_TIMEOUT)"
    return json.dumps(error_body("request_timeout", message), separators=(",", ":")).encode()


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    """The uvicorn configuration ``serve`` runs ``app`` with: every connection, header and request bounded."""
    protocol = type("NearH11Protocol", (NearH11Protocol,), {"header_timeout": settings.header_timeout})
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        http=protocol,
        proxy_headers=False,
        server_header=False,
        # bounded: idle connections, open connections and requests, headers, and the wait at SIGTERM
        timeout_keep_alive=settings.keep_alive_timeout,
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=settings.graceful_shutdown_timeout,
        h11_max_incomplete_event_size=settings.max_header_bytes,
    )
