"""The pool's density statistics on disk, beside its vector file, so a restart computes nothing.

Layout (next to :class:`~near_service.stores.vectors.PoolVectorStore`'s files)::

    <cache_dir>/pools/<namespace>/<fingerprint>.density.npz    h, grid, prefix, log_pool, method + what they are for

Keyed like the vectors (embedder namespace + pool fingerprint: same texts, same model, same
vectors). Written to a temporary name and renamed. On read the file is checked (format version,
namespace, fingerprint, row count, grid, shapes, finite values); a file that fails is logged and
recomputed (then overwritten), never a crash. The file records how the statistics were made
(``method``: "exact" or "approx"; format 2). A format-1 file (before the approximate method existed,
always exact) still loads, as exact. Asked for ``method="exact"``, a stored approximate file is not
used (logged, recomputed); "auto" and "approx" take either.

>>> stats, computed = pool_density_stats(cache_dir, embedder.namespace, fp, vectors, "cpu")   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from near_service.core.density import K_MAX, STATS_VERSION, PoolStats, compute_pool_stats, kp_grid
from near_service.stores.vectors import PoolVectorStore

__all__ = ["load_pool_stats", "pool_density_stats", "save_pool_stats", "stats_path"]

log = logging.getLogger(__name__)


def stats_path(cache_dir: str | Path, namespace: str, fingerprint: str) -> Path:
    vectors, _ = PoolVectorStore(cache_dir).paths(namespace, fingerprint)
    return vectors.with_name(f"{fingerprint}.density.npz")


def save_pool_stats(path: Path, namespace: str, fingerprint: str, stats: PoolStats) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    try:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                version=np.int64(stats.version),
                namespace=np.str_(namespace),
                fingerprint=np.str_(fingerprint),
                h=np.float64(stats.h),
                grid=stats.grid,
                prefix=stats.prefix,
                log_pool=stats.log_pool,
                method=np.str_(stats.method),
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


READS = (1, STATS_VERSION)  # format 1: no method field, always exact


def load_pool_stats(path: Path, namespace: str, fingerprint: str, count: int, method: str = "auto") -> PoolStats | None:
    """The stored statistics of this pool, or None (absent, damaged: logged; or approximate when
    ``method`` is "exact": logged)."""
    if not path.exists():
        return None
    problem = None
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            version, ns, fp = int(z["version"]), str(z["namespace"]), str(z["fingerprint"])
            h, grid = float(z["h"]), np.asarray(z["grid"], dtype=np.int64)
            prefix, log_pool = np.asarray(z["prefix"]), np.asarray(z["log_pool"])
            made = str(z["method"]) if "method" in z.files else "exact"
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        problem = f"unreadable ({type(exc).__name__}: {exc})"
    else:
        expected = kp_grid(min(K_MAX, count - 1))
        if version not in READS:
            problem = f"format {version}, this version reads {', '.join(map(str, READS))}"
        elif made not in ("exact", "approx"):
            problem = f"made by an unknown method {made!r}"
        elif (ns, fp) != (namespace, fingerprint):
            problem = f"made for {ns}/{fp}"
        elif not np.array_equal(grid, expected) or prefix.shape != (count, len(expected)) or log_pool.shape != (count,):
            problem = f"holds {prefix.shape} / {log_pool.shape} on grid {grid.tolist()}, expected {count} rows"
        elif not (np.isfinite(h) and h > 0 and np.isfinite(prefix).all() and np.isfinite(log_pool).all()):
            problem = "values are not finite"
    if problem is not None:
        log.warning("pool density statistics %s are damaged (%s); not used", path, problem)
        return None
    if method == "exact" and made != "exact":
        log.info("pool density statistics %s are %s, exact ones are asked for; not used", path, made)
        return None
    return PoolStats(h, grid, prefix.astype(np.float32), log_pool.astype(np.float32), method=made)


def pool_density_stats(
    cache_dir: str | Path | None,
    namespace: str,
    fingerprint: str,
    vectors: np.ndarray,
    device: str = "cpu",
    compute: bool = True,
    method: str = "auto",
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[PoolStats | None, bool]:
    """The pool's statistics from the cache folder, or computed (and stored there); and whether they
    were computed. Without a cache folder they are computed every time. With ``compute=False`` only
    a readable stored file counts: a missing or damaged one gives ``(None, False)``. ``method``,
    ``on_progress`` and ``should_stop`` go to :func:`~near_service.core.density.compute_pool_stats`."""
    path = stats_path(cache_dir, namespace, fingerprint) if cache_dir else None
    if path is not None:
        stored = load_pool_stats(path, namespace, fingerprint, len(vectors), method)
        if stored is not None:
            log.info("pool density statistics: read %s", path)
            return stored, False
    if not compute:
        return None, False
    stats = compute_pool_stats(vectors, device, method, on_progress, should_stop)
    if path is not None:
        try:
            save_pool_stats(path, namespace, fingerprint, stats)
        except OSError as exc:
            log.warning("could not write %s (%s); the next start computes the statistics again", path, exc)
    return stats, True
