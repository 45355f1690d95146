"""A circuit breaker for one Redis server, shared by the embedding cache and the run ledger.

A hung Redis (accepting connections, answering nothing) costs every call its full socket timeout;
a breaker pays that once. After a failure the breaker is *open*: callers skip Redis (the cache
reads misses, the ledger answers 503 at once) for a backoff that starts at 0.5 s and doubles to 5 s.
When it runs out the breaker is *half-open*: exactly one caller probes Redis, and its outcome
closes the breaker or opens it again. The health loop's ``PING`` also reports here.

>>> b = Breaker()
>>> b.allow()
True
>>> b.failure(TimeoutError("hung")); b.allow()
False
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class Breaker:
    """Closed (``up``) / open (skip until ``retry_at``) / half-open (one probe in flight)."""

    def __init__(self, min_backoff: float = 0.5, max_backoff: float = 5.0) -> None:
        self.up = True
        self.errors = 0
        self._min_backoff, self._max_backoff = min_backoff, max_backoff
        self._backoff = min_backoff
        self._retry_at = 0.0
        self._probing = False
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """Whether to call Redis now; a True while open makes the caller the half-open probe."""
        with self._lock:
            if self.up:
                return True
            if self._probing or time.monotonic() < self._retry_at:
                return False
            self._probing = True
            return True

    def retry_in(self) -> float:
        """Seconds until the next probe (0 when closed)."""
        return 0.0 if self.up else max(0.0, self._retry_at - time.monotonic())

    def failure(self, exc: BaseException) -> None:
        with self._lock:
            if self.up:
                # redis-py quotes the failed command, binary vector blobs included: printable text only
                why = "".join(c if c.isprintable() else "?" for c in str(exc))[:300]
                log.warning("Redis unavailable (%s: %s); continuing without it", type(exc).__name__, why)
            self.up = False
            self.errors += 1
            self._probing = False
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, self._max_backoff)

    def success(self) -> None:
        with self._lock:
            if not self.up:
                log.warning("Redis is back")
            self.up = True
            self._probing = False
            self._backoff = self._min_backoff
