"""Exact top-K kernels: blocked numpy (CPU) and torch (GPU, or a torch CPU device) matmul + top-k.

Every kernel sends ties at the K cut to the lower index, or says which rows it could not settle
(``torch.topk`` breaks ties arbitrarily) so the caller settles them on the CPU.
:class:`~near_service.core.index.VectorIndex` and :mod:`~near_service.core.rescore` build on these.
"""

from __future__ import annotations

from typing import Any

import numpy as np


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
    base: np.ndarray,
    queries: np.ndarray,
    k: int,
    max_block_bytes: int = 256 << 20,
    bound_head: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (unsorted within a row) by blocked matmul + selection: the CPU flat path.

    Ties at the cut go to the lower index (argpartition alone breaks them arbitrarily). Where the
    pool is much larger than k, a row's k-th best score in its first columns bounds its true k-th
    from below, so one vectorised pass keeps only the scores at or above that bound and the
    selection runs on those few (:func:`_select_above_bound`); a block where that leaves too many
    (heavy ties) takes the full argpartition instead.

    >>> base = np.array([[1, 0], [0, 1], [0, 1], [0, 1], [0, 1]], dtype=np.float32)
    >>> sorted(numpy_topk(base, np.array([[0, 1]], dtype=np.float32), 2)[1][0].tolist())
    [1, 2]
    """
    n, q = base.shape[0], queries.shape[0]
    rows = max(1, min(q, max_block_bytes // max(4 * n, 1)))
    out_s = np.empty((q, k), dtype=np.float32)
    out_i = np.empty((q, k), dtype=np.int64)
    head = max(4 * k, BOUND_HEAD_ROWS if bound_head is None else bound_head)
    for r0 in range(0, q, rows):
        s = queries[r0 : r0 + rows] @ base.T
        picked = _select_above_bound(s, k, head) if n >= 2 * head else None
        if picked is not None:
            i = picked
        elif k < n:
            i = _ties_to_lower_index(s, np.argpartition(s, n - k, axis=1)[:, n - k :], k)
        else:
            i = np.broadcast_to(np.arange(n), s.shape)
        out_s[r0 : r0 + len(s)] = np.take_along_axis(s, i, 1)
        out_i[r0 : r0 + len(s)] = i
    return out_s, out_i


#: Columns whose k-th best score bounds a row's k-th from below (at least 4 k of them).
BOUND_HEAD_ROWS = 32768


def _select_above_bound(s: np.ndarray, k: int, head: int) -> np.ndarray | None:
    """The exact top-k of each row of ``s`` (ties to the lower index) among the scores at or above
    the row's k-th best in its first ``head`` columns, or None when those are too many to be cheap.

    Every score of the true top-k is at or above that bound (the k-th best of a part is at most
    the k-th best of the whole), and so is every score tied with the true k-th: the candidates hold
    the whole answer, and the ties among them are settled by index as :func:`_ties_to_lower_index` does.
    """
    rows, n = s.shape
    bound = np.partition(s[:, :head], head - k, axis=1)[:, head - k]
    keep = s >= bound[:, None]
    counts = keep.sum(axis=1)
    if int(counts.sum()) > rows * max(16 * k, n // 16):  # heavy ties: the plain path is as cheap
        return None
    r_idx, c_idx = np.nonzero(keep)  # row-major: each row's columns ascending
    vals = s[r_idx, c_idx]
    out = np.empty((rows, k), dtype=np.int64)
    ends = np.cumsum(counts)
    for r in range(rows):
        lo, hi = int(ends[r] - counts[r]), int(ends[r])
        v, c = vals[lo:hi], c_idx[lo:hi]
        kth = np.partition(v, len(v) - k)[len(v) - k]
        above = c[v > kth]
        tied = c[v == kth][: k - len(above)]  # ascending: the lowest indices win the cut
        out[r] = np.concatenate([above, tied])
    return out


def torch_blocks(n: int, q: int, k: int, max_block_bytes: int, elem: int = 4) -> tuple[int, int]:
    """Query rows and pool rows per step of :func:`torch_topk`: one score block stays under
    ``max_block_bytes`` (``elem`` bytes a score), whole pool rows where a query row fits."""
    rows = max(1, min(q, max_block_bytes // max(elem * n, 1)))
    base_block = n if elem * n * rows <= max_block_bytes else max(k, max_block_bytes // (elem * rows))
    return rows, base_block


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
    s, i, dropped = torch_topk_dropped(base, queries, k, device, max_block_bytes)
    return s, i, dropped >= s[:, -1]


def torch_topk_dropped(
    base: Any, queries: np.ndarray, k: int, device: str = "cuda", max_block_bytes: int = 1 << 30
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`torch_topk`, with each row's best left-out score (``-inf`` where none) as the third array.

    A float16 ``base`` is searched in float16 (queries are cast to it); scores come back as float32.
    """
    import torch

    n, q = base.shape[0], queries.shape[0]
    base_t = base if isinstance(base, torch.Tensor) else torch.from_numpy(base).to(device)
    rows_per_block, base_block = torch_blocks(n, q, k, max_block_bytes, base_t.element_size())
    out_s = np.empty((q, k), dtype=np.float32)
    out_i = np.empty((q, k), dtype=np.int64)
    out_dropped = np.empty(q, dtype=np.float32)
    with torch.inference_mode():
        for r0 in range(0, q, rows_per_block):
            qt = torch.from_numpy(queries[r0 : r0 + rows_per_block]).to(device).to(base_t.dtype)
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
            out_dropped[r0 : r0 + len(qt)] = dropped.cpu().numpy()
    return out_s, out_i, out_dropped
