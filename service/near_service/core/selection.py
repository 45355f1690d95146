"""Turning a neighbour matrix into a training subset of ``budget`` unique candidates.

- ``round_robin`` (DataFlex's order): every query's 1st neighbour, then every query's 2nd, and so on,
  skipping candidates already taken (or excluded by earlier rounds).
- ``max_score``: candidates ranked by their best similarity to any query; ties to the lower index.
- ``density`` (recommended): target KDE minus the candidate's own pool-neighbourhood KDE, with a
  typicality floor (:func:`density`).
- ``importance``: target KDE over full-pool KDE, a DSIR-like density ratio (:func:`importance`).

``density`` and ``importance`` rank the candidates the neighbour matrix reaches (the union of the
queries' top-``max_k`` lists) and need the query vectors, the pool vectors and the pool's
:class:`~near_service.core.density.PoolStats`.

>>> round_robin(np.array([[3, 1], [3, 2]]), 3).tolist()
[3, 1, 2]
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from near_schema import STRATEGIES
from near_service.core.density import PoolStats
from near_service.core.errors import BudgetError, InputError

DENSITY_STRATEGIES = ("density", "importance")  # the strategies that need the pool's PoolStats
REACH = 2.0  # density's neighbourhood: twice the budget (docs/benchmarks.md, quality section)
_BLOCK_BYTES = 64 << 20


def _not_excluded(candidates: np.ndarray, exclude: Iterable[int] | None) -> np.ndarray:
    if exclude is None:
        return candidates
    ex = np.fromiter(exclude, dtype=np.int64)
    return candidates[~np.isin(candidates, ex)] if len(ex) else candidates


def _first_unique(ordered: np.ndarray) -> np.ndarray:
    _, first = np.unique(ordered, return_index=True)
    return ordered[np.sort(first)]


def _take(order: np.ndarray, budget: int, indices: np.ndarray, excluded: int) -> np.ndarray:
    if budget < 1:
        raise BudgetError(f"budget must be at least 1, got {budget}")
    if len(order) < budget:
        q, k = indices.shape
        extra = f" after leaving out {excluded} selected in earlier rounds" if excluded else ""
        raise BudgetError(
            f"budget {budget} asks for more candidates than exist: {q} queries x max_k {k} "
            f"reach only {len(order)} unique candidates{extra}; raise max_k or lower the budget"
        )
    return order[:budget].astype(np.int64)


def round_robin(indices: np.ndarray, budget: int, exclude: Iterable[int] | None = None) -> np.ndarray:
    """DataFlex's column-by-column order, skipping repeats and excluded candidates."""
    ex = list(exclude) if exclude is not None else []
    order = _not_excluded(_first_unique(np.asarray(indices, dtype=np.int64).T.ravel()), ex)
    return _take(order, budget, indices, len(ex))


def max_score(indices: np.ndarray, scores: np.ndarray, budget: int, exclude: Iterable[int] | None = None) -> np.ndarray:
    """Candidates ranked by their best score over all queries (ties: lower index first)."""
    ex = list(exclude) if exclude is not None else []
    flat_i = np.asarray(indices, dtype=np.int64).ravel()
    flat_s = np.asarray(scores, dtype=np.float32).ravel()
    ranked = flat_i[np.lexsort((flat_i, -flat_s))]
    order = _not_excluded(_first_unique(ranked), ex)
    return _take(order, budget, indices, len(ex))


def target_log_density(queries: np.ndarray, pool_vectors: np.ndarray, rows: np.ndarray, h: float) -> np.ndarray:
    """lt(c) = log mean over all queries q of exp(s(q, c) / h), for each pool row in ``rows`` (float64).

    Blocked over ``rows`` (a |rows| x queries block at a time), never a dense queries x pool matrix.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    out = np.empty(len(rows), dtype=np.float64)
    step = max(1, _BLOCK_BYTES // max(8 * len(q), 1))
    for r0 in range(0, len(rows), step):
        a = (np.asarray(pool_vectors[rows[r0 : r0 + step]], dtype=np.float32) @ q.T).astype(np.float64) / h
        mx = a.max(axis=1, keepdims=True)
        out[r0 : r0 + len(a)] = mx[:, 0] + np.log(np.exp(a - mx).mean(axis=1))
    return out


def typicality_floor(queries: np.ndarray, h: float) -> float:
    """tau = min over queries of the leave-one-out target KDE log mean_{q' != q} exp(s(q', q) / h);
    ``-inf`` for a single query (no floor)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    m = len(q)
    if m < 2:
        return float("-inf")
    tau = float("inf")
    step = max(1, _BLOCK_BYTES // (8 * m))
    for r0 in range(0, m, step):
        a = (q[r0 : r0 + step] @ q.T).astype(np.float64) / h
        a[np.arange(len(a)), np.arange(r0, r0 + len(a))] = -np.inf
        mx = a.max(axis=1, keepdims=True)
        tau = min(tau, float((mx[:, 0] + np.log(np.exp(a - mx).sum(axis=1) / (m - 1))).min()))
    return tau


def _ranked(
    candidates: np.ndarray, key: np.ndarray, first: np.ndarray | None, budget: int, indices: np.ndarray, ex: list[int]
) -> np.ndarray:
    """``candidates`` (ascending) by ``first`` (True before False), then ``key`` descending, then index."""
    keep = ~np.isin(candidates, np.asarray(ex, dtype=np.int64)) if ex else np.ones(len(candidates), bool)
    c, k = candidates[keep], key[keep]
    tiers = np.zeros(len(c), dtype=np.int8) if first is None else (~first[keep]).astype(np.int8)
    return _take(c[np.lexsort((c, -k, tiers))], budget, indices, len(ex))


def _density_inputs(
    indices: np.ndarray, queries: np.ndarray | None, pool_vectors: np.ndarray | None, stats: PoolStats | None, name: str
) -> tuple[np.ndarray, np.ndarray, PoolStats]:
    if queries is None or pool_vectors is None or stats is None:
        raise InputError(
            f"strategy {name!r} needs the query vectors, the pool vectors and the pool's density statistics"
        )
    if stats.size != len(pool_vectors):
        raise InputError(f"density statistics are for {stats.size} rows, the pool has {len(pool_vectors)}")
    return queries, pool_vectors, stats


def density(
    indices: np.ndarray,
    queries: np.ndarray | None,
    pool_vectors: np.ndarray | None,
    stats: PoolStats | None,
    budget: int,
    exclude: Iterable[int] | None = None,
    candidates: np.ndarray | None = None,
) -> np.ndarray:
    """The recommended strategy: a density contrast between the target sample and the candidate's own
    pool neighbourhood, with a typicality floor (research: ``kde_contrast_floor``).

    Scores, with h the pool's bandwidth and kp = min(2 * budget, K) rounded to the stats' grid::

        lt(c) = log mean_{q in queries}   exp(s(q, c) / h)      target KDE at c (all queries)
        lp(c) = log mean_{p in N_kp(c)}   exp(s(p, c) / h)      KDE of c's kp nearest pool rows
        tau   = min_q log mean_{q' != q}  exp(s(q', q) / h)     the least typical query's KDE

    Candidates with lt >= tau come first, by lt - lp; the rest after them, by lt; ties to the lower
    index. A target row sits in a cluster the queries sample (lt ~ lp); a row of a denser foreign
    cluster, or a hub, has lp > lt. The idea is TSDS's (Liu et al. 2024) density-aware selection and
    CSLS's (Conneau et al. 2018) hubness correction, made a matched kernel density ratio whose
    reference neighbourhood is sized by the budget. ``candidates`` (default: every row ``indices``
    reaches) are the rows ranked.
    """
    q, p, st = _density_inputs(indices, queries, pool_vectors, stats, "density")
    ex = list(exclude) if exclude is not None else []
    c = np.unique(np.asarray(indices, dtype=np.int64)) if candidates is None else np.asarray(candidates, np.int64)
    lt = target_log_density(q, p, c, st.h)
    lp, _ = st.lp(round(REACH * budget))
    ok = lt >= typicality_floor(q, st.h)
    return _ranked(c, np.where(ok, lt - lp[c], lt), ok, budget, indices, ex)


def importance(
    indices: np.ndarray,
    queries: np.ndarray | None,
    pool_vectors: np.ndarray | None,
    stats: PoolStats | None,
    budget: int,
    exclude: Iterable[int] | None = None,
    candidates: np.ndarray | None = None,
) -> np.ndarray:
    """Importance weights in embedding space: target KDE over full-pool KDE at each candidate,
    log mean_q exp(s(q, c) / h) - log mean_{p != c} exp(s(p, c) / h), highest first; ties to the lower
    index. DSIR's importance resampling (Xie et al. 2023) with kernel density estimates in place of
    hashed n-gram models, ranked instead of sampled.
    """
    q, p, st = _density_inputs(indices, queries, pool_vectors, stats, "importance")
    ex = list(exclude) if exclude is not None else []
    c = np.unique(np.asarray(indices, dtype=np.int64)) if candidates is None else np.asarray(candidates, np.int64)
    lt = target_log_density(q, p, c, st.h)
    return _ranked(c, lt - st.log_pool[c], None, budget, indices, ex)


def fill_budget(
    indices: np.ndarray,
    scores: np.ndarray,
    budget: int,
    strategy: str = "density",
    exclude: Iterable[int] | None = None,
    *,
    queries: np.ndarray | None = None,
    pool_vectors: np.ndarray | None = None,
    stats: PoolStats | None = None,
) -> np.ndarray:
    """``budget`` unique candidates from a neighbour matrix, by ``strategy`` (one of :data:`STRATEGIES`).

    ``density`` and ``importance`` also need ``queries`` (the query vectors), ``pool_vectors`` and ``stats``.
    """
    if strategy == "round_robin":
        return round_robin(indices, budget, exclude)
    if strategy == "max_score":
        return max_score(indices, scores, budget, exclude)
    if strategy == "density":
        return density(indices, queries, pool_vectors, stats, budget, exclude)
    if strategy == "importance":
        return importance(indices, queries, pool_vectors, stats, budget, exclude)
    raise InputError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
