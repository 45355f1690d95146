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

import numpy as np

from near_schema import LoadStatus, RedisStatus
from near_service.core.embedder import Embedder, EmbeddingStopped, EmbedStats
from near_service.core.errors import ConfigError, OverloadedError, UnavailableError
from near_service.core.memory import MemoryPlan, prepare_search
from near_service.core.pool import Pool
from near_service.core.records import fingerprint, load_texts
from near_service.core.settings import DENSITY_STATS_CPU_ROWS, Settings
from near_service.server.batcher import QueryBatcher
from near_service.server.metrics import CountingStore, Metrics
from near_service.server.selector import Selector
from near_service.stores.breaker import Breaker
from near_service.stores.cache import DiskCache, EmbeddingStore, RedisCache
from near_service.stores.ledger import Ledger, ledger_scope
from near_service.stores.pool_stats import pool_density_stats
from near_service.stores.vector_files import remember_pool_vectors, stored_pool_vectors

log = logging.getLogger(__name__)


def check_settings(settings: Settings) -> None:
    """What serving needs beyond Settings' own validation; runs before any model loads."""
    if not settings.candidates:
        raise ConfigError("no candidate pool: set NEAR_CANDIDATES (a JSON list of files) or --candidates")
    missing = [str(p) for p in settings.candidates if not p.exists()]
    if missing:
        raise ConfigError(f"candidate file(s) not found: {', '.join(missing)}")


@dataclass
class Loading:
    status: LoadStatus = "loading"
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
    stores: list[EmbeddingStore]  # pool vectors: Redis (kept), then disk
    redis: RedisCache | None
    ledger: Ledger | None
    model_executor: ThreadPoolExecutor  # the one thread that runs the model
    cpu_executor: ThreadPoolExecutor  # search, selection and JSON encoding
    loading: Loading = field(default_factory=Loading)
    query_stores: list[EmbeddingStore] = field(default_factory=list)  # Redis with a TTL; never disk
    ledger_in_flight: int = 0
    selector: Selector | None = None  # set once the pool is embedded and indexed
    memory_plan: MemoryPlan | None = None  # set once the pool is on its search device
    in_flight: int = 0
    closers: list[object] = field(default_factory=list)
    batcher: QueryBatcher = field(init=False)

    def __post_init__(self) -> None:
        self.batcher = QueryBatcher(
            self.embed_queries,
            self.model_executor,
            max_texts=self.settings.embed_chunk_texts,
            on_depth=self.metrics.embed_queue.set,
        )
        self.update_redis_gauge()

    # --- building ------------------------------------------------------------------------------
    @classmethod
    def build(
        cls, settings: Settings, metrics: Metrics | None = None, embedder: Embedder | None = None
    ) -> ServiceState:
        """Read the pool's texts and wire everything up; the model is loaded later, by :meth:`load`.

        ``settings`` were checked by ``create_app``; ``embedder`` replaces the one the settings name
        (the in-process tests pass a fake one).
        """
        texts = load_texts(settings.candidates, settings.template, "candidate")
        embedder = embedder if embedder is not None else Embedder.from_settings(settings)
        metrics = metrics if metrics is not None else Metrics()
        metrics.pool_size.set(len(texts))
        stores: list[EmbeddingStore] = []
        query_stores: list[EmbeddingStore] = []
        closers: list[object] = []
        redis_cache = ledger = None
        pool_fp = fingerprint(texts)
        if settings.redis_url:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            url = settings.redis_url

            def client(timeout: float) -> redis.Redis:
                # no client-side retries: the Breaker has its own backoff, and a down or hung Redis
                # must fail fast (cache calls: NEAR_REDIS_TIMEOUT; ledger calls: NEAR_LEDGER_TIMEOUT)
                return redis.Redis.from_url(
                    url,
                    socket_connect_timeout=timeout,
                    socket_timeout=timeout,
                    retry=Retry(NoBackoff(), 0),
                    retry_on_timeout=False,
                )

            cache_client, ledger_client = client(settings.redis_timeout), client(settings.ledger_timeout)
            breaker = Breaker()  # one Redis: the cache and the ledger learn of its failures together
            redis_cache = RedisCache(cache_client, breaker)
            redis_cache.check()
            stores.append(CountingStore(redis_cache, "redis", metrics))
            query_stores.append(CountingStore(redis_cache.with_ttl(settings.redis_query_ttl), "redis", metrics))
            scope = ledger_scope(
                pool_fp, embedder.namespace, embedder.query_prompt, settings.index, settings.ivf_nprobe, settings.hnsw_m
            )
            ledger = Ledger(ledger_client, scope, breaker)
            closers += [cache_client, ledger_client]
        if settings.cache_dir:  # pool vectors only: client texts would grow the file without bound
            disk = DiskCache(settings.cache_dir)
            stores.append(CountingStore(disk, "disk", metrics))
            closers.append(disk)
        model_executor = ThreadPoolExecutor(1, thread_name_prefix="near-model")
        cpu_executor = ThreadPoolExecutor(2, thread_name_prefix="near-cpu")
        return cls(
            settings=settings,
            embedder=embedder,
            texts=texts,
            fingerprint=pool_fp,
            metrics=metrics,
            stores=stores,
            query_stores=query_stores,
            redis=redis_cache,
            ledger=ledger,
            model_executor=model_executor,
            cpu_executor=cpu_executor,
            loading=Loading(total=len(texts)),
            closers=closers,
        )

    def load(self) -> None:
        """Load the model, map the pool's vectors from the pool store (or import ``embeddings``, or
        embed them through the caches and write the pool file), build the index (a worker thread)."""
        t0 = time.perf_counter()
        try:
            self.embedder.load()
            stats = EmbedStats()

            def progress(done: int, total: int) -> None:
                self.loading.done = len(self.texts) - total + done

            s = self.settings
            stored = stored_pool_vectors(s, self.embedder, self.fingerprint, len(self.texts))  # embeds nothing
            if stored is not None:
                pool = Pool.from_vectors(
                    self.texts, stored, self.embedder, s.index, s.ivf_nprobe, s.hnsw_m, self.fingerprint
                )
            else:
                pool = Pool.build(
                    self.texts,
                    self.embedder,
                    self.stores,
                    index_kind=self.settings.index,
                    ivf_nprobe=self.settings.ivf_nprobe,
                    hnsw_m=self.settings.hnsw_m,
                    stats=stats,
                    on_progress=progress,
                    pool_fingerprint=self.fingerprint,
                )
                remember_pool_vectors(s, self.embedder, self.fingerprint, pool.vectors)
            self.metrics.embedded.labels(kind="document").inc(stats.embedded)
            # after the model (vLLM takes its share first), before ready: plan, check, copy, warm up
            vllm_share = getattr(self.embedder.load(), "gpu_memory_utilization", None)
            self.memory_plan = prepare_search(pool.index, s.gpu_storage, s.max_k_limit, s.max_queries, vllm_share)
            # the default strategy (density) needs them: computed (or read) before ready, not on a request
            t_stats = time.perf_counter()
            device = "cuda" if pool.index.device.startswith("cuda") else "cpu"
            ns, fp = self.embedder.namespace, self.fingerprint
            wanted = s.density_stats == "load" or (
                s.density_stats == "auto" and (device == "cuda" or pool.size <= DENSITY_STATS_CPU_ROWS)
            )
            # a stored file is used whatever the setting, but only a readable one: a damaged file on a
            # pool too large to compute here must not start an hours-long computation
            pool.density_stats, computed = pool_density_stats(s.cache_dir, ns, fp, pool.vectors, device, wanted)
            if pool.density_stats is not None:
                log.info(
                    "pool density statistics %s in %.2fs",
                    "computed" if computed else "read from the cache",
                    time.perf_counter() - t_stats,
                )
            else:
                why = (
                    "NEAR_DENSITY_STATS=off"
                    if s.density_stats == "off"
                    else f"{pool.size:,} rows on CPU is over {DENSITY_STATS_CPU_ROWS:,} (NEAR_DENSITY_STATS=auto)"
                )
                pool.density_refusal = (
                    f"strategies density and importance need the pool's density statistics, which this service "
                    f"did not compute ({why}); ask strategy round_robin or max_score, or set "
                    "NEAR_DENSITY_STATS=load (an exact search of the pool against itself, once, cached)"
                )
                log.warning("pool density statistics not computed (%s): density/importance answer 422", why)
        except EmbeddingStopped as exc:
            log.warning("%s; the vectors computed so far are in the caches", exc)
            self.loading.status, self.loading.message = "failed", str(exc)
            return
        except Exception as exc:
            log.exception("loading the pool failed")
            self.loading.status, self.loading.message = "failed", f"{type(exc).__name__}: {exc}"
            return
        self.selector = Selector(
            pool,
            self.settings,
            self.batcher,
            self.cpu_executor,
            self.ledger,
            self.embedder.spec.name,
            ledger_gate=self.ledger_wait,
        )
        self.loading.done = len(self.texts)
        self.loading.status = "ready"
        self.metrics.ready.set(1)
        log.info(
            "ready: %d candidates (%d embedded, %d from cache) in %.1fs",
            pool.size,
            stats.embedded,
            stats.cache_hits,
            time.perf_counter() - t0,
        )

    def close(self) -> None:
        self.model_executor.shutdown(wait=False, cancel_futures=True)
        self.cpu_executor.shutdown(wait=False, cancel_futures=True)
        for c in self.closers:
            with contextlib.suppress(Exception):
                c.close()  # type: ignore[attr-defined]

    # --- used by routes ------------------------------------------------------------------------
    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """One embedding call for a micro-batch (runs in the model thread)."""
        stats = EmbedStats()
        vectors = self.embedder.embed(texts, "query", self.query_stores, stats=stats)
        self.metrics.embedded.labels(kind="query").inc(stats.embedded)
        self.metrics.embed_batches.inc()
        return vectors

    def embed_documents(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """Vectors of ``texts`` as documents, and their token count (each text tokenized once)."""
        stats = EmbedStats()
        vectors = self.embedder.embed(texts, "document", self.query_stores, stats=stats, count_tokens=True)
        self.metrics.embedded.labels(kind="document").inc(stats.embedded)
        return vectors, stats.input_tokens

    def require_selector(self) -> Selector:
        if self.selector is None:
            if self.loading.status == "failed":
                raise UnavailableError(f"the pool failed to load: {self.loading.message}")
            raise UnavailableError(f"not ready: embedding the pool ({self.loading.done}/{self.loading.total})")
        return self.selector

    def require_ledger(self) -> Ledger:
        if self.ledger is None:
            raise UnavailableError(
                "run_id needs the run ledger, which needs Redis: set NEAR_REDIS_URL (or leave out run_id and round)"
            )
        return self.ledger

    @property
    def redis_state(self) -> RedisStatus:
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
