"""Pieces both report kinds share: sampling, histograms, sources, the map. Pure numpy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from near_service.core.projection import Pca, project_pool
from near_service.report.views import PoolView

MAP_POINTS = 5000  # pool rows drawn on the map
MAP_LAYER_POINTS = 600  # most selected rows drawn per layer of the map
MAP_LAYERS = 8  # rounds are grouped into at most this many layers
MAP_TEXT = 100  # characters of a row's text shown when hovering it
TOP_SOURCES = 15  # sources shown by name; the rest are one "(other)"
HIST_BINS = 40


def truncate(text: str, n: int) -> str:
    """``text`` on one line, cut to ``n`` characters (an ellipsis says so).

    >>> truncate("a\\nb " * 3, 6)
    'a b a…'
    """
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[: n - 1] + "…"


def spaced(n: int, k: int) -> np.ndarray:
    """Up to ``k`` evenly spaced indices of ``range(n)`` (all of them when n <= k), deterministic."""
    if n <= k:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def histogram(values: np.ndarray, edges: np.ndarray) -> list[int]:
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    return [int(c) for c in counts]


def edges_for(arrays: Sequence[np.ndarray], bins: int = HIST_BINS, step: float = 0.05) -> np.ndarray:
    """Shared histogram edges over all ``arrays``, rounded out to multiples of ``step``."""
    full = [a for a in arrays if len(a)]
    if not full:
        return np.linspace(0.0, 1.0, bins + 1)
    lo = float(min(a.min() for a in full))
    hi = float(max(a.max() for a in full))
    lo, hi = np.floor(lo / step) * step, np.ceil(hi / step) * step
    if hi <= lo:
        hi = lo + step
    return np.linspace(lo, hi, bins + 1)


def source_codes(pool: PoolView) -> tuple[np.ndarray, list[str]] | None:
    """Each row's source as a code into the returned names (most common first, at most
    :data:`TOP_SOURCES` named and the rest ``(other)``); None when the pool has no sources."""
    if pool.sources is None:
        return None
    names, inverse, counts = np.unique(
        np.asarray(list(pool.sources), dtype=object), return_inverse=True, return_counts=True
    )
    order = np.lexsort((names.astype(str), -counts))  # most common first, then by name
    rank = np.empty(len(names), dtype=np.int64)
    rank[order] = np.arange(len(names))
    codes = rank[inverse]
    shown = [str(names[i]) for i in order[:TOP_SOURCES]]
    if len(names) > TOP_SOURCES:
        codes = np.minimum(codes, TOP_SOURCES)
        shown.append("(other)")
    return codes.astype(np.int64), shown


def shares(codes: np.ndarray, n_names: int) -> list[float]:
    counts = np.bincount(codes, minlength=n_names)
    return [round(float(c) / max(len(codes), 1), 6) for c in counts]


def pool_coords(pool: PoolView) -> tuple[Pca | None, np.ndarray | None]:
    """The pool's PCA and (n, 2) map: its projection, else PCA of its vectors (not cached here)."""
    if pool.projection is not None:
        return pool.map_fit, np.asarray(pool.projection, dtype=np.float32)
    if pool.vectors is not None and len(pool.vectors):
        return project_pool(pool.vectors)
    return None, None


def points(pool: PoolView, coords: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
    """The map's columns for ``rows``: row, x, y, text (truncated) and source."""
    rows = np.asarray(rows, dtype=np.int64)
    out: dict[str, Any] = {
        "row": [int(r) for r in rows],
        "x": [round(float(v), 4) for v in coords[rows, 0]],
        "y": [round(float(v), 4) for v in coords[rows, 1]],
    }
    out["text"] = [truncate(pool.texts[r], MAP_TEXT) for r in rows] if pool.texts is not None else ["" for _ in rows]
    out["source"] = [str(pool.sources[r]) for r in rows] if pool.sources is not None else ["" for _ in rows]
    return out


def map_section(
    pool: PoolView,
    layers: Sequence[tuple[str, np.ndarray]] = (),
    queries: dict[str, Any] | None = None,
    map_points: int = MAP_POINTS,
) -> dict[str, Any] | None:
    """The 2D map: up to ``map_points`` evenly spaced pool rows, each layer's rows (up to
    :data:`MAP_LAYER_POINTS`, evenly spaced) and the queries. None without coordinates."""
    _, coords = pool_coords(pool)
    if coords is None:
        return None
    sample = spaced(len(coords), map_points)
    out: dict[str, Any] = {
        "note": (
            f"PCA of the pool's vectors (first two axes), {len(sample):,} of {len(coords):,} rows drawn "
            "(evenly spaced); hover a point for its text"
        ),
        "pool": points(pool, coords, sample),
        "layers": [],
        "queries": queries,
    }
    for label, rows in layers:
        uniq = np.unique(np.asarray(rows, dtype=np.int64))
        shown = uniq[spaced(len(uniq), MAP_LAYER_POINTS)]
        layer = points(pool, coords, shown)
        layer["label"] = label + (f" ({len(shown):,} of {len(uniq):,} drawn)" if len(shown) < len(uniq) else "")
        out["layers"].append(layer)
    return out


def round_groups(round_numbers: Sequence[int], most: int = MAP_LAYERS) -> list[list[int]]:
    """Positions of the rounds, in at most ``most`` consecutive groups.

    >>> round_groups([0, 1, 2, 3, 4], 2)
    [[0, 1, 2], [3, 4]]
    """
    n = len(round_numbers)
    if n == 0:
        return []
    parts = np.array_split(np.arange(n), min(n, most))
    return [[int(i) for i in p] for p in parts]
