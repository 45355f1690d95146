"""Pool-side density statistics for the ``density`` and ``importance`` strategies, computed once per pool.

For every pool row c, from an exact blocked self-search (c itself left out):

- ``prefix[c, j]`` = log mean over c's ``grid[j]`` nearest pool rows of exp(s(p, c) / h), at the
  power-of-two grid ``grid`` = 1, 2, 4, ... up to K (K = 2048, or the pool size - 1 when smaller;
  K itself closes the grid when it is not a power of two): 12 floats a row at K = 2048;
- ``log_pool[c]`` = log mean over every other pool row of exp(s(p, c) / h) (the full-pool KDE);
- ``h`` = the kernel bandwidth: median over pool rows of (1 - s to the 10th nearest pool row).

Duplicates: only the row itself is left out; other copies of the same text count as neighbours
(they are pool mass: a text copied ten times is ten times as common in the pool, which is what a
density ratio should see). A pool of one row has K = 0: every statistic is 0.

The search is the n^2 matmul of :mod:`near_service.core.topk` (numpy blocks on CPU, torch on CUDA),
keeping per row only the top-(K+1) *values* and the row's log-sum-exp from the same score block, so
one pass gives both. ``h`` is set first, from the 10th-neighbour similarity of up to 16384 rows
(all rows below that size; a fixed, evenly spaced sample above it, which moves the median by far
less than the kernel cares about, at 1/60 of the cost at 1M rows).

>>> stats = compute_pool_stats(np.eye(4, dtype=np.float32))
>>> stats.k, stats.grid.tolist()
(3, [1, 2, 3])
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["KBAND", "K_MAX", "STATS_VERSION", "PoolStats", "bandwidth", "compute_pool_stats", "kp_grid"]

log = logging.getLogger(__name__)

STATS_VERSION = 1
K_MAX = 2048  # stored neighbourhood: budgets up to K_MAX / 2 get their exact reach-2 neighbourhood
KBAND = 10  # bandwidth neighbour (CSLS's neighbourhood size)
H_SAMPLE = 16384
H_FLOOR = 1e-3  # a pool of near-duplicates has median distance ~0; the kernel needs a positive width


@dataclass(frozen=True)
class PoolStats:
    """Per-row prefix log-mean-exp of sorted neighbour kernels (``prefix``, float32 (n, len(grid))),
    the full-pool log KDE (``log_pool``, float32 (n,)) and the bandwidth ``h``."""

    h: float
    grid: np.ndarray  # int64 neighbourhood sizes, ascending; grid[-1] == k
    prefix: np.ndarray
    log_pool: np.ndarray
    version: int = STATS_VERSION

    @property
    def k(self) -> int:
        return int(self.grid[-1]) if len(self.grid) else 0

    @property
    def size(self) -> int:
        return int(self.log_pool.shape[0])

    def lp(self, kp: int) -> tuple[np.ndarray, int]:
        """Each row's neighbourhood log KDE at the grid size nearest ``kp`` (in log scale), and that size."""
        if self.k == 0:
            return np.zeros(self.size, dtype=np.float32), 0
        kp = int(np.clip(kp, 1, self.k))
        j = int(np.argmin(np.abs(np.log2(self.grid) - np.log2(kp))))
        return self.prefix[:, j], int(self.grid[j])


def kp_grid(k: int) -> np.ndarray:
    """Powers of two up to ``k``, and ``k`` itself.

    >>> kp_grid(2048).tolist()[-3:], kp_grid(5).tolist()
    ([512, 1024, 2048], [1, 2, 4, 5])
    """
    if k < 1:
        return np.zeros(0, dtype=np.int64)
    g = [1 << i for i in range(int(np.log2(k)) + 1)]
    return np.array(g if g[-1] == k else [*g, k], dtype=np.int64)


def _blocks_numpy(
    vectors: np.ndarray, rows: np.ndarray, k: int, h: float | None, block_bytes: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """For ``rows``: their top-k other-row similarities (sorted, best first) and, given ``h``, their
    full-pool log mean exp(s/h) (self left out). Peak memory: ~3x ``block_bytes`` (the float32 score
    block and one float64 copy)."""
    n = len(vectors)
    step = max(1, block_bytes // max(4 * n, 1))
    top = np.empty((len(rows), k), dtype=np.float32)
    lse = np.empty(len(rows), dtype=np.float64) if h is not None else None
    for r0 in range(0, len(rows), step):
        r = rows[r0 : r0 + step]
        s = np.asarray(vectors[r], dtype=np.float32) @ np.asarray(vectors).T
        s[np.arange(len(r)), r] = -np.inf  # self: exact by index (copies of the row stay)
        if lse is not None and h is not None:  # in place: one float64 copy of the block at a time
            a = s.astype(np.float64)
            a /= h
            mx = a.max(axis=1, keepdims=True)
            a -= mx
            np.exp(a, out=a)
            lse[r0 : r0 + len(r)] = mx[:, 0] + np.log(a.sum(axis=1) / (n - 1))
            del a
        s.partition(n - k, axis=1)  # in place
        top[r0 : r0 + len(r)] = -np.sort(-s[:, n - k :], axis=1)
    return top, lse


def _blocks_torch(
    vectors: np.ndarray, rows: np.ndarray, k: int, h: float | None, block_bytes: int, device: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`_blocks_numpy` in torch (the CUDA path): one matmul, ``topk`` and ``logsumexp`` per block."""
    import torch

    from near_service.core.topk import torch_blocks

    n = len(vectors)
    step, _ = torch_blocks(n, len(rows), k + 1, block_bytes)
    base: Any = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(device)
    top = np.empty((len(rows), k), dtype=np.float32)
    lse = np.empty(len(rows), dtype=np.float64) if h is not None else None
    with torch.inference_mode():
        for r0 in range(0, len(rows), step):
            r = rows[r0 : r0 + step]
            rt = torch.from_numpy(r).to(device)
            s = base[rt] @ base.T
            ar = torch.arange(len(r), device=device)
            if lse is not None and h is not None:
                a = s.double() / h
                a[ar, rt] = -torch.inf
                lse[r0 : r0 + len(r)] = (torch.logsumexp(a, dim=1) - np.log(n - 1)).cpu().numpy()
            s[ar, rt] = -torch.inf
            top[r0 : r0 + len(r)] = torch.topk(s, k, dim=1).values.float().cpu().numpy()
    del base
    if device.startswith("cuda"):  # a temporary copy of the pool: hand its memory back before serving
        torch.cuda.empty_cache()
    return top, lse


def bandwidth(vectors: np.ndarray, device: str = "cpu", block_bytes: int = 256 << 20) -> float:
    """Median over pool rows (up to 16384, evenly spaced) of 1 - s to the 10th nearest other row."""
    n = len(vectors)
    if n < 2:
        return 1.0
    kb = min(KBAND, n - 1)
    rows = np.unique(np.linspace(0, n - 1, min(n, H_SAMPLE)).astype(np.int64))
    if device.startswith("cuda"):
        top, _ = _blocks_torch(vectors, rows, kb, None, block_bytes, device)
    else:
        top, _ = _blocks_numpy(vectors, rows, kb, None, block_bytes)
    return max(float(np.median(1.0 - top[:, kb - 1].astype(np.float64))), H_FLOOR)


def compute_pool_stats(
    vectors: np.ndarray, device: str = "cpu", k_max: int = K_MAX, block_bytes: int = 128 << 20
) -> PoolStats:
    """:class:`PoolStats` of L2-normalised pool ``vectors`` by an exact blocked self-search.

    Cost: n^2 d multiply-adds plus a top-(K+1) selection and one exp per pair; memory: ~3x
    ``block_bytes`` on the CPU (a float32 score block and its float64 copy) plus 13 floats a row.
    ``device`` "cuda" runs the blocks in torch.
    """
    t0 = time.perf_counter()
    n = len(vectors)
    k = min(k_max, n - 1)
    grid = kp_grid(k)
    if k < 1:
        z = np.zeros(n, dtype=np.float32)
        return PoolStats(1.0, grid, np.zeros((n, 0), dtype=np.float32), z)
    h = bandwidth(vectors, device, block_bytes)
    rows = np.arange(n, dtype=np.int64)
    if device.startswith("cuda"):
        top, lse = _blocks_torch(vectors, rows, k, h, block_bytes, device)
    else:
        top, lse = _blocks_numpy(vectors, rows, k, h, block_bytes)
    assert lse is not None
    a = top.astype(np.float64) / h
    mx = a[:, :1]  # rows are sorted: the first is the largest
    csum = np.cumsum(np.exp(a - mx), axis=1)[:, grid - 1]
    prefix = (mx + np.log(csum / grid[None, :])).astype(np.float32)
    log.info("pool density statistics: %d rows, K=%d, h=%.4f in %.2fs", n, k, h, time.perf_counter() - t0)
    return PoolStats(h, grid, prefix, lse.astype(np.float32))
