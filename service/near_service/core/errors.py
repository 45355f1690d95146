"""Errors raised by the NEAR Select core and service.

Every error carries a stable ``code`` (sent on the wire as ``{"error": {"code", "message"}}``)
and the HTTP status the service answers with. The CLI prints ``error: <message>`` and exits 2.

    NearError
    ├── ConfigError            400  bad settings; raised before any model loads
    ├── InputError             422  a request or input file the core cannot use
    │   ├── RecordError        422  a file, row or field that cannot be read or rendered
    │   ├── MaxKError          422  max_k < 1, or larger than the pool
    │   └── BudgetError        422  fewer unique candidates than the budget asks for
    │   └── PoolPathError      422  a pool file outside NEAR_POOL_DIR (absolute, .., a symlink out)
    ├── AuthError              401  missing or wrong API key (or admin key)
    ├── NotFoundError          404  unknown run id
    │   └── PoolNotFoundError  404  no pool of that name
    ├── BodyTimeoutError       408  the request body did not arrive within NEAR_BODY_TIMEOUT
    ├── ConflictError          409  a stored (run_id, round) asked again with different parameters
    │   ├── MissingRoundsError 409  exclude_previous, but earlier rounds of the run are not in the ledger
    │   ├── LedgerDamagedError 409  a ledger entry that cannot be read back
    │   ├── PoolConflictError  409  a pool name that holds other content (without ?replace=true)
    │   └── RunPoolMismatchError 409  a run_id bound to another pool (or to this pool's old content)
    ├── LimitError             413  a request over the configured limits
    ├── OverloadedError        429  the work queue is full (comes with Retry-After)
    ├── UnavailableError       503  not ready yet, or Redis needed and down (may come with Retry-After)
    │   ├── PoolNotReadyError  503  the pool is queued or embedding (progress in the message)
    │   └── StatsPendingError  503  density/importance while the pool's statistics compute
    ├── InsufficientMemoryError 507 a pool whose memory plan does not fit NEAR_MAX_POOL_MEMORY
    └── InsufficientStorageError 507 the disk is full (or over quota) while a pool is registered

Every ``code`` is one of ``near_schema.ErrorCode``.
"""

from __future__ import annotations

from near_schema import ErrorCode


class NearError(Exception):
    """Base of every NEAR Select error."""

    code: ErrorCode = "internal"
    status = 500
    retry_after: float | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(NearError):
    code: ErrorCode = "invalid_config"
    status = 400


class InputError(NearError):
    code: ErrorCode = "invalid_input"
    status = 422


class RecordError(InputError):
    code: ErrorCode = "invalid_record"


class MaxKError(InputError):
    code: ErrorCode = "invalid_max_k"


class BudgetError(InputError):
    code: ErrorCode = "budget_too_large"


class PoolPathError(InputError):
    code: ErrorCode = "invalid_pool_path"


class AuthError(NearError):
    code: ErrorCode = "unauthorized"
    status = 401


class NotFoundError(NearError):
    code: ErrorCode = "not_found"
    status = 404


class PoolNotFoundError(NotFoundError):
    code: ErrorCode = "pool_not_found"


class BodyTimeoutError(NearError):
    """408: the request body did not arrive within ``body_timeout`` seconds (a trickling client)."""

    code: ErrorCode = "request_timeout"
    status = 408


class ConflictError(NearError):
    code: ErrorCode = "conflict"
    status = 409


class MissingRoundsError(ConflictError):
    code: ErrorCode = "missing_rounds"


class LedgerDamagedError(ConflictError):
    code: ErrorCode = "ledger_damaged"


class PoolConflictError(ConflictError):
    code: ErrorCode = "pool_conflict"


class RunPoolMismatchError(ConflictError):
    code: ErrorCode = "run_pool_mismatch"


class LimitError(NearError):
    code: ErrorCode = "too_large"
    status = 413


class OverloadedError(NearError):
    code: ErrorCode = "overloaded"
    status = 429

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnavailableError(NearError):
    code: ErrorCode = "unavailable"
    status = 503

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PoolNotReadyError(UnavailableError):
    code: ErrorCode = "pool_not_ready"


class StatsPendingError(UnavailableError):
    code: ErrorCode = "stats_pending"


class InsufficientMemoryError(NearError):
    """507: registering the pool would take the pools past NEAR_MAX_POOL_MEMORY."""

    code: ErrorCode = "insufficient_memory"
    status = 507


class InsufficientStorageError(NearError):
    """507: the disk the service keeps its pools on is full (ENOSPC) or over quota (EDQUOT)."""

    code: ErrorCode = "insufficient_storage"
    status = 507
