"""Turning a neighbour matrix into a training subset of ``budget`` unique candidates.

- ``round_robin`` (DataFlex's order): every query's 1st neighbour, then every query's 2nd, and so on,
  skipping candidates already taken (or excluded by earlier rounds).
- ``max_score``: candidates ranked by their best similarity to any query; ties to the lower index.

>>> round_robin(np.array([[3, 1], [3, 2]]), 3).tolist()
[3, 1, 2]
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from near_schema import STRATEGIES

from near_service.core.errors import BudgetError, InputError


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


def fill_budget(
    indices: np.ndarray,
    scores: np.ndarray,
    budget: int,
    strategy: str = "round_robin",
    exclude: Iterable[int] | None = None,
) -> np.ndarray:
    """``budget`` unique candidates from a neighbour matrix, by ``strategy`` (one of :data:`STRATEGIES`)."""
    if strategy == "round_robin":
        return round_robin(indices, budget, exclude)
    if strategy == "max_score":
        return max_score(indices, scores, budget, exclude)
    raise InputError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
