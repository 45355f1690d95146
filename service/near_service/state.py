"""The service's heavy resources, built once in the app's lifespan and handed to routes.

:class:`ServiceState` holds the settings, the embedder, the cache chain (Redis, then disk), the
ledger, the micro-batcher, the worker threads and, once loaded, the :class:`Pool`. The pool is
embedded in a background thread so ``/health`` and ``/ready`` answer while it loads.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .batcher import QueryBatcher
from .cache import DiskCache, EmbeddingStore, RedisCache
from .embedder import Embedder, EmbedStats
from .errors import ConfigError, LimitError, OverloadedError, UnavailableError
from .ledger import Ledger, ledger_scope
from .metrics import CountingStore, Metrics
from .pool import Pool
from .records import fingerprint, load_texts
from .settings import Settings

log = logging.getLogger(__name__)

RedisState = Literal["ok", "degraded", "disabled"]


def check_settings(settings: Settings) -> None:
    """What serving needs beyond Settings' own validation; runs before any model loads."""
    if not settings.candidates:
        raise ConfigError("no candidate pool: set NEAR_CANDIDATES (a JSON list of files) or --candidates")
    missing = [str(p) for p in settings.candidates if not p.exists()]
    if missing:
        raise ConfigError(f"candidate file(s) not found: {', '.join(missing)}")


@dataclass
class Loading:
    status: Literal["loading", "ready", "failed"] = "loading"
    done: int = 0
    total: int = 0
    message: str | None = None


@dataclass
class ServiceState:
    settings: Settings
    embedder: Embedder
    texts: list[str]
    fingerprint: str
    metrics: Metrics
    stores: list[EmbeddingStore]
    redis: RedisCache | None
    ledger: Ledger | None
    model_executor: ThreadPoolExecutor
    search_executor: ThreadPoolExecutor
    loading: Loading = field(default_factory=Loading)
    pool: Pool | None = None
    in_flight: int = 0
    closers: list[object] = field(default_factory=list)
    batcher: QueryBatcher = field(init=False)

    def __post_init__(self) -> None:
        self.batcher = QueryBatcher(self.embed_queries, self.model_executor,
                                    max_texts=self.settings.max_queries, on_depth=self.metrics.embed_queue.set)
        self.update_redis_gauge()

    # --- building ------------------------------------------------------------------------------
    @classmethod
    def build(cls, settings: Settings, metrics: Metrics | None = None) -> ServiceState:
        """Read the pool's texts and wire everything up; the model is loaded later, by :meth:`load`."""
        check_settings(settings)
        texts = load_texts(settings.candidates, settings.template, "candidate")
        embedder = Embedder.from_settings(settings)
        metrics = metrics if metrics is not None else Metrics()
        metrics.pool_size.set(len(texts))
        stores: list[EmbeddingStore] = []
        closers: list[object] = []
        redis_cache = ledger = None
        pool_fp = fingerprint(texts)
        if settings.redis_url:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            # no client-side retries: RedisCache has its own backoff, and a down Redis must fail fast
            client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=0.5, socket_timeout=5,
                                          retry=Retry(NoBackoff(), 0), retry_on_timeout=False)
            redis_cache = RedisCache(client)
            redis_cache.check()
            stores.append(CountingStore(redis_cache, "redis", metrics))
            scope = ledger_scope(pool_fp, embedder.namespace, embedder.query_prompt, settings.index,
                                 settings.ivf_nprobe, settings.hnsw_m)
            ledger = Ledger(client, scope, on_error=redis_cache.mark_down)
            closers.append(client)
        if settings.cache_dir:
            disk = DiskCache(settings.cache_dir)
            stores.append(CountingStore(disk, "disk", metrics))
            closers.append(disk)
        model_executor = ThreadPoolExecutor(1, thread_name_prefix="near-model")
        search_executor = ThreadPoolExecutor(2, thread_name_prefix="near-search")
        state = cls(settings=settings, embedder=embedder, texts=texts, fingerprint=pool_fp, metrics=metrics,
                    stores=stores, redis=redis_cache, ledger=ledger, model_executor=model_executor,
                    search_executor=search_executor, loading=Loading(total=len(texts)), closers=closers)
        return state

    def load(self) -> None:
        """Load the model, embed the pool through the caches, build the index (a worker thread)."""
        t0 = time.perf_counter()
        try:
            self.embedder.load()
            stats = EmbedStats()

            def progress(done: int, total: int) -> None:
                self.loading.done = len(self.texts) - total + done

            pool = Pool.build(self.texts, self.embedder, self.stores, index=self.settings.index,
                              ivf_nprobe=self.settings.ivf_nprobe, hnsw_m=self.settings.hnsw_m, stats=stats,
                              on_progress=progress)
            self.metrics.embedded.labels(kind="document").inc(stats.embedded)
        except Exception as exc:
            log.exception("loading the pool failed")
            self.loading.status, self.loading.message = "failed", f"{type(exc).__name__}: {exc}"
            return
        self.pool = pool
        self.loading.done = len(self.texts)
        self.loading.status = "ready"
        self.metrics.ready.set(1)
        log.info("ready: %d candidates (%d embedded, %d from cache) in %.1fs", pool.size, stats.embedded,
                 stats.cache_hits, time.perf_counter() - t0)

    def close(self) -> None:
        self.model_executor.shutdown(wait=False, cancel_futures=True)
        self.search_executor.shutdown(wait=False, cancel_futures=True)
        for c in self.closers:
            with contextlib.suppress(Exception):
                c.close()  # type: ignore[attr-defined]

    # --- used by routes ------------------------------------------------------------------------
    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """One embedding call for a micro-batch (runs in the model thread)."""
        stats = EmbedStats()
        vectors = self.embedder.embed(texts, "query", self.stores, stats=stats)
        self.metrics.embedded.labels(kind="query").inc(stats.embedded)
        self.metrics.embed_batches.inc()
        return vectors

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        stats = EmbedStats()
        vectors = self.embedder.embed(texts, "document", self.stores, stats=stats)
        self.metrics.embedded.labels(kind="document").inc(stats.embedded)
        return vectors

    def require_pool(self) -> Pool:
        if self.pool is None:
            if self.loading.status == "failed":
                raise UnavailableError(f"the pool failed to load: {self.loading.message}")
            raise UnavailableError(f"not ready: embedding the pool ({self.loading.done}/{self.loading.total})")
        return self.pool

    def require_ledger(self) -> Ledger:
        if self.ledger is None:
            raise UnavailableError("run_id needs the run ledger, which needs Redis: set NEAR_REDIS_URL "
                                   "(or leave out run_id and round)")
        return self.ledger

    @property
    def redis_state(self) -> RedisState:
        if self.redis is None:
            return "disabled"
        return "ok" if self.redis.up else "degraded"

    def update_redis_gauge(self) -> None:
        self.metrics.redis_up.set({"disabled": -1, "ok": 1, "degraded": 0}[self.redis_state])

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Count a request against ``max_queue``; 429 with Retry-After when the queue is full."""
        if self.in_flight >= self.settings.max_queue:
            self.metrics.rejected.inc()
            raise OverloadedError(f"too many requests in flight ({self.in_flight}, limit "
                                  f"{self.settings.max_queue}); retry shortly", retry_after=1.0)
        self.in_flight += 1
        self.metrics.queue_depth.set(self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1
            self.metrics.queue_depth.set(self.in_flight)

    def check_texts(self, texts: list[str]) -> None:
        """413 for more texts than ``max_queries`` or a text over ``max_query_chars``."""
        if len(texts) > self.settings.max_queries:
            raise LimitError(f"{len(texts)} texts in one request; the limit is {self.settings.max_queries} "
                             "(NEAR_MAX_QUERIES)")
        for i, t in enumerate(texts):
            if len(t) > self.settings.max_query_chars:
                raise LimitError(f"text {i} has {len(t)} characters; the limit is "
                                 f"{self.settings.max_query_chars} (NEAR_MAX_QUERY_CHARS)")
