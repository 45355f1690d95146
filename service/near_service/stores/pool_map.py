"""The pool's 2D map (PCA, :mod:`near_service.core.projection`) on disk, beside its statistics.

Layout (next to :mod:`~near_service.stores.pool_stats`'s file)::

    <cache_dir>/pools/<namespace>/<fingerprint>.map.npz    mean, components, coords (n x 2) + what they are for

Keyed like the vectors (same texts, same model: same map), written to a temporary name and
renamed. A file that fails its checks (version, namespace, fingerprint, row count, finite values)
is logged and recomputed, never a crash.

>>> fit, coords, computed = pool_projection(cache_dir, embedder.namespace, fp, vectors)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import time
import zipfile
from pathlib import Path

import numpy as np

from near_service.core.projection import Pca, project_pool
from near_service.stores.pool_stats import stats_path

__all__ = ["MAP_VERSION", "load_pool_map", "map_path", "pool_projection", "save_pool_map"]

log = logging.getLogger(__name__)

MAP_VERSION = 1


def map_path(cache_dir: str | Path, namespace: str, fingerprint: str) -> Path:
    return stats_path(cache_dir, namespace, fingerprint).with_name(f"{fingerprint}.map.npz")


def save_pool_map(path: Path, namespace: str, fingerprint: str, fit: Pca, coords: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    try:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                version=np.int64(MAP_VERSION),
                namespace=np.str_(namespace),
                fingerprint=np.str_(fingerprint),
                mean=fit.mean,
                components=fit.components,
                coords=np.asarray(coords, dtype=np.float32),
            )
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_pool_map(path: Path, namespace: str, fingerprint: str, count: int) -> tuple[Pca, np.ndarray] | None:
    """The stored map of this pool, or None (absent, or damaged: logged)."""
    if not path.exists():
        return None
    problem = None
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            version, ns, fp = int(z["version"]), str(z["namespace"]), str(z["fingerprint"])
            mean, comp, coords = np.asarray(z["mean"]), np.asarray(z["components"]), np.asarray(z["coords"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        problem = f"unreadable ({type(exc).__name__}: {exc})"
    else:
        if version != MAP_VERSION:
            problem = f"format {version}, this version reads {MAP_VERSION}"
        elif (ns, fp) != (namespace, fingerprint):
            problem = f"made for {ns}/{fp}"
        elif coords.shape != (count, 2) or comp.shape != (2, mean.shape[0]):
            problem = f"holds {coords.shape} coordinates, expected ({count}, 2)"
        elif not (np.isfinite(coords).all() and np.isfinite(comp).all() and np.isfinite(mean).all()):
            problem = "values are not finite"
    if problem is not None:
        log.warning("pool map %s is damaged (%s); not used", path, problem)
        return None
    return Pca(mean.astype(np.float32), comp.astype(np.float32)), coords.astype(np.float32)


def pool_projection(
    cache_dir: str | Path | None, namespace: str, fingerprint: str, vectors: np.ndarray
) -> tuple[Pca, np.ndarray, bool]:
    """The pool's map: its PCA and every row's (x, y), float32 (n, 2), from the cache folder or
    computed (and stored there); and whether it was computed. Without a cache folder it is computed
    every time."""
    path = map_path(cache_dir, namespace, fingerprint) if cache_dir else None
    if path is not None:
        stored = load_pool_map(path, namespace, fingerprint, len(vectors))
        if stored is not None:
            return stored[0], stored[1], False
    t0 = time.perf_counter()
    fit, coords = project_pool(vectors)
    log.info("pool map: %d rows projected in %.2fs", len(vectors), time.perf_counter() - t0)
    if path is not None:
        try:
            save_pool_map(path, namespace, fingerprint, fit, coords)
        except OSError as exc:
            log.warning("could not write %s (%s); the next report computes the map again", path, exc)
    return fit, coords, True
