"""What a report is built from: a pool and a run's rounds, as plain data (no I/O, no service).

Everything but the numbers the ledger always holds is optional, so a report still builds (and says
what is missing) without the pool's texts, vectors, statistics or the queries' texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from near_service.core.density import PoolStats
from near_service.core.projection import Pca

if TYPE_CHECKING:
    from near_service.stores.ledger import StoredRound

__all__ = ["PoolView", "RoundView"]


@dataclass
class PoolView:
    """A pool as a report sees it.

    ``texts``: the rendered texts (None: not at hand); ``sources``: each row's source (None: no
    per-row source; see :func:`near_service.core.records.record_sources`) and ``source_note`` how
    they were found; ``vectors``: (n, d) float32, L2-normalised; ``stats``: the pool's density
    statistics; ``projection``: (n, 2) map coordinates and ``map_fit`` the PCA that made them
    (None: computed from ``vectors`` when those are given; the cached ones come from
    :func:`near_service.stores.pool_map.pool_projection`).
    """

    name: str
    texts: Sequence[str] | None = None
    sources: Sequence[str] | None = None
    source_note: str = ""
    vectors: np.ndarray | None = None
    stats: PoolStats | None = None
    projection: np.ndarray | None = None
    map_fit: Pca | None = None  # the PCA behind ``projection`` (places the queries' vectors on the map)
    fingerprint: str | None = None
    rows: int | None = None  # the pool's size when neither texts nor vectors are given

    @property
    def size(self) -> int:
        for part in (self.texts, self.vectors, self.projection, self.sources):
            if part is not None:
                return len(part)
        if self.stats is not None:
            return self.stats.size
        return int(self.rows or 0)


@dataclass
class RoundView:
    """One round of a run (a ledger entry, or an offline selection as round 0).

    ``indices`` / ``scores``: (queries, max_k) neighbour lists, best first; ``selected``: the
    round's selection (None: no budget was asked; the report then counts the union of the
    neighbour lists as the selection, and says so); ``query_texts`` / ``query_vectors``: the
    queries (or the first of them: the ledger keeps up to 32 texts a round), row i of both being
    row i of ``indices``.
    """

    round: int
    indices: np.ndarray
    scores: np.ndarray
    selected: np.ndarray | None = None
    strategy: str | None = None
    budget: int | None = None
    max_k: int | None = None
    query_count: int | None = None
    query_texts: Sequence[str] | None = None
    query_vectors: np.ndarray | None = None
    created_at: float | None = None
    exclude_previous: bool | None = None

    @classmethod
    def from_stored(
        cls,
        stored: StoredRound,
        query_texts: Sequence[str] | None = None,
        query_vectors: np.ndarray | None = None,
    ) -> RoundView:
        """A ledger round (:class:`near_service.stores.ledger.StoredRound`) as a report round.

        >>> from types import SimpleNamespace as NS
        >>> res = NS(indices=np.zeros((2, 3), np.int64), scores=np.zeros((2, 3), np.float32), selected=None)
        >>> st = NS(round=4, params={"strategy": "density", "max_k": 3}, created_at=0.0, result=res)
        >>> RoundView.from_stored(st).max_k
        3
        """
        p, res = stored.params, stored.result
        return cls(
            round=int(stored.round),
            indices=np.asarray(res.indices),
            scores=np.asarray(res.scores),
            selected=None if res.selected is None else np.asarray(res.selected, dtype=np.int64),
            strategy=p.get("strategy"),
            budget=p.get("budget"),
            max_k=p.get("max_k"),
            query_count=p.get("query_count"),
            query_texts=list(query_texts) if query_texts else None,
            query_vectors=query_vectors,
            created_at=stored.created_at,
            exclude_previous=p.get("exclude_previous"),
        )
