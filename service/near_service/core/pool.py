"""The candidate pool and the one search path that the CLI and the service both call.

:class:`SelectResult` is the one result type from the core to the wire: the offline CLI writes it
to ``top_indices.npy``, the service stores it in the run ledger and encodes it as the ``/select``
answer.

>>> pool = Pool.build(texts, embedder, stores)                                 # doctest: +SKIP
>>> result = pool.select_texts(embedder, ["a math question"], max_k=10)        # doctest: +SKIP
>>> result.indices.shape                                                        # doctest: +SKIP
(1, 10)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from near_schema import ResultSource
from near_service.core.density import PoolStats, compute_pool_stats
from near_service.core.embedder import Embedder, EmbeddingStore, EmbedStats
from near_service.core.errors import InputError
from near_service.core.index import IndexKind, VectorIndex, first_occurrence
from near_service.core.records import fingerprint
from near_service.core.selection import DENSITY_STRATEGIES, fill_budget


@dataclass
class SelectResult:
    """Each query's ``max_k`` nearest candidates and, with a budget, the chosen subset."""

    indices: np.ndarray  # int64 (queries, max_k), nearest first
    scores: np.ndarray  # float32 cosine, same shape
    selected: np.ndarray | None  # int64 (budget,), or None without a budget
    source: ResultSource = "computed"  # "stored": read back from the run ledger
    query_vectors: np.ndarray | None = None  # float32 (queries, dim) when computed here
    timings: dict[str, float] = field(default_factory=dict)


class Pool:
    """Candidate texts, their vectors and the index over them."""

    def __init__(
        self, texts: Sequence[str], vectors: np.ndarray, index: VectorIndex, pool_fingerprint: str | None = None
    ) -> None:
        self.texts = list(texts)
        self.vectors = vectors
        self.index = index
        self.fingerprint = pool_fingerprint or fingerprint(self.texts)
        self.density_stats: PoolStats | None = None  # set by the loader (cached), or computed at first use
        self.density_refusal: str | None = None  # set by a loader that will not compute them on a request

    def ensure_density_stats(self) -> PoolStats:
        """The pool's :class:`PoolStats`: those the loader set, or computed now (once)."""
        if self.density_stats is None and self.density_refusal is not None:
            raise InputError(self.density_refusal)
        if self.density_stats is None:
            device = "cuda" if self.index.device.startswith("cuda") else "cpu"
            self.density_stats = compute_pool_stats(self.vectors, device)
        return self.density_stats

    @property
    def size(self) -> int:
        return len(self.texts)

    @classmethod
    def build(
        cls,
        texts: Sequence[str],
        embedder: Embedder,
        stores: Sequence[EmbeddingStore] = (),
        index_kind: IndexKind = "flat",
        ivf_nprobe: int = 32,
        hnsw_m: int = 32,
        progress: bool = False,
        stats: EmbedStats | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        pool_fingerprint: str | None = None,
    ) -> Pool:
        """Embed ``texts`` as documents (through ``stores``) and index them."""
        vectors = embedder.embed(texts, "document", stores, progress=progress, stats=stats, on_progress=on_progress)
        return cls.from_vectors(texts, vectors, embedder, index_kind, ivf_nprobe, hnsw_m, pool_fingerprint)

    @classmethod
    def from_vectors(
        cls,
        texts: Sequence[str],
        vectors: np.ndarray,
        embedder: Embedder,
        index_kind: IndexKind = "flat",
        ivf_nprobe: int = 32,
        hnsw_m: int = 32,
        pool_fingerprint: str | None = None,
    ) -> Pool:
        """Index vectors ``embedder`` made for ``texts`` (the pool store's array is searched as it is, not copied)."""
        search_device = "cuda" if embedder.device == "cuda" else "cpu"
        idx = VectorIndex(
            vectors,
            kind=index_kind,
            device=search_device,
            first_of=first_occurrence(texts),
            ivf_nprobe=ivf_nprobe,
            hnsw_m=hnsw_m,
        )
        return cls(texts, vectors, idx, pool_fingerprint)

    def select_texts(
        self,
        embedder: Embedder,
        queries: Sequence[str],
        max_k: int,
        budget: int | None = None,
        strategy: str = "density",
        exclude: Iterable[int] | None = None,
        stores: Sequence[EmbeddingStore] = (),
        progress: bool = False,
        stats: EmbedStats | None = None,
    ) -> SelectResult:
        """Embed ``queries``, then :meth:`select_vectors`."""
        self.index.check_k(max_k)  # before embedding the queries, which can take long
        t0 = time.perf_counter()
        qvecs = embedder.embed(queries, "query", stores, progress=progress, stats=stats)
        t1 = time.perf_counter()
        result = self.select_vectors(qvecs, max_k, budget, strategy, exclude)
        result.timings = {"embed_queries_s": t1 - t0, **result.timings}
        return result

    def select_vectors(
        self,
        qvecs: np.ndarray,
        max_k: int,
        budget: int | None = None,
        strategy: str = "density",
        exclude: Iterable[int] | None = None,
    ) -> SelectResult:
        """Each query vector's ``max_k`` nearest candidates and, with ``budget``, the chosen subset."""
        t1 = time.perf_counter()
        scores, indices = self.index.search(qvecs, max_k)
        t2 = time.perf_counter()
        chosen = None
        if budget is not None:
            stats = self.ensure_density_stats() if strategy in DENSITY_STRATEGIES else None
            chosen = fill_budget(
                indices, scores, budget, strategy, exclude, queries=qvecs, pool_vectors=self.vectors, stats=stats
            )
        t3 = time.perf_counter()
        return SelectResult(indices, scores, chosen, "computed", qvecs, {"search_s": t2 - t1, "select_s": t3 - t2})
