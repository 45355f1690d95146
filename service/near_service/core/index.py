"""Inner-product top-K search over L2-normalised vectors (cosine similarity).

- ``flat`` (default, exact): blocked numpy matmul + argpartition on CPU; on CUDA a chunked torch matmul + topk,
  which runs on Hopper (sm_90) and for any K (GPU FAISS caps K at 2048).
- ``ivf`` / ``hnsw`` (opt-in, approximate): FAISS IVFFlat / HNSWFlat; ``recall_at_k`` measures them
  against exact search on a sample of queries.

Guarantees: no ``-1`` and no out-of-range index ever leaves this module (rows an approximate index
could not fill are searched exactly), rows are sorted by score and ties go to the lower index.
Duplicate texts share one vector; the index holds each once and expands hits to every copy, so
copies of one text always come out together, lowest index first.

>>> idx = VectorIndex(np.eye(3, dtype=np.float32))
>>> idx.search(np.eye(3, dtype=np.float32)[:1], 2)[1]
array([[0, 1]])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from near_service.core.errors import MaxKError

log = logging.getLogger(__name__)

IndexKind = Literal["flat", "ivf", "hnsw"]


def first_occurrence(texts: Sequence[str]) -> np.ndarray:
    """For each text, the index of its first copy in ``texts``."""
    seen: dict[str, int] = {}
    return np.fromiter((seen.setdefault(t, i) for i, t in enumerate(texts)), dtype=np.int64, count=len(texts))


def sort_rows(scores: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by score descending, ties by index ascending.

    One integer sort per row instead of a lexsort (~7x faster): each (score, index) pair becomes a
    uint64 whose high half orders float32 scores descending and whose low half is the index.
    """
    scores = np.asarray(scores, dtype=np.float32) + np.float32(0.0)  # -0.0 -> +0.0, as lexsort sees them
    bits = scores.view(np.uint32).astype(np.uint64)
    ascending = np.where(bits >> 31 == 1, ~bits & 0xFFFFFFFF, bits | 0x80000000)
    key = ((0xFFFFFFFF - ascending) << 32) | np.asarray(indices).astype(np.uint64)
    key.sort(axis=-1)
    ascending = 0xFFFFFFFF - (key >> 32)
    bits32 = np.where(ascending < 0x80000000, ~ascending & 0xFFFFFFFF, ascending & 0x7FFFFFFF)
    return bits32.astype(np.uint32).view(np.float32), (key & 0xFFFFFFFF).astype(np.int64)


def _ties_to_lower_index(s: np.ndarray, picked: np.ndarray, k: int) -> np.ndarray:
    """Make a top-k pick exact at the cut: among candidates tied with the k-th score, the lowest
    indices win. ``picked`` (rows x k) holds a valid top-k that may break such ties arbitrarily."""
    kth = np.take_along_axis(s, picked, 1).min(axis=1)
    tied_total = (s == kth[:, None]).sum(axis=1)
    tied_picked = (np.take_along_axis(s, picked, 1) == kth[:, None]).sum(axis=1)
    for r in np.flatnonzero(tied_total > tied_picked):  # rare: only rows with a tie across the cut
        above = np.flatnonzero(s[r] > kth[r])
        tied = np.flatnonzero(s[r] == kth[r])[: k - len(above)]
        picked[r] = np.concatenate([above, tied])
    return picked


def numpy_topk(
    base: np.ndarray, queries: np.ndarray, k: int, max_block_bytes: int = 256 << 20
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (unsorted within a row) by blocked matmul + argpartition: the CPU flat path.

    Ties at the cut go to the lower index (argpartition alone breaks them arbitrarily).

    >>> base = np.array([[1, 0], [0, 1], [0, 1], [0, 1], [0, 1]], dtype=np.float32)
    >>> sorted(numpy_topk(base, np.array([[0, 1]], dtype=np.float32), 2)[1][0].tolist())
    [1, 2]
    """
    n, q = base.shape[0], queries.shape[0]
    rows = max(1, min(q, max_block_bytes // max(4 * n, 1)))
    out_s = np.empty((q, k), dtype=np.float32)
    out_i = np.empty((q, k), dtype=np.int64)
    for r0 in range(0, q, rows):
        s = queries[r0 : r0 + rows] @ base.T
        if k < n:
            i = _ties_to_lower_index(s, np.argpartition(s, n - k, axis=1)[:, n - k :], k)
        else:
            i = np.broadcast_to(np.arange(n), s.shape)
        out_s[r0 : r0 + len(s)] = np.take_along_axis(s, i, 1)
        out_i[r0 : r0 + len(s)] = i
    return out_s, out_i


def torch_topk(
    base: Any, queries: np.ndarray, k: int, device: str = "cuda", max_block_bytes: int = 1 << 30
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-k by blocked matmul + topk in torch (the GPU path; also runs on CPU).

    ``base`` is a numpy array or a torch tensor already on ``device`` (VectorIndex keeps one there,
    so the pool is copied to the GPU once, not on every search). ``torch.topk`` breaks ties
    arbitrarily, so the third array marks the rows where a candidate tied with the k-th score was
    left out: the caller re-searches those rows with :func:`numpy_topk`, which sends ties to the
    lower index. (A left-out value is at most the k-th at the time it was dropped, so it ties with
    the final k-th only if the largest left-out value equals it.)
    """
    import torch

    n, q = base.shape[0], queries.shape[0]
    base_t = base if isinstance(base, torch.Tensor) else torch.from_numpy(base).to(device)
    rows_per_block = max(1, min(q, max_block_bytes // max(4 * n, 1)))
    base_block = n if 4 * n * rows_per_block <= max_block_bytes else max(k, max_block_bytes // (4 * rows_per_block))
    out_s = np.empty((q, k), dtype=np.float32)
    out_i = np.empty((q, k), dtype=np.int64)
    out_tied = np.zeros(q, dtype=bool)
    with torch.inference_mode():
        for r0 in range(0, q, rows_per_block):
            qt = torch.from_numpy(queries[r0 : r0 + rows_per_block]).to(device)
            best_s = best_i = None
            dropped = torch.full((len(qt),), -torch.inf, device=qt.device, dtype=torch.float32)
            for c0 in range(0, n, base_block):
                s = qt @ base_t[c0 : c0 + base_block].T
                kk = min(k + 1, s.shape[1])
                vs, vi = torch.topk(s, kk, dim=1)
                if kk > k:  # the best value this block leaves out
                    dropped = torch.maximum(dropped, vs[:, k].float())
                    vs, vi = vs[:, :k], vi[:, :k]
                vi = vi + c0
                if best_s is not None and best_i is not None:
                    both_s, both_i = torch.cat([best_s, vs], 1), torch.cat([best_i, vi], 1)
                    m = min(k + 1, both_s.shape[1])
                    vs, pos = torch.topk(both_s, m, dim=1)
                    vi = torch.gather(both_i, 1, pos)
                    if m > k:
                        dropped = torch.maximum(dropped, vs[:, k].float())
                        vs, vi = vs[:, :k], vi[:, :k]
                best_s, best_i = vs, vi
            assert best_s is not None and best_i is not None
            out_s[r0 : r0 + len(qt)] = best_s.float().cpu().numpy()
            out_i[r0 : r0 + len(qt)] = best_i.cpu().numpy()
            out_tied[r0 : r0 + len(qt)] = (dropped >= best_s[:, -1].float()).cpu().numpy()
    return out_s, out_i, out_tied


class VectorIndex:
    """The candidate pool's vectors, searchable by inner product."""

    def __init__(
        self,
        vectors: np.ndarray,
        kind: IndexKind = "flat",
        device: str = "cpu",
        first_of: np.ndarray | None = None,
        ivf_nprobe: int = 32,
        hnsw_m: int = 32,
    ) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) == 0:
            raise ValueError("VectorIndex needs a non-empty 2-D array")
        self.size, self.dim = vectors.shape
        self.kind, self.device = kind, device
        first_of = np.arange(self.size) if first_of is None else np.asarray(first_of, dtype=np.int64)
        self.unique_rows = np.flatnonzero(first_of == np.arange(self.size))
        self.has_duplicates = len(self.unique_rows) < self.size
        if self.has_duplicates:
            # members of each group, grouped by first copy (ascending), each group ascending
            slot_of_first = np.full(self.size, -1, dtype=np.int64)
            slot_of_first[self.unique_rows] = np.arange(len(self.unique_rows))
            slot = slot_of_first[first_of]
            self._members = np.argsort(slot, kind="stable")
            self._group_size = np.bincount(slot, minlength=len(self.unique_rows))
            self._group_start = np.concatenate([[0], np.cumsum(self._group_size)[:-1]])
        self.vectors = vectors[self.unique_rows] if self.has_duplicates else vectors
        self._faiss: Any = None
        self._device_vectors: Any = None  # torch copy of ``vectors`` on a non-CPU device, made on first search
        self._ivf_nprobe, self._hnsw_m = ivf_nprobe, hnsw_m
        if kind in ("ivf", "hnsw"):
            self._faiss = self._build_approx(kind)
        elif kind != "flat":
            raise ValueError(f"unknown index type {kind!r}")

    def _build_approx(self, kind: str) -> Any:
        import faiss

        n = len(self.vectors)
        if kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(self.dim, self._hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = 80
            hnsw.add(self.vectors)
            return hnsw
        nlist = int(max(1, min(4 * np.sqrt(n), n // 39)))
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample = self.vectors if n <= nlist * 256 else self.vectors[rng.choice(n, nlist * 256, replace=False)]
        index.train(sample)
        index.add(self.vectors)
        index.nprobe = min(nlist, self._ivf_nprobe)
        return index

    def check_k(self, k: int) -> None:
        if k < 1:
            raise MaxKError(f"max_k must be at least 1, got {k}")
        if k > self.size:
            raise MaxKError(f"max_k {k} is larger than the candidate pool ({self.size} candidates)")

    def _exact_unique(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.device == "cpu":  # numpy beats FAISS's heap top-k at large k (bench/service.py)
            return numpy_topk(self.vectors, queries, k)
        if self._device_vectors is None:
            import torch

            self._device_vectors = torch.from_numpy(self.vectors).to(self.device)
        s, i, tied = torch_topk(self._device_vectors, queries, k, self.device)
        if tied.any():  # a tie across the cut: settle it as the CPU path does (lower index wins)
            rows = np.flatnonzero(tied)
            s[rows], i[rows] = numpy_topk(self.vectors, queries[rows], k)
        return s, i

    def _search_unique(self, queries: np.ndarray, k: int, exact: bool) -> tuple[np.ndarray, np.ndarray]:
        if exact or self.kind == "flat":
            return self._exact_unique(queries, k)
        if self.kind == "hnsw":
            self._faiss.hnsw.efSearch = max(2 * k, 64)
        s, i = self._faiss.search(queries, k)
        bad = np.flatnonzero((i < 0).any(axis=1))
        if len(bad):  # approximate index could not fill these rows: search them exactly
            log.info("%d of %d rows were short in the %s index; searched exactly", len(bad), len(i), self.kind)
            fs, fi = self._exact_unique(queries[bad], k)
            s[bad], i[bad] = fs, fi
        return s, i

    def search(self, queries: np.ndarray, k: int, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores float32, indices int64), each row nearest first."""
        self.check_k(k)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (n, {self.dim}), got {queries.shape}")
        if len(queries) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        ku = min(k, len(self.vectors))
        s, u = self._search_unique(queries, ku, exact)
        s, u = sort_rows(s.astype(np.float32, copy=False), u.astype(np.int64, copy=False))
        if not self.has_duplicates:
            return s, u
        sizes = self._group_size[u]
        flat_u = np.repeat(u.ravel(), sizes.ravel())
        flat_s = np.repeat(s.ravel(), sizes.ravel())
        group_offsets = np.cumsum(sizes.ravel()) - sizes.ravel()
        pos = np.arange(len(flat_u)) - np.repeat(group_offsets, sizes.ravel())
        flat_i = self._members[self._group_start[flat_u] + pos]
        row_start = np.concatenate([[0], np.cumsum(sizes.sum(axis=1))[:-1]])
        take = row_start[:, None] + np.arange(k)[None, :]
        return sort_rows(flat_s[take], flat_i[take])


def recall_at_k(index: VectorIndex, queries: np.ndarray, k: int, sample: int = 64, seed: int = 0) -> float:
    """Mean overlap of ``index``'s top-k with exact top-k, over up to ``sample`` queries."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(queries), min(sample, len(queries)), replace=False)
    _, approx = index.search(queries[rows], k)
    _, exact = index.search(queries[rows], k, exact=True)
    hits = [len(np.intersect1d(a, e, assume_unique=True)) for a, e in zip(approx, exact, strict=True)]
    return float(np.mean(hits) / k)
