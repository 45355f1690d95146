"""The report of a pool: its size, sources, text lengths, near-duplicates and map.

>>> import numpy as np
>>> v = np.eye(3, dtype=np.float32)[[0, 0, 1]]
>>> rep = build_pool_report(PoolView("p", texts=["a", "a", "b"], vectors=v))
>>> rep["duplicates"]["rows_with_near_duplicate"], rep["duplicates"]["identical_rows"]
(2, 2)
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np

from near_service.report import common
from near_service.report.views import PoolView

__all__ = ["DUP_THRESHOLD", "build_pool_report"]

DUP_THRESHOLD = 0.95  # cosine at or above which two rows count as near-duplicates
DUP_SAMPLE = 2000  # rows searched exactly against the whole pool when there are no statistics
MAP_SOURCES = 8


def _lengths(pool: PoolView) -> dict[str, Any] | None:
    if pool.texts is None:
        return None
    lens = np.fromiter((len(t) for t in pool.texts), dtype=np.int64, count=len(pool.texts))
    if not len(lens):
        return None
    hi = max(float(np.percentile(lens, 99)), 1.0)
    edges = np.linspace(0.0, np.ceil(hi), common.HIST_BINS + 1)
    return {
        "what": "characters per rendered text (the last bin holds everything beyond the 99th percentile)",
        "edges": [round(float(e), 1) for e in edges],
        "counts": common.histogram(lens.astype(np.float64), edges),
        "min": int(lens.min()),
        "median": float(np.median(lens)),
        "p90": float(np.percentile(lens, 90)),
        "max": int(lens.max()),
    }


def _nearest_sample(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each of ``rows``' best cosine to another pool row (exact, blocked)."""
    out = np.empty(len(rows), dtype=np.float32)
    step = max(1, (64 << 20) // max(4 * len(vectors), 1))
    for r0 in range(0, len(rows), step):
        r = rows[r0 : r0 + step]
        s = np.asarray(vectors[r], dtype=np.float32) @ np.asarray(vectors, dtype=np.float32).T
        s[np.arange(len(r)), r] = -np.inf
        out[r0 : r0 + len(r)] = s.max(axis=1)
    return out


def _duplicates(pool: PoolView, threshold: float) -> dict[str, Any]:
    n = pool.size
    out: dict[str, Any] = {"threshold": threshold, "rows": n}
    if pool.texts is not None:
        repeats = [c for c in Counter(pool.texts).values() if c > 1]
        out["identical_rows"], out["identical_groups"] = int(sum(repeats)), len(repeats)
    nearest: np.ndarray | None = None
    if pool.stats is not None and pool.stats.k >= 1 and pool.stats.size == n:
        # prefix[:, 0] is the log mean over the 1 nearest other row of exp(s / h), i.e. s / h
        nearest = (pool.stats.prefix[:, 0].astype(np.float64) * pool.stats.h).astype(np.float32)
        out["method"] = "statistics"
        out["what"] = "every row's nearest other row, from the pool's density statistics (exact)"
        out["rows_with_near_duplicate"] = int((nearest >= threshold - 1e-6).sum())
    elif pool.vectors is not None and n >= 2:
        rows = common.spaced(n, DUP_SAMPLE)
        nearest = _nearest_sample(pool.vectors, rows)
        hits = int((nearest >= threshold - 1e-6).sum())
        out["method"] = "sample" if len(rows) < n else "exact"
        out["what"] = (
            f"exact search of {len(rows):,} evenly spaced rows against the whole pool (no statistics); "
            "the count is scaled to the pool"
            if len(rows) < n
            else "exact search of every row against the pool"
        )
        out["rows_with_near_duplicate"] = round(hits * n / len(rows)) if len(rows) < n else hits
    else:
        out["method"] = None
        out["what"] = "no vectors or statistics at hand: near-duplicates are not counted"
        out["rows_with_near_duplicate"] = None
    if nearest is not None:
        edges = common.edges_for([nearest])
        out["nearest"] = {"edges": [round(float(e), 4) for e in edges], "counts": common.histogram(nearest, edges)}
    return out


def build_pool_report(pool: PoolView, threshold: float = DUP_THRESHOLD) -> dict[str, Any]:
    """The pool's report as JSON-able data (``GET /pools/{name}/report`` draws it with
    :func:`~near_service.report.render.render_html`)."""
    notes = []
    coded = common.source_codes(pool)
    sources: dict[str, Any] = {"note": pool.source_note or "the pool's rows have no sources", "names": [], "rows": []}
    layers: list[tuple[str, np.ndarray]] = []
    if coded is not None:
        codes, names = coded
        counts = np.bincount(codes, minlength=len(names))
        sources.update(names=names, rows=[int(c) for c in counts], pool_share=common.shares(codes, len(names)))
        for i, name in enumerate(names[:MAP_SOURCES]):
            if len(names) > 1:
                layers.append((f"source {name}", np.flatnonzero(codes == i)))
    if pool.texts is None:
        notes.append("the pool's texts are not at hand: no lengths, rows shown by number")
    if pool.vectors is None and pool.projection is None:
        notes.append("the pool's vectors are not at hand: no map")
    return {
        "kind": "pool",
        "title": f"Pool {pool.name}",
        "generated_at": time.time(),
        "notes": notes,
        "pool": {"present": True, "name": pool.name, "rows": pool.size, "fingerprint": pool.fingerprint},
        "sources": sources,
        "lengths": _lengths(pool),
        "duplicates": _duplicates(pool, threshold),
        "map": common.map_section(pool, layers),
    }
