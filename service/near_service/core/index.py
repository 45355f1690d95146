"""Inner-product top-K search over L2-normalised vectors (cosine similarity).

- ``flat`` (default, exact): blocked numpy matmul + argpartition on CPU; on CUDA a chunked torch matmul + topk,
  which runs on any CUDA GPU torch supports and for any K (GPU FAISS caps K at 2048, 16384 with cuVS).
- ``ivf`` / ``hnsw`` (opt-in, approximate): FAISS IVFFlat / HNSWFlat; ``recall_at_k`` measures them
  against exact search on a sample of queries. ``ivf`` on CUDA searches on the GPU where the faiss-gpu
  extra has kernels for it and K is within GPU FAISS's limit (:func:`near_service.core.gpu.choose_ivf_engine`),
  else with faiss-cpu, and logs why.

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
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from near_service.core.errors import MaxKError
from near_service.core.settings import IndexKind, Storage
from near_service.core.topk import numpy_topk, sort_rows, torch_blocks, torch_topk, torch_topk_dropped

__all__ = [
    "IndexKind",
    "Storage",
    "VectorIndex",
    "first_occurrence",
    "numpy_topk",
    "recall_at_k",
    "sort_rows",
    "torch_blocks",
    "torch_topk",
    "torch_topk_dropped",
]

log = logging.getLogger(__name__)


def first_occurrence(texts: Sequence[str]) -> np.ndarray:
    """For each text, the index of its first copy in ``texts``."""
    seen: dict[str, int] = {}
    return np.fromiter((seen.setdefault(t, i) for i, t in enumerate(texts)), dtype=np.int64, count=len(texts))


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
        self._faiss_gpu: Any = None  # a GPU clone of the ivf index, where faiss-gpu runs on this GPU
        self._gpu_capability: tuple[int, int] | None = None
        self._cuvs = False  # the GPU clone is on faiss's cuVS path (k up to 16384, else 2048)
        self._device_vectors: Any = None  # torch copy of ``vectors`` on a non-CPU device: see to_device
        self.storage: Storage = "float32"  # of the device copy
        self.block_bytes = 1 << 30  # one score block of a device search; the memory plan may lower it
        self._device_lock = threading.Lock()  # one device copy, one device search at a time
        self._max_norm = 1.0
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
        if self.device != "cpu":
            self._faiss_gpu = self._ivf_to_gpu(index)
        return index

    def _ivf_to_gpu(self, index: Any) -> Any:
        from near_service.core import gpu

        facts = gpu.gpu_facts()
        self._gpu_capability = facts.capability if facts else None
        self._cuvs = gpu.faiss_has_cuvs()
        engine, why = gpu.choose_ivf_engine(self._gpu_capability, 1, gpu.faiss_has_gpu(), self._cuvs, index.nprobe)
        log.info("ivf index on %s: %s", engine, why)
        if engine != "faiss-gpu":
            return None
        self._faiss_res, gpu_index, self._cuvs = gpu.ivf_to_gpu(index, self._cuvs)  # res outlives the index
        return gpu_index

    def to_device(self, storage: Storage | None = None) -> int:
        """Copy the pool to the search device once (under a lock: concurrent first searches make one
        copy), in float32 or float16 (:mod:`near_service.core.rescore` keeps answers exact); the
        copy's bytes on the device (0 where search runs on the CPU)."""
        if self.device == "cpu" or self.kind != "flat":
            return 0
        import torch

        with self._device_lock:
            if self._device_vectors is None:
                self.storage = storage or self.storage
                dtype = torch.float16 if self.storage == "float16" else torch.float32
                if self.storage == "float16":
                    from near_service.core.rescore import FP16_MAX

                    if float(np.abs(self.vectors).max()) > FP16_MAX:
                        raise ValueError("the pool's vectors overflow float16; use float32 storage")
                    self._max_norm = float(np.sqrt((self.vectors.astype(np.float64) ** 2).sum(axis=1).max()))
                    if self.device.startswith("cuda"):  # keep float32 sums in cuBLAS (the error bound needs it)
                        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
                dev = torch.empty(self.vectors.shape, dtype=dtype, device=self.device)
                step = max(1, (64 << 20) // (4 * self.dim))  # host-side chunks: no full-size temporary
                for r0 in range(0, len(self.vectors), step):
                    dev[r0 : r0 + step].copy_(torch.from_numpy(np.asarray(self.vectors[r0 : r0 + step])).to(dtype))
                self._device_vectors = dev
            return int(self._device_vectors.numel() * self._device_vectors.element_size())

    def warm_up(self, k: int, queries: int) -> None:
        """Search ``queries`` random unit rows at ``k``: moves the pool to the device and allocates a
        search's workspace (torch's caching allocator keeps it) before the service reports ready."""
        rng = np.random.default_rng(0)
        q = rng.standard_normal((max(1, queries), self.dim)).astype(np.float32)
        self.search(q / np.linalg.norm(q, axis=1, keepdims=True), max(1, min(k, self.size)))

    def check_k(self, k: int) -> None:
        if k < 1:
            raise MaxKError(f"max_k must be at least 1, got {k}")
        if k > self.size:
            raise MaxKError(f"max_k {k} is larger than the candidate pool ({self.size} candidates)")

    def _exact_unique(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        # numpy beats FAISS's heap top-k at large k (bench/service.py); approximate indexes keep no device copy
        if self.device == "cpu" or self.kind != "flat":
            return numpy_topk(self.vectors, queries, k)
        self.to_device()
        with self._device_lock:
            if self.storage == "float16":
                from near_service.core.rescore import half_topk

                base16, b = self._device_vectors, self.block_bytes
                return half_topk(base16, self.vectors, queries, k, self.device, b, self._max_norm)
            s, i, tied = torch_topk(self._device_vectors, queries, k, self.device, self.block_bytes)
        if tied.any():  # a tie across the cut: settle it as the CPU path does (lower index wins)
            rows = np.flatnonzero(tied)
            s[rows], i[rows] = numpy_topk(self.vectors, queries[rows], k)
        return s, i

    def _search_unique(self, queries: np.ndarray, k: int, exact: bool) -> tuple[np.ndarray, np.ndarray]:
        if exact or self.kind == "flat":
            return self._exact_unique(queries, k)
        if self.kind == "hnsw":
            self._faiss.hnsw.efSearch = max(2 * k, 64)
        index = self._faiss
        if self._faiss_gpu is not None:
            from near_service.core.gpu import choose_ivf_engine

            # GPU FAISS aborts the process past its k limit: such a search goes to faiss-cpu instead
            engine, why = choose_ivf_engine(self._gpu_capability, k, True, self._cuvs, self._faiss.nprobe)
            if engine == "faiss-gpu":
                index = self._faiss_gpu
            else:
                log.info("ivf search on faiss-cpu: %s", why)
        s, i = index.search(queries, k)
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
