"""The service's resources, built once in the app's lifespan and handed to routes.

:class:`ServiceState` holds the settings, the :class:`~near_service.engine.engine.Engine` (model
thread, pools, memory plan), the metrics, the query micro-batcher, the CPU executor for search and
encoding, and the admission counters. Routes ask it for a pool's :class:`SelectHandler`; the engine
does the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from near_schema import LoadStatus, RedisStatus
from near_service.core.embedder import Embedder
from near_service.core.errors import ConfigError, OverloadedError, UnavailableError
from near_service.core.settings import Settings
from near_service.engine.engine import Engine, EngineHooks
from near_service.engine.pools import PoolEntry
from near_service.server.batcher import QueryBatcher
from near_service.server.metrics import CountingStore, Metrics
from near_service.server.select_handler import SelectHandler
from near_service.stores.cache import DiskCache, EmbeddingStore
from near_service.stores.ledger import Ledger
from near_service.stores.redis_stores import RedisStores, open_redis

log = logging.getLogger(__name__)
T = TypeVar("T")


def check_settings(settings: Settings) -> None:
    """What serving needs beyond Settings' own validation; runs before any model loads."""
    missing = [str(p) for p in settings.candidates if not p.exists()]
    if missing:
        raise ConfigError(f"candidate file(s) not found: {', '.join(missing)}")
    if settings.pool_dir is not None and not settings.pool_dir.is_dir():
        raise ConfigError(f"NEAR_POOL_DIR {settings.pool_dir} is not a folder")


@dataclass
class ServiceState:
    settings: Settings
    engine: Engine
    metrics: Metrics
    redis: RedisStores | None
    cpu_executor: ThreadPoolExecutor  # search, selection and JSON encoding
    closers: list[object] = field(default_factory=list)
    ledger_in_flight: int = 0
    in_flight: int = 0
    batcher: QueryBatcher = field(init=False)
    _handlers: dict[str, tuple[object, SelectHandler]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.batcher = QueryBatcher(
            self.embed_queries,
            self.engine.worker,
            max_texts=self.settings.embed_chunk_texts,
            on_depth=self.metrics.embed_queue.set,
        )
        self.update_redis_gauge()

    @classmethod
    def build(
        cls, settings: Settings, metrics: Metrics | None = None, embedder: Embedder | None = None
    ) -> ServiceState:
        """Wire everything up; the model loads and the pools open in the engine's threads (``start``).

        ``embedder`` replaces the one the settings name (the in-process tests pass a fake one)."""
        embedder = embedder if embedder is not None else Embedder.from_settings(settings)
        metrics = metrics if metrics is not None else Metrics()
        stores: list[EmbeddingStore] = []
        query_stores: list[EmbeddingStore] = []
        closers: list[object] = []
        redis = open_redis(settings)
        if redis is not None:
            stores.append(CountingStore(redis.cache, "redis", metrics))
            query_stores.append(CountingStore(redis.query_cache, "redis", metrics))
            closers.append(redis)
        if settings.cache_dir:  # pool vectors only: client texts would grow the file without bound
            disk = DiskCache(settings.cache_dir)
            stores.append(CountingStore(disk, "disk", metrics))
            closers.append(disk)

        def on_default(ready: bool, rows: int) -> None:
            metrics.ready.set(1 if ready else 0)
            metrics.pool_size.set(rows)

        hooks = EngineHooks(
            on_embedded=lambda kind, n: metrics.embedded.labels(kind=kind).inc(n), on_default=on_default
        )
        engine = Engine(settings, embedder, stores, query_stores, redis, hooks)
        cpu_executor = ThreadPoolExecutor(2, thread_name_prefix="near-cpu")
        return cls(settings, engine, metrics, redis, cpu_executor, closers)

    def start(self) -> None:
        self.engine.start()

    def close(self) -> None:
        self.engine.close()
        self.cpu_executor.shutdown(wait=False, cancel_futures=True)
        for c in self.closers:
            with contextlib.suppress(Exception):
                c.close()  # type: ignore[attr-defined]

    # --- used by routes ------------------------------------------------------------------------
    async def engine_call(self, fn: Callable[..., T], *args: Any) -> T:
        """A blocking engine call (registry writes, reloading an evicted pool) off the event loop."""
        return await asyncio.to_thread(fn, *args)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """One embedding call for a micro-batch (runs on the model thread)."""
        self.metrics.embed_batches.inc()
        return self.engine.embed_queries(texts)

    def handler(self, entry: PoolEntry) -> SelectHandler:
        """The SelectHandler of a searchable pool (one per loaded Pool object)."""
        pool = entry.pool
        if pool is None:  # deleted, replaced or evicted between Engine.searchable and here
            self.engine.get(entry.name)  # deleted: 404 pool_not_found, as for any later request
            raise UnavailableError(f"pool {entry.name!r} was replaced or evicted meanwhile; retry", retry_after=1.0)
        cached = self._handlers.get(entry.name)
        if cached is not None and cached[0] is pool:
            return cached[1]
        h = SelectHandler(
            entry.name,
            pool,
            self.settings,
            self.batcher,
            self.cpu_executor,
            entry.ledger,
            self.engine.bindings,
            entry.ledger_scope,
            self.engine.embedder.spec.name,
            ledger_gate=self.ledger_wait,
        )
        self._handlers[entry.name] = (pool, h)
        return h

    def forget_handler(self, name: str) -> None:
        self._handlers.pop(name, None)

    def require_ledger(self, ledger: Ledger | None) -> Ledger:
        if ledger is None:
            raise UnavailableError(
                "run_id needs the run ledger, which needs Redis: set NEAR_REDIS_URL (or leave out run_id and round)"
            )
        return ledger

    def ready_status(self) -> tuple[LoadStatus, str | None, int, int]:
        """(status, message, done, total) of what /ready reports: the default pool, or the model
        when the service has no default pool."""
        e = self.engine
        if e.model_state == "failed":
            return "failed", e.model_message, 0, 0
        entry = e.pools.get(e.default_name or "")
        if entry is None:
            return ("ready" if e.model_state == "ready" else "loading"), None, 0, 0
        p = entry.progress()
        if entry.state == "ready":
            return "ready", None, p.total, p.total
        if entry.state == "failed":
            return "failed", entry.message, p.done, p.total
        if entry.state == "stats":
            total = entry.stats_total or entry.rows
            return "loading", f"computing the density statistics ({entry.stats_done}/{total})", p.done, p.total
        return "loading", None, p.done, p.total

    @property
    def redis_state(self) -> RedisStatus:
        if self.redis is None:
            return "disabled"
        return "ok" if self.redis.cache.up else "degraded"

    def update_redis_gauge(self) -> None:
        self.metrics.redis_up.set({"disabled": -1, "ok": 1, "degraded": 0}[self.redis_state])

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Count a request against ``max_queue``; 429 with Retry-After when the queue is full."""
        if self.in_flight >= self.settings.max_queue:
            self.metrics.rejected.inc()
            raise OverloadedError(
                f"too many requests in flight ({self.in_flight}, limit {self.settings.max_queue}); retry shortly",
                retry_after=1.0,
            )
        self.in_flight += 1
        self.metrics.queue_depth.set(self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1
            self.metrics.queue_depth.set(self.in_flight)

    @contextlib.contextmanager
    def ledger_wait(self) -> Iterator[None]:
        """Around a run-ledger call of an admitted request: its ``max_queue`` slot is lent back while
        it waits on Redis, so ledger waits (up to NEAR_LEDGER_TIMEOUT on a hung Redis) never turn
        plain requests away; ledger waits have their own limit of ``max_queue``."""
        if self.ledger_in_flight >= self.settings.max_queue:
            self.metrics.rejected.inc()
            raise OverloadedError(
                f"too many run-ledger calls waiting on Redis ({self.ledger_in_flight}); retry shortly", retry_after=1.0
            )
        self.ledger_in_flight += 1
        self.in_flight -= 1
        self.metrics.queue_depth.set(self.in_flight)
        try:
            yield
        finally:
            self.ledger_in_flight -= 1
            self.in_flight += 1
            self.metrics.queue_depth.set(self.in_flight)
