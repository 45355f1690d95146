"""The one way a pool is opened: its vectors (stored, imported or embedded), its index, its statistics.

``near-select serve`` (the startup pool), ``near-select offline`` and ``PUT /pools`` all call
:func:`open_pool`, so a pool registered at run time is searched exactly as the same texts are
offline. :func:`open_pool_stats` adds the density statistics (read from the cache, or computed).

>>> pool = open_pool(settings, embedder, texts, fingerprint(texts), stores)      # doctest: +SKIP
>>> pool.density_stats = open_pool_stats(settings, embedder, pool)[0]            # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from near_service.core.density import compute_pool_stats
from near_service.core.embedder import Embedder, EmbeddingStore, EmbedStats, Runner
from near_service.core.pool import Pool
from near_service.core.settings import Settings
from near_service.stores.pool_stats import load_pool_stats, save_pool_stats, stats_path
from near_service.stores.vector_files import stored_pool_vectors
from near_service.stores.vectors import PoolVectorStore

__all__ = ["open_pool", "open_pool_stats", "pool_plan_bytes", "stats_device"]

log = logging.getLogger(__name__)

STATS_FLOATS_PER_ROW = 13  # 12 prefix values on the K=2048 grid + the whole-pool KDE


def pool_plan_bytes(rows: int, dim: int, text_bytes: int, index_kind: str = "flat", stats: bool = True) -> int:
    """What a loaded pool holds: float32 vectors, an approximate index's copy, statistics, texts."""
    vectors = rows * dim * 4
    index = 0 if index_kind == "flat" else vectors + rows * 64
    return vectors + index + (rows * STATS_FLOATS_PER_ROW * 4 if stats else 0) + text_bytes + rows * 56


def open_pool(
    settings: Settings,
    embedder: Embedder,
    texts: Sequence[str],
    fingerprint: str,
    stores: Sequence[EmbeddingStore] = (),
    *,
    embeddings: bool = True,
    run: Runner | None = None,
    stats: EmbedStats | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    progress: bool = False,
    must_store: bool = False,
) -> Pool:
    """The pool of ``texts`` searchable: vectors from the pool store (or ``settings.embeddings`` when
    ``embeddings``), else embedded through ``stores`` (each model call through ``run``) and written to
    the pool store. ``must_store``: a failure to write the pool file fails the call (a registered pool
    needs its file to come back after a restart); otherwise it is a warning."""
    s = settings
    if embeddings:
        vectors = stored_pool_vectors(s, embedder, fingerprint, len(texts))
    else:
        store = PoolVectorStore(s.cache_dir) if s.cache_dir else None
        vectors = store.load(embedder.namespace, fingerprint, len(texts), embedder.load().dim) if store else None
    if vectors is None:
        vectors = embedder.embed(
            texts,
            "document",
            stores,
            progress=progress,
            stats=stats,
            on_progress=on_progress,
            run=run,
            batch_tokens=s.pool_batch_tokens if run is not None else None,
        )
        _store_vectors(s, embedder, fingerprint, vectors, must_store)
    return Pool.from_vectors(texts, vectors, embedder, s.index, s.ivf_nprobe, s.hnsw_m, fingerprint)


def _store_vectors(settings: Settings, embedder: Embedder, fingerprint: str, vectors: np.ndarray, must: bool) -> None:
    if not settings.cache_dir:
        return
    try:
        PoolVectorStore(settings.cache_dir).save(embedder.namespace, fingerprint, vectors, embedder.spec.name)
    except OSError as exc:
        if must:
            raise OSError(exc.errno, f"could not write the pool vector file: {exc.strerror or exc}") from exc
        log.warning("could not write the pool vector file (%s); the next start reads the caches instead", exc)


def stats_device(pool: Pool) -> str:
    return "cuda" if pool.index.device.startswith("cuda") else "cpu"


def stats_wanted(setting: str, pool: Pool) -> bool:
    """Whether the statistics are computed for ``pool`` under the ``density_stats`` setting: always
    but with ``off`` (auto picks exact or approximate by size: ``core.density.resolve_method``)."""
    return setting != "off"  # auto and load: every size (large pools on CPU get the approximate method)


def open_pool_stats(
    settings: Settings,
    embedder: Embedder,
    pool: Pool,
    setting: str | None = None,
    *,
    compute: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[Any, bool]:
    """The pool's density statistics from the cache folder, or computed (and stored there) when the
    setting wants them and ``compute``; and whether they were computed. ``(None, False)`` when not."""
    path = stats_path(settings.cache_dir, embedder.namespace, pool.fingerprint) if settings.cache_dir else None
    if path is not None:
        stored = load_pool_stats(path, embedder.namespace, pool.fingerprint, pool.size, settings.density_method)
        if stored is not None:
            log.info("pool density statistics read from the cache (%s)", path)
            return stored, False
    if not compute or not stats_wanted(setting or settings.density_stats, pool):
        return None, False
    t0 = time.perf_counter()
    stats = compute_pool_stats(
        pool.vectors, stats_device(pool), settings.density_method, on_progress=on_progress, should_stop=should_stop
    )
    log.info("pool density statistics computed in %.2fs", time.perf_counter() - t0)
    if path is not None:
        try:
            save_pool_stats(path, embedder.namespace, pool.fingerprint, stats)
        except OSError as exc:
            log.warning("could not write %s (%s); the next start computes the statistics again", path, exc)
    return stats, True
