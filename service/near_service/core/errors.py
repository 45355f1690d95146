"""Errors raised by the NEAR Select core and service.

Every error carries a stable ``code`` (sent on the wire as ``{"error": {"code", "message"}}``)
and the HTTP status the service answers with. The CLI prints ``error: <message>`` and exits 2.

    NearError
    ├── ConfigError            400  bad settings; raised before any model loads
    ├── InputError             422  a request or input file the core cannot use
    │   ├── RecordError        422  a file, row or field that cannot be read or rendered
    │   ├── MaxKError          422  max_k < 1, or larger than the pool
    │   └── BudgetError        422  fewer unique candidates than the budget asks for
    ├── AuthError              401  missing or wrong API key
    ├── NotFoundError          404  unknown run id
    ├── BodyTimeoutError       408  the request body did not arrive within NEAR_BODY_TIMEOUT
    ├── ConflictError          409  a stored (run_id, round) asked again with different parameters
    │   ├── MissingRoundsError 409  exclude_previous, but earlier rounds of the run are not in the ledger
    │   └── LedgerDamagedError 409  a ledger entry that cannot be read back
    ├── LimitError             413  a request over the configured limits
    ├── OverloadedError        429  the work queue is full (comes with Retry-After)
    └── UnavailableError       503  not ready yet, or Redis needed and down
"""

from __future__ import annotations


class NearError(Exception):
    """Base of every NEAR Select error."""

    code = "near_error"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(NearError):
    code = "invalid_config"
    status = 400


class InputError(NearError):
    code = "invalid_input"
    status = 422


class RecordError(InputError):
    code = "invalid_record"


class MaxKError(InputError):
    code = "invalid_max_k"


class BudgetError(InputError):
    code = "budget_too_large"


class AuthError(NearError):
    code = "unauthorized"
    status = 401


class NotFoundError(NearError):
    code = "not_found"
    status = 404


class BodyTimeoutError(NearError):
    """408: the request body did not arrive within ``body_timeout`` seconds (a trickling client)."""

    code = "request_timeout"
    status = 408


class ConflictError(NearError):
    code = "conflict"
    status = 409


class MissingRoundsError(ConflictError):
    code = "missing_rounds"


class LedgerDamagedError(ConflictError):
    code = "ledger_damaged"


class LimitError(NearError):
    code = "too_large"
    status = 413


class OverloadedError(NearError):
    code = "overloaded"
    status = 429

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnavailableError(NearError):
    code = "unavailable"
    status = 503
