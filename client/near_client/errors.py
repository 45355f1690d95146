"""Errors raised by the NEAR Select client, and the one function that maps HTTP answers to them.

Every failure a client call can end in is one of these (plus pydantic's ``ValidationError`` for a
request that is invalid before it is sent)::

    NearClientError
    ├── TransportError                   no usable answer, after the retries
    │   ├── ConnectError                 nothing listens, DNS, connection refused or reset
    │   └── RequestTimeoutError          connect, read, write or pool timeout
    ├── InvalidResponseError             a 2xx answer that is not what the schema says
    ├── APIError                         the service answered with an error status
    │   ├── BadRequestError          400, 422  a request the service cannot use
    │   ├── AuthenticationError      401       missing or wrong API key
    │   ├── NotFoundError            404       unknown run id (or route)
    │   ├── ConflictError            409
    │   ├── PayloadTooLargeError     413       over the service's limits
    │   ├── RateLimitedError         429       queue full; ``retry_after`` seconds
    │   └── ServerError              5xx
    │       └── ServiceUnavailableError  502, 503, 504  loading, or Redis needed and down
    └── PoolMismatchError                the service's pool is not the training dataset

``APIError`` carries the HTTP ``status_code`` and the service's stable ``code`` and ``message`` from
its ``{"error": {"code", "message"}}`` body.

>>> import httpx
>>> r = httpx.Response(429, headers={"Retry-After": "2"},
...                    json={"error": {"code": "overloaded", "message": "queue full"}})
>>> try:
...     raise_for_status(r)
... except RateLimitedError as exc:
...     print(exc.status_code, exc.code, exc.retry_after)
429 overloaded 2.0
"""

from __future__ import annotations

import email.utils
import time

import httpx

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "ConnectError",
    "InvalidResponseError",
    "NearClientError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PoolMismatchError",
    "RateLimitedError",
    "RequestTimeoutError",
    "ServerError",
    "ServiceUnavailableError",
    "TransportError",
    "raise_for_status",
]


class NearClientError(Exception):
    """Base of every error the NEAR Select client raises."""


class TransportError(NearClientError):
    """The service gave no usable answer (after the client's retries)."""


class ConnectError(TransportError):
    """The connection could not be made or was dropped (refused, reset, DNS)."""


class RequestTimeoutError(TransportError):
    """A connect, read, write or pool timeout."""


class InvalidResponseError(NearClientError):
    """A success status whose body does not parse as the documented schema."""


class APIError(NearClientError):
    """The service answered with an error status."""

    def __init__(self, status_code: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.retry_after = retry_after


class BadRequestError(APIError):
    """400 or 422: the request is invalid for this service (e.g. ``max_k`` over the pool size)."""


class AuthenticationError(APIError):
    """401: missing or wrong API key."""


class NotFoundError(APIError):
    """404: unknown run id or route."""


class ConflictError(APIError):
    """409: the request conflicts with stored state."""


class PayloadTooLargeError(APIError):
    """413: the request is over the service's limits (queries, characters, body size)."""


class RateLimitedError(APIError):
    """429: the service's queue is full; ``retry_after`` says how long to wait (seconds)."""


class ServerError(APIError):
    """5xx: the service failed."""


class ServiceUnavailableError(ServerError):
    """502/503/504: not ready yet (still embedding the pool), or Redis needed and down."""


class PoolMismatchError(NearClientError):
    """The service's candidate pool is not the training dataset (size or fingerprint differ)."""

    def __init__(self, message: str, *, expected: object = None, actual: object = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: BadRequestError,
    429: RateLimitedError,
    502: ServiceUnavailableError,
    503: ServiceUnavailableError,
    504: ServiceUnavailableError,
}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def raise_for_status(response: httpx.Response) -> None:
    """Raise the error of the tree above that matches ``response``; return if it is a success.

    The class comes from the status code; ``code`` and ``message`` from the service's JSON error
    body when there is one (a proxy's HTML page gives ``code="http_<status>"`` and the text).
    """
    status = response.status_code
    if status < 400:
        return
    code, message = f"http_{status}", ""
    try:
        body = response.json()
        detail = body.get("error") if isinstance(body, dict) else None
        if isinstance(detail, dict):
            code = str(detail.get("code") or code)
            message = str(detail.get("message") or "")
        elif isinstance(body, dict) and "detail" in body:  # a framework default, e.g. FastAPI's 404
            message = str(body["detail"])
    except ValueError:
        pass
    if not message:
        message = response.text[:500].strip() or response.reason_phrase or "error"
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)
    raise cls(status, code, message, retry_after=parse_retry_after(response.headers.get("Retry-After")))
