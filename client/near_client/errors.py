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
    │   │   └── PoolNotFoundError    404       no pool of that name
    │   ├── SlowRequestError         408       the request did not arrive in time
    │   ├── ConflictError            409
    │   │   ├── PoolConflictError    409       the pool name holds other content
    │   │   └── RunPoolMismatchError 409       the run belongs to another pool
    │   ├── PayloadTooLargeError     413       over the service's limits
    │   ├── RateLimitedError         429       queue full; ``retry_after`` seconds
    │   └── ServerError              5xx
    │       ├── ServiceUnavailableError  502, 503, 504  loading, or Redis needed and down
    │       │   ├── PoolNotReadyError    503  the pool is still embedding
    │       │   └── StatsPendingError    503  the pool's density statistics are computing
    │       ├── InsufficientMemoryError  507  the pool does not fit the service's memory
    │       └── InsufficientStorageError 507  the service's disk is full
    ├── PoolFailedError                  a pool the client waited for failed on the service
    └── PoolMismatchError                the service's pool is not the training dataset

``ERROR_CLASSES`` maps every ``near_schema.ErrorCode`` to its class (one table; the status decides
for codes it does not know, e.g. from a proxy).

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
    "ERROR_CLASSES",
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "ConnectError",
    "InsufficientMemoryError",
    "InsufficientStorageError",
    "InvalidResponseError",
    "NearClientError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PoolConflictError",
    "PoolFailedError",
    "PoolMismatchError",
    "PoolNotFoundError",
    "PoolNotReadyError",
    "RateLimitedError",
    "RequestTimeoutError",
    "RunPoolMismatchError",
    "ServerError",
    "ServiceUnavailableError",
    "SlowRequestError",
    "StatsPendingError",
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


class PoolNotFoundError(NotFoundError):
    """404 ``pool_not_found``: no pool of that name on the service."""


class SlowRequestError(APIError):
    """408: the request (headers or body) did not reach the service in time."""


class PoolConflictError(ConflictError):
    """409 ``pool_conflict``: the pool name holds other content (``replace=True`` replaces it)."""


class RunPoolMismatchError(ConflictError):
    """409 ``run_pool_mismatch``: the run_id belongs to another pool, or to this pool's old content."""


class PoolNotReadyError(ServiceUnavailableError):
    """503 ``pool_not_ready``: the pool is queued or embedding; ``retry_after`` says when to ask again."""


class StatsPendingError(ServiceUnavailableError):
    """503 ``stats_pending``: density/importance wait for the pool's statistics (round_robin works now)."""


class InsufficientMemoryError(ServerError):
    """507 ``insufficient_memory``: the pool's memory plan does not fit the service (the message says how much)."""


class InsufficientStorageError(ServerError):
    """507 ``insufficient_storage``: the service's disk is full; the pool was not registered."""


class PoolFailedError(NearClientError):
    """A pool the client waited for ended in state ``failed`` (the message is the service's reason)."""


class PoolMismatchError(NearClientError):
    """The service's candidate pool is not the training dataset (size or fingerprint differ)."""

    def __init__(self, message: str, *, expected: object = None, actual: object = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    405: BadRequestError,
    408: SlowRequestError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: BadRequestError,
    422: BadRequestError,
    429: RateLimitedError,
    502: ServiceUnavailableError,
    503: ServiceUnavailableError,
    504: ServiceUnavailableError,
    507: ServerError,  # insufficient_memory or insufficient_storage: the code decides
}

#: The one table: every error code the service sends (``near_schema.ErrorCode``) -> its class.
ERROR_CLASSES: dict[str, type[APIError]] = {
    "invalid_config": BadRequestError,
    "invalid_input": BadRequestError,
    "invalid_record": BadRequestError,
    "invalid_max_k": BadRequestError,
    "budget_too_large": BadRequestError,
    "invalid_pool_path": BadRequestError,
    "bad_request": BadRequestError,
    "method_not_allowed": BadRequestError,
    "not_acceptable": BadRequestError,
    "unsupported_media_type": BadRequestError,
    "unauthorized": AuthenticationError,
    "forbidden": AuthenticationError,
    "not_found": NotFoundError,
    "pool_not_found": PoolNotFoundError,
    "request_timeout": SlowRequestError,
    "conflict": ConflictError,
    "missing_rounds": ConflictError,
    "ledger_damaged": ConflictError,
    "pool_conflict": PoolConflictError,
    "run_pool_mismatch": RunPoolMismatchError,
    "too_large": PayloadTooLargeError,
    "overloaded": RateLimitedError,
    "unavailable": ServiceUnavailableError,
    "pool_not_ready": PoolNotReadyError,
    "stats_pending": StatsPendingError,
    "insufficient_memory": InsufficientMemoryError,
    "insufficient_storage": InsufficientStorageError,
    "internal": ServerError,
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
    cls = ERROR_CLASSES.get(code) or _BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)
    if not issubclass(cls, _BY_STATUS.get(status, APIError)) and status in _BY_STATUS:
        cls = _BY_STATUS[status]  # a code sent with an unexpected status: the status decides
    raise cls(status, code, message, retry_after=parse_retry_after(response.headers.get("Retry-After")))
