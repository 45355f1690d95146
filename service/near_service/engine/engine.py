"""The engine: one object owns the model thread, the pools and the memory plan.

HTTP routes and the CLI only ask it. It holds:

- the :class:`~near_service.engine.work.ModelWorker` (queries before pool work, one batch at a time);
- the pools by name (:class:`~near_service.engine.pools.PoolEntry`), registered at start
  (``--candidates``: the pool named ``default``) or at run time (:meth:`Engine.put_pool`), kept on
  disk by the :class:`~near_service.engine.registry.Registry` so they come back after a restart;
- one loader thread that opens queued pools (:func:`~near_service.engine.open.open_pool`, the same
  path as ``near-select offline``) and one statistics thread (density statistics after a pool is
  searchable);
- the memory plan: every pool's planned bytes against ``NEAR_MAX_POOL_MEMORY``; idle pools are
  evicted to disk (LRU) to make room, and a pool that cannot fit is refused (507).

>>> engine = Engine(settings, embedder, stores, query_stores)          # doctest: +SKIP
>>> engine.start()                                                     # doctest: +SKIP
>>> engine.put_pool("x", texts=["a", "b"])                             # doctest: +SKIP
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from near_schema import DEFAULT_POOL, PoolSource, fingerprint
from near_service.core.density import StatsStopped
from near_service.core.embedder import Embedder, EmbeddingStopped, EmbeddingStore, EmbedStats
from near_service.core.errors import (
    InputError,
    InsufficientMemoryError,
    InsufficientStorageError,
    LimitError,
    PoolConflictError,
    PoolNotFoundError,
    PoolNotReadyError,
    PoolPathError,
    StatsPendingError,
    UnavailableError,
)
from near_service.core.memory import MemoryPlan, host_available_bytes, prepare_search
from near_service.core.records import load_texts
from near_service.core.selection import DENSITY_STRATEGIES
from near_service.core.settings import Settings
from near_service.engine.open import open_pool, open_pool_stats, pool_plan_bytes, stats_device, stats_wanted
from near_service.engine.pools import PoolCancelled, PoolEntry
from near_service.engine.registry import PoolRecord, Registry
from near_service.engine.work import ModelWorker
from near_service.stores.ledger import Ledger, RunBindings, ledger_scope
from near_service.stores.pool_stats import stats_path
from near_service.stores.redis_stores import RedisStores
from near_service.stores.vectors import PoolVectorStore

__all__ = ["Engine", "EngineHooks"]

log = logging.getLogger(__name__)

MEMORY_FRACTION = 0.6  # NEAR_MAX_POOL_MEMORY's default: this share of the memory available at start
#: Longest text a registered pool may hold. The model reads at most max_length tokens (<= 8192, i.e.
#: well under 200k characters), but the tokenizer tokenizes the whole text before it truncates, and
#: superlinearly (MiniLM's fast tokenizer on one CPU: 100k chars 1.1 s, 1M chars 18 s, 10 MB several
#: minutes), all on the model thread that /select's queries wait for.
MAX_TEXT_CHARS = 200_000


@dataclass
class EngineHooks:
    """What the server wants to hear (metrics); the engine knows nothing of HTTP."""

    on_embedded: Callable[[str, int], None] = lambda kind, n: None
    on_default: Callable[[bool, int], None] = lambda ready, rows: None


class Engine:
    """Owns the model thread, the pools, the memory plan and the background work."""

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder,
        stores: Sequence[EmbeddingStore] = (),
        query_stores: Sequence[EmbeddingStore] = (),
        redis: RedisStores | None = None,
        hooks: EngineHooks | None = None,
    ) -> None:
        self.settings, self.embedder = settings, embedder
        self.stores, self.query_stores = list(stores), list(query_stores)
        self.redis = redis
        self.hooks = hooks or EngineHooks()
        self.worker = ModelWorker()
        self.registry = Registry(settings.cache_dir / "registry" if settings.cache_dir else None)
        self.pools: dict[str, PoolEntry] = {}
        self.lock = threading.RLock()
        self.model_state = "loading"  # loading | ready | failed
        self.model_message: str | None = None
        self.max_memory = settings.max_pool_memory or 0
        scope = ledger_scope(embedder.namespace, embedder.query_prompt)
        self.bindings = RunBindings(redis.ledger_client, scope, redis.breaker) if redis else None
        self._loads: queue.Queue[PoolEntry | None] = queue.Queue()
        self._stats: queue.Queue[PoolEntry | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self.memory_plan: MemoryPlan | None = None  # of the last pool put on its search device (for /info)

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Read the startup pool's texts (RecordError on a bad file), then start the background
        threads: load the model, open the startup pool, bring back registered pools. Returns then;
        ``model_state`` and each pool's state say how far they got."""
        if self.settings.candidates:  # the startup pool is known before the model loads: /ready shows it
            self._startup_entry()
        for target, name in ((self._load_loop, "near-load-pools"), (self._stats_loop, "near-pool-stats")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def _startup_entry(self) -> None:
        """The startup pool's texts are read now: a bad file fails the start, before any model loads."""
        s = self.settings
        texts = load_texts(s.candidates, s.template, "candidate")
        entry = PoolEntry(
            DEFAULT_POOL, fingerprint(texts), len(texts), "startup", template=s.template, density_stats=s.density_stats
        )
        entry.files, entry.texts = [str(p) for p in s.candidates], texts
        self._plan(entry)
        entry.ledger, entry.ledger_scope = self._ledger(entry.fingerprint)
        self.hooks.on_default(False, entry.rows)
        with self.lock:
            self.pools[DEFAULT_POOL] = entry
        self._loads.put(entry)

    def close(self) -> None:
        self._closed.set()
        self.embedder.stop()
        for entry in list(self.pools.values()):
            entry.cancel.set()
        self._loads.put(None)
        self._stats.put(None)
        self.worker.shutdown(wait=False, cancel_futures=True)
        for t in self._threads:
            t.join(timeout=8.0)
        # the model last, once no call can run on it: vLLM's engine processes and threads stop now,
        # while the interpreter is whole (left to interpreter exit they aborted the process)
        self.worker.join(timeout=30.0)
        if not self.worker.running:
            self.embedder.close()
        else:  # pragma: no cover - a model call still running after 30 s
            log.warning("the model thread is still busy at shutdown; the model is not closed")

    def _load_model(self) -> bool:
        if self.model_state == "ready":
            return True
        if self.model_state == "failed":
            return False
        try:
            backend = self.worker.run_background(self.embedder.load)
        except Exception as exc:
            log.exception("loading the model failed")
            self.model_state, self.model_message = "failed", f"{type(exc).__name__}: {exc}"
            return False
        if not self.max_memory:
            self.max_memory = self._default_memory()
        self.model_state = "ready"
        log.info("model ready (%d dims); pools may hold %.2f GiB", backend.dim, self.max_memory / 2**30)
        self._restore()
        return True

    def _default_memory(self) -> int:
        if self.embedder.device == "cuda":
            from near_service.core.memory import device_memory

            free, _ = device_memory("cuda")
            return int(free * MEMORY_FRACTION)
        avail = host_available_bytes()
        return int((avail or 8 << 30) * MEMORY_FRACTION)

    def _restore(self) -> None:
        """Registered pools of earlier runs: searchable from their files without embedding, or queued again."""
        for record in self.registry.records():
            if record.name in self.pools:
                continue  # the startup pool takes its name
            texts = self.registry.texts(record.fingerprint)
            if texts is None:
                log.warning("registry: pool %r lost its texts; dropped (register it again)", record.name)
                self.registry.remove(record.name, record.fingerprint, keep_texts=True)
                continue
            entry = self._entry_from(record, texts)
            with self.lock:
                self.pools[record.name] = entry
            self._loads.put(entry)
            log.info("registry: pool %r (%d rows) queued to come back", record.name, record.rows)

    def _entry_from(self, record: PoolRecord, texts: list[str]) -> PoolEntry:
        source: PoolSource = "files" if record.source == "files" else "texts"
        entry = PoolEntry(
            record.name,
            record.fingerprint,
            record.rows,
            source,
            template=record.template,
            files=list(record.files),
            density_stats=record.density_stats or self.settings.density_stats,
            created_at=record.created_at,
            texts=texts,
        )
        self._plan(entry)
        return entry

    # --- the registry --------------------------------------------------------------------------
    @property
    def default_name(self) -> str | None:
        return DEFAULT_POOL if DEFAULT_POOL in self.pools else None

    def get(self, name: str) -> PoolEntry:
        entry = self.pools.get(name)
        if entry is None:
            raise PoolNotFoundError(f"no pool {name!r}; GET /pools lists them, PUT /pools/{name} registers one")
        return entry

    def memory_used(self, exclude: PoolEntry | None = None) -> int:
        return sum(e.planned_bytes for e in self.pools.values() if e is not exclude and e.state != "evicted")

    def _plan(self, entry: PoolEntry) -> None:
        dim = self.embedder.load().dim if self.embedder.loaded else 1024
        text_bytes = sum(len(t) for t in entry.texts) if entry.texts else entry.rows * 200
        entry.planned_bytes = pool_plan_bytes(entry.rows, dim, text_bytes, self.settings.index)

    def files_texts(self, files: Sequence[str], template: str) -> list[str]:
        """Read and render pool files named relative to NEAR_POOL_DIR (blocking; a worker thread)."""
        return load_texts(self.pool_paths(files), template, "pool")

    def pool_paths(self, files: Sequence[str]) -> list[Path]:
        root = self.settings.pool_dir
        if root is None:
            raise PoolPathError("this service reads no pool files: set NEAR_POOL_DIR, or send the texts")
        base = root.resolve()
        out = []
        for f in files:
            p = Path(f)
            if not f or p.is_absolute() or ".." in p.parts or f.startswith("~"):
                raise PoolPathError(f"pool file {f!r}: give a path relative to NEAR_POOL_DIR, without '..'")
            full = (base / p).resolve()
            if not full.is_relative_to(base):
                raise PoolPathError(f"pool file {f!r} leads out of NEAR_POOL_DIR (a symlink?); refused")
            if not full.exists():
                raise PoolPathError(f"pool file {f!r}: no such file under NEAR_POOL_DIR")
            out.append(full)
        return out

    def put_pool(
        self,
        name: str,
        texts: list[str],
        source: PoolSource = "texts",
        files: Sequence[str] = (),
        template: str = "default",
        density_stats: str | None = None,
        replace: bool = False,
    ) -> tuple[PoolEntry, bool]:
        """Register ``texts`` as pool ``name``; returns the entry and whether it is new (else: the
        same content was registered already, nothing is embedded). Blocking (writes the registry)."""
        if self._closed.is_set():
            raise UnavailableError("the service is shutting down")
        if not texts:
            raise InputError("a pool needs at least one text")
        long = next((i for i, t in enumerate(texts) if len(t) > MAX_TEXT_CHARS), None)
        if long is not None:
            raise LimitError(
                f"text {long} of pool {name!r} has {len(texts[long]):,} characters; a pool text may have at most "
                f"{MAX_TEXT_CHARS:,} (the model reads only its first {self.embedder.max_length} tokens): cut it"
            )
        fp = fingerprint(texts)
        with self.lock:
            old = self.pools.get(name)
            if old is not None and old.fingerprint == fp and old.state != "failed":
                return old, False
            if old is not None and not replace and not (old.state == "failed" and old.fingerprint == fp):
                raise PoolConflictError(
                    f"pool {name!r} holds other content (fingerprint {old.fingerprint}, {old.rows} rows; this is "
                    f"{fp}, {len(texts)} rows): PUT /pools/{name}?replace=true replaces it"
                )
            if old is not None and old.source == "startup":
                raise PoolConflictError(
                    f"pool {name!r} is the startup pool (--candidates / NEAR_CANDIDATES); restart the service "
                    "with other candidates to change it"
                )
            if old is None and len(self.pools) >= self.settings.max_pools:
                raise LimitError(f"{len(self.pools)} pools registered; the limit is NEAR_MAX_POOLS")
            record = PoolRecord(
                name,
                fp,
                len(texts),
                source,
                template=template,
                files=list(files),
                density_stats=density_stats,
                created_at=time.time(),
            )
            entry = self._entry_from(record, list(texts))
            self._make_room(entry, exclude=old)
            self._save(record, entry.texts or [])
            if old is not None:
                self._drop(old, keep_file_of=fp)
            self.pools[name] = entry
        self._loads.put(entry)
        log.info("pool %r registered: %d rows (%s), queued", name, entry.rows, fp)
        return entry, True

    def _save(self, record: PoolRecord, texts: list[str]) -> None:
        """Write the pool to the registry; a full disk is 507 with nothing registered (the registry
        removes what it wrote, and an old pool of the name keeps serving)."""
        try:
            self.registry.save(record, texts)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            log.warning("pool %r not registered: the registry could not be written (%s)", record.name, exc)
            raise InsufficientStorageError(
                f"pool {record.name!r} was not registered: writing its {record.rows:,} texts to the pool registry "
                f"under NEAR_CACHE_DIR failed ({exc.strerror or exc}); free disk space and PUT it again"
            ) from None

    def _make_room(self, entry: PoolEntry, exclude: PoolEntry | None = None) -> None:
        """Evict idle pools (least recently used first) until ``entry`` fits; 507 if it cannot."""
        budget = self.max_memory or self._default_memory()
        need = entry.planned_bytes
        used = self.memory_used(exclude)
        if need > budget:
            raise InsufficientMemoryError(
                f"pool {entry.name!r} needs {need / 2**20:.1f} MiB (its memory plan: vectors, statistics, texts); "
                f"{max(budget - used, 0) / 2**20:.1f} MiB is free and pools may hold {budget / 2**20:.1f} MiB in all "
                "(NEAR_MAX_POOL_MEMORY)"
            )
        if used + need <= budget:
            return
        idle = sorted(
            (e for e in self.pools.values() if e is not exclude and self._evictable(e)),
            key=lambda e: e.last_used or e.created_at,
        )
        freed, victims = 0, []
        for e in idle:
            if used - freed + need <= budget:
                break
            victims.append(e)
            freed += e.planned_bytes
        if used - freed + need > budget:
            raise InsufficientMemoryError(
                f"pool {entry.name!r} needs {need / 2**20:.1f} MiB; {max(budget - used, 0) / 2**20:.1f} MiB of "
                f"NEAR_MAX_POOL_MEMORY={budget / 2**20:.1f} MiB is free and the idle pools that could be evicted "
                f"hold {freed / 2**20:.1f} MiB: delete a pool or raise NEAR_MAX_POOL_MEMORY"
            )
        for e in victims:
            self._evict(e)

    def _evictable(self, e: PoolEntry) -> bool:
        if e.state not in ("ready", "stats") or e.in_use or e.pool is None or not self.settings.cache_dir:
            return False
        return PoolVectorStore(self.settings.cache_dir).manifest(self.embedder.namespace, e.fingerprint) is not None

    def _evict(self, e: PoolEntry) -> None:
        log.info("pool %r evicted to disk (%.1f MiB freed)", e.name, e.planned_bytes / 2**20)
        e.pool = None
        e.texts = None if e.source != "startup" else e.texts
        e.state = "evicted"

    def delete_pool(self, name: str) -> PoolEntry:
        with self.lock:
            entry = self.get(name)
            del self.pools[name]
            self._drop(entry)
        log.info("pool %r deleted", name)
        if name == DEFAULT_POOL:
            self.hooks.on_default(False, 0)
        return entry

    def _drop(self, entry: PoolEntry, keep_file_of: str | None = None) -> None:
        """Forget ``entry``: stop its work, free its memory, remove its files unless another pool has
        the same content (requests in flight keep their own reference to the Pool until they finish)."""
        entry.cancel.set()
        entry.pool, entry.texts = None, None
        shared = keep_file_of == entry.fingerprint or any(
            e.fingerprint == entry.fingerprint for e in self.pools.values() if e is not entry
        )
        if entry.source != "startup":
            self.registry.remove(entry.name, entry.fingerprint, keep_texts=shared)
        if shared or not self.settings.cache_dir or entry.source == "startup":
            return
        vec, man = PoolVectorStore(self.settings.cache_dir).paths(self.embedder.namespace, entry.fingerprint)
        for p in (man, vec, stats_path(self.settings.cache_dir, self.embedder.namespace, entry.fingerprint)):
            p.unlink(missing_ok=True)

    # --- background work -----------------------------------------------------------------------
    def _load_loop(self) -> None:
        if not self._load_model():
            for entry in list(self.pools.values()):
                entry.state, entry.message = "failed", f"the model failed to load: {self.model_message}"
            return
        while True:
            item = self._loads.get()
            if item is None or self._closed.is_set():
                return
            if item.cancel.is_set() or self.pools.get(item.name) is not item:
                continue
            self._open(item)

    def _runner(self, entry: PoolEntry) -> Callable[[Callable[[], Any]], Any]:
        def run(call: Callable[[], Any]) -> Any:
            entry.check_cancelled()
            return self.worker.run_background(call)

        return run

    def _open(self, entry: PoolEntry) -> None:
        s, t0 = self.settings, time.perf_counter()
        stats = EmbedStats()
        try:
            texts = entry.texts
            if texts is None:
                raise PoolCancelled(f"pool {entry.name!r} was deleted")
            entry.state, entry.started, entry.done = "embedding", time.monotonic(), 0
            base = 0

            def progress(done: int, total: int) -> None:
                entry.done = base + done

            def counted(vectors_done: int, total: int) -> None:
                # embedder reports the missing texts only; the rest came from the stores
                nonlocal base
                base = entry.rows - total
                progress(vectors_done, total)

            pool = open_pool(
                s,
                self.embedder,
                texts,
                entry.fingerprint,
                self.stores,
                embeddings=entry.source == "startup",
                run=self._runner(entry),
                stats=stats,
                on_progress=counted,
                must_store=entry.source != "startup",
            )
            entry.check_cancelled()
            self.hooks.on_embedded("document", stats.embedded)
            entry.embedded = stats.embedded
            vllm_share = getattr(self.embedder.load(), "gpu_memory_utilization", None)
            self.memory_plan = prepare_search(pool.index, s.gpu_storage, s.max_k_limit, s.max_queries, vllm_share)
            if not entry.ledger_scope:
                entry.ledger, entry.ledger_scope = self._ledger(entry.fingerprint)
            stored, _ = open_pool_stats(s, self.embedder, pool, entry.density_stats, compute=False)
            pool.density_stats = stored
            entry.pool, entry.done = pool, entry.rows
            if stored is not None:
                entry.stats_state, entry.state = "ready", "ready"
            elif stats_wanted(entry.density_stats, pool):
                entry.stats_state, entry.state, entry.stats_total = "pending", "stats", entry.rows
                self._stats.put(entry)
            else:
                entry.stats_state, entry.state = "off", "ready"
                pool.density_refusal = self._refusal(entry, pool)
            entry.last_used = time.time()
        except (PoolCancelled, EmbeddingStopped) as exc:
            log.info("pool %r: %s", entry.name, exc)
            if not self._closed.is_set() and self.pools.get(entry.name) is entry:
                entry.state, entry.message = "failed", str(exc)
            return
        except Exception as exc:
            log.exception("opening pool %r failed", entry.name)
            entry.state, entry.message = "failed", f"{type(exc).__name__}: {exc}"
            entry.pool = None
            return
        log.info(
            "pool %r searchable: %d rows (%d embedded, %d from stores) in %.1fs",
            entry.name,
            entry.rows,
            stats.embedded,
            stats.cache_hits,
            time.perf_counter() - t0,
        )
        if entry.name == DEFAULT_POOL:
            self.hooks.on_default(entry.state == "ready", entry.rows)

    def _refusal(self, entry: PoolEntry, pool: Any) -> str:
        why = "density_stats=off" if entry.density_stats == "off" else f"{pool.size:,} rows on CPU"
        return (
            f"strategies density and importance need the density statistics of pool {entry.name!r}, which this "
            f"service did not compute ({why}); ask strategy round_robin or max_score, or register the pool with "
            '"density_stats": "load" (or set NEAR_DENSITY_STATS=load)'
        )

    def _stats_loop(self) -> None:
        while True:
            item = self._stats.get()
            if item is None or self._closed.is_set():
                return
            self._compute_stats(item)

    def _compute_stats(self, entry: PoolEntry) -> None:
        pool = entry.pool
        if pool is None or entry.cancel.is_set():
            return
        entry.stats_state, t0 = "computing", time.perf_counter()

        def on_progress(done: int, total: int) -> None:
            entry.stats_done, entry.stats_total = done, total

        try:
            st, _ = open_pool_stats(
                self.settings,
                self.embedder,
                pool,
                entry.density_stats,
                on_progress=on_progress,
                should_stop=entry.cancel.is_set,
            )
        except StatsStopped:
            log.info("pool %r: density statistics stopped (the pool was deleted or replaced)", entry.name)
            return
        except Exception as exc:
            if entry.cancel.is_set():
                return
            log.exception("density statistics of pool %r failed", entry.name)
            entry.stats_state, entry.stats_message = "failed", f"{type(exc).__name__}: {exc}"
            pool.density_refusal = f"the density statistics of pool {entry.name!r} failed: {entry.stats_message}"
            if entry.state == "stats":
                entry.state = "ready"
            return
        pool.density_stats = st
        entry.stats_method = getattr(st, "method", "exact") if st is not None else None
        entry.stats_state, entry.stats_done = "ready", entry.rows
        if entry.state == "stats":
            entry.state = "ready"
        log.info("pool %r density statistics in %.1fs", entry.name, time.perf_counter() - t0)
        if entry.name == DEFAULT_POOL:
            self.hooks.on_default(True, entry.rows)

    def _ledger(self, fp: str) -> tuple[Ledger | None, str]:
        s, e = self.settings, self.embedder
        scope = ledger_scope(fp, e.namespace, e.query_prompt, s.index, s.ivf_nprobe, s.hnsw_m)
        return (self.redis.ledger(scope) if self.redis else None), scope

    # --- used by requests ----------------------------------------------------------------------
    def require_model(self) -> None:
        if self.model_state == "failed":
            raise UnavailableError(f"the model failed to load: {self.model_message}")
        if self.model_state != "ready":
            raise UnavailableError("not ready: loading the model", retry_after=2.0)

    def searchable(self, name: str | None, strategy: str | None = None, budget: int | None = None) -> PoolEntry:
        """The entry of a pool a request may search now (reloading an evicted one: blocking), or the
        error that says why not: 404 unknown, 503 with progress while queued or embedding, 503
        ``stats_pending`` for density/importance while the statistics compute."""
        for _ in range(3):
            entry = self.get(name or DEFAULT_POOL)
            if entry.state == "evicted":
                self._reload(entry)
            if entry.searchable or self.pools.get(entry.name) is entry:
                break
            # deleted (or replaced) while we looked: look again, which is 404 if it was deleted
        if entry.state == "failed":
            raise UnavailableError(f"pool {entry.name!r} failed: {entry.message}")
        if not entry.searchable:
            p = entry.progress()
            eta = f", ETA {p.eta_s:.0f}s" if p.eta_s is not None else ""
            rate = f", {p.rows_per_s:.0f} rows/s" if p.rows_per_s else ""
            raise PoolNotReadyError(
                f"pool {entry.name!r} is {entry.state} ({p.done}/{p.total} rows{rate}{eta}); retry later",
                retry_after=min(30.0, max(1.0, p.eta_s or 2.0)),
            )
        if entry.state == "stats" and budget is not None and strategy in DENSITY_STRATEGIES:
            total = entry.stats_total or entry.rows
            raise StatsPendingError(
                f"strategy {strategy} needs the density statistics of pool {entry.name!r}, which are being computed "
                f"({entry.stats_state}, {entry.stats_done}/{total} rows); round_robin and max_score answer now",
                retry_after=5.0,
            )
        entry.last_used = time.time()
        return entry

    def _reload(self, entry: PoolEntry) -> None:
        with entry.lock:
            if entry.state != "evicted":
                return
            with self.lock:
                self._make_room(entry, exclude=entry)
            texts: list[str] | None = entry.texts or self.registry.texts(entry.fingerprint)
            if texts is None:
                entry.state, entry.message = "failed", "its texts are gone from the registry; register it again"
                return
            s = self.settings
            pool = open_pool(s, self.embedder, texts, entry.fingerprint, (), embeddings=entry.source == "startup")
            pool.density_stats, _ = open_pool_stats(s, self.embedder, pool, entry.density_stats, compute=False)
            if pool.density_stats is None and not stats_wanted(entry.density_stats, pool):
                pool.density_refusal = self._refusal(entry, pool)
            if stats_device(pool) == "cuda":
                prepare_search(pool.index, s.gpu_storage, s.max_k_limit, s.max_queries)
            entry.texts, entry.pool = texts, pool
            needs_stats = pool.density_stats is None and pool.density_refusal is None
            entry.state = "stats" if needs_stats else "ready"
            if needs_stats:
                self._stats.put(entry)
            log.info("pool %r reloaded from disk", entry.name)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """One embedding call for a micro-batch of queries (runs on the model thread)."""
        stats = EmbedStats()
        vectors = self.embedder.embed(texts, "query", self.query_stores, stats=stats)
        self.hooks.on_embedded("query", stats.embedded)
        return vectors

    def embed_documents(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """Vectors of ``texts`` as documents, and their token count (runs on the model thread)."""
        stats = EmbedStats()
        vectors = self.embedder.embed(texts, "document", self.query_stores, stats=stats, count_tokens=True)
        self.hooks.on_embedded("document", stats.embedded)
        return vectors, stats.input_tokens
