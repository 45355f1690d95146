"""The candidate pool and the one search path that the CLI and the service both call.

>>> pool = Pool.build(texts, embedder, stores)                        # doctest: +SKIP
>>> result = pool.select(embedder, ["a math question"], max_k=10)     # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .cache import EmbeddingStore
from .embedder import Embedder, EmbedStats
from .index import VectorIndex, first_occurrence
from .records import fingerprint
from .selection import select


@dataclass
class Selection:
    indices: np.ndarray  # int64 (queries, max_k), nearest first
    scores: np.ndarray  # float32 cosine, same shape
    selected: np.ndarray | None  # int64 (budget,) or None
    query_vectors: np.ndarray  # float32 (queries, dim), L2-normalised
    timings: dict[str, float] = field(default_factory=dict)


class Pool:
    """Candidate texts, their vectors and the index over them."""

    def __init__(self, texts: Sequence[str], vectors: np.ndarray, index: VectorIndex) -> None:
        self.texts = list(texts)
        self.vectors = vectors
        self.index = index
        self.fingerprint = fingerprint(self.texts)

    @property
    def size(self) -> int:
        return len(self.texts)

    @classmethod
    def build(cls, texts: Sequence[str], embedder: Embedder, stores: Sequence[EmbeddingStore] = (),
              index: str = "flat", ivf_nprobe: int = 32, hnsw_m: int = 32, progress: bool = False,
              stats: EmbedStats | None = None,
              on_progress: Callable[[int, int], None] | None = None) -> Pool:
        vectors = embedder.embed(texts, "document", stores, progress=progress, stats=stats,
                                 on_progress=on_progress)
        search_device = "cuda" if embedder.device == "cuda" else "cpu"
        idx = VectorIndex(vectors, kind=index, device=search_device, first_of=first_occurrence(texts),
                          ivf_nprobe=ivf_nprobe, hnsw_m=hnsw_m)
        return cls(texts, vectors, idx)

    def select(self, embedder: Embedder, queries: Sequence[str], max_k: int, budget: int | None = None,
               strategy: str = "round_robin", exclude: Iterable[int] | None = None,
               stores: Sequence[EmbeddingStore] = (), progress: bool = False,
               stats: EmbedStats | None = None) -> Selection:
        """Embed ``queries``, find each one's ``max_k`` nearest candidates, optionally pick a budget."""
        self.index.check_k(max_k)
        t0 = time.perf_counter()
        qvecs = embedder.embed(queries, "query", stores, progress=progress, stats=stats)
        t1 = time.perf_counter()
        result = self.rank(qvecs, max_k, budget, strategy, exclude)
        result.timings = {"embed_queries_s": t1 - t0, **result.timings}
        return result

    def rank(self, qvecs: np.ndarray, max_k: int, budget: int | None = None, strategy: str = "round_robin",
             exclude: Iterable[int] | None = None) -> Selection:
        """The search half of :meth:`select`, for query vectors embedded elsewhere (the service batches them)."""
        self.index.check_k(max_k)
        t1 = time.perf_counter()
        scores, indices = self.index.search(qvecs, max_k)
        t2 = time.perf_counter()
        chosen = select(indices, scores, budget, strategy, exclude) if budget is not None else None
        t3 = time.perf_counter()
        return Selection(indices, scores, chosen, qvecs, {"search_s": t2 - t1, "select_s": t3 - t2})
