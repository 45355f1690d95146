"""Redis for the service: one connection setup for the embedding cache and the run ledgers.

The server asks for a cache (pool vectors, kept), a query cache (with a TTL) and a ledger per pool;
how the clients are built (timeouts, no client-side retries, one shared breaker) lives here.

>>> redis_stores = open_redis(settings)                        # doctest: +SKIP
>>> ledger = redis_stores.ledger(scope)                        # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from near_service.core.settings import Settings
from near_service.stores.breaker import Breaker
from near_service.stores.cache import RedisCache
from near_service.stores.ledger import Ledger

__all__ = ["RedisStores", "open_redis"]


@dataclass
class RedisStores:
    """The Redis-backed stores of one service: they share one breaker (they learn of failures together)."""

    cache: RedisCache
    query_cache: RedisCache
    ledger_client: Any
    breaker: Breaker
    closers: list[Any] = field(default_factory=list)

    def ledger(self, scope: str) -> Ledger:
        """The run ledger of one scope (a pool's fingerprint, the model and the index settings)."""
        return Ledger(self.ledger_client, scope, self.breaker)

    def close(self) -> None:
        for c in self.closers:
            with contextlib.suppress(Exception):
                c.close()


def open_redis(settings: Settings) -> RedisStores | None:
    """The stores on ``settings.redis_url`` (None without one). Never waits for a down Redis: the
    first check only opens the breaker, and the service answers without Redis until it is back."""
    if not settings.redis_url:
        return None
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    url = settings.redis_url

    def client(timeout: float) -> redis.Redis:
        # no client-side retries: the Breaker has its own backoff, and a down or hung Redis must fail
        # fast (cache calls: NEAR_REDIS_TIMEOUT; ledger calls: NEAR_LEDGER_TIMEOUT)
        return redis.Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
        )

    cache_client, ledger_client = client(settings.redis_timeout), client(settings.ledger_timeout)
    breaker = Breaker()
    cache = RedisCache(cache_client, breaker)
    cache.check()
    return RedisStores(
        cache=cache,
        query_cache=cache.with_ttl(settings.redis_query_ttl),
        ledger_client=ledger_client,
        breaker=breaker,
        closers=[cache_client, ledger_client],
    )
