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

Two methods (``compute_pool_stats(method=...)``; "auto" = exact up to :data:`EXACT_ROWS_CPU` rows on a
CPU, :data:`EXACT_ROWS_CUDA` on CUDA, approx above):

**exact**: the n^2 matmul of :mod:`near_service.core.topk` (numpy blocks on CPU, torch on CUDA),
keeping per row only the top-(K+1) *values* and the row's log-sum-exp from the same score block, so
one pass gives both. ``h`` is set first, from the 10th-neighbour similarity of up to 16384 rows
(all rows below that size; a fixed, evenly spaced sample above it, which moves the median by far
less than the kernel cares about, at 1/60 of the cost at 1M rows). Hours at 1M rows on 2 cores.

**approx** (CPU, linear in n): spherical k-means (FAISS) cuts the pool into cells of ~1,024 rows
(:data:`CLUSTER_ROWS`); each cell's rows are searched *exactly* (one matmul block) against the rows
of its own and its nearest cells by centroid, ~8 cells (:data:`PROBE`, ~8,192 rows: 4x K), and
against a fixed uniform sample of 8,192 pool rows (:data:`SAMPLE_ROWS`; half the pool when that is
smaller) minus the sample rows in those cells. Each outside sample row stands for
w = (rows outside the cells) / (sample rows outside) pool rows. Then, per row:

- ``prefix``: the probed rows (weight 1) and the outside sample rows (weight w) merged by
  similarity; the kernel sum over the first g units of weight is the estimate for the g nearest
  (the k-th neighbour in a sample of m rows stands for the (k n / m)-th in the pool). Where the g
  nearest lie in the probed cells, which is the design point (8,192 candidates for K = 2,048), this
  is exact; the sample only corrects the rows whose neighbourhoods leave them.
- ``log_pool``: probed rows exactly + w x the outside sample's kernel sum (the uniform-sample KDE
  for the rest of the pool).
- ``h``: exact 10th neighbours of 2^31 / n evenly spaced rows (1,024 to 16,384; 2,147 at 1M).

Error (bench/pool_stats_cost.py, docs/benchmarks.md "Approximate density statistics against exact"):
on a 100k real pool, Spearman against exact 0.9999 for ``log_pool`` and >= 0.99 for ``prefix`` from
128 neighbours up (0.9994 at 2,048; 0.93-0.97 for the smallest, a row's nearest neighbours in an
unprobed cell); ``importance`` selects the same rows (overlap >= 0.98), ``density`` 0.88-0.98 (its cut
is dense with near-ties); with the sample being the whole pool the method is exact. Cost at 1M x 384: ~n x 16k x d
multiply-adds (~13 TFLOP), minutes on 2 cores (docs/scaling.md); memory beyond the vectors:
``threads`` x ~2 score blocks of 64 MiB + ~72 bytes a row. ``on_progress`` / ``should_stop`` are
called between blocks (cells) by both methods.

>>> stats = compute_pool_stats(np.eye(4, dtype=np.float32))
>>> stats.k, stats.grid.tolist()
(3, [1, 2, 3])
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from near_service.core.errors import InputError

__all__ = [
    "EXACT_ROWS_CPU",
    "EXACT_ROWS_CUDA",
    "KBAND",
    "K_MAX",
    "METHODS",
    "STATS_VERSION",
    "PoolStats",
    "StatsStopped",
    "bandwidth",
    "compute_pool_stats",
    "kp_grid",
    "resolve_method",
]

log = logging.getLogger(__name__)

Method = Literal["auto", "exact", "approx"]
METHODS: tuple[str, ...] = ("auto", "exact", "approx")
STATS_VERSION = 2  # 2: the file records the method ("exact" / "approx"); version 1 files were all exact
EXACT_ROWS_CPU = 200_000  # method="auto" runs the exact n^2 self-search up to this many rows on a CPU ...
EXACT_ROWS_CUDA = 2_000_000  # ... and up to this many on CUDA (n^2: ~1 min at 1M on one H100-class GPU)
CLUSTER_ROWS = 1024  # approx: mean rows per k-means cell
PROBE = 8  # approx: each row is searched exactly against ~PROBE cells' rows (its own cell and the nearest)
SAMPLE_ROWS = 8192  # approx: the uniform sample that stands for the rest of the pool
APPROX_SEED = 0
K_MAX = 2048  # stored neighbourhood: budgets up to K_MAX / 2 get their exact reach-2 neighbourhood
KBAND = 10  # bandwidth neighbour (CSLS's neighbourhood size)
H_SAMPLE = 16384
H_SAMPLE_MIN = 1024  # approx: the bandwidth's rows never fewer than this
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
    method: str = "exact"  # how they were made: "exact" (the full self-search) or "approx"

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


class StatsStopped(RuntimeError):
    """The statistics' computation was stopped by its ``should_stop`` (e.g. the pool was deleted)."""


Tick = Callable[[int], None]  # called after each block with the rows it finished; may raise StatsStopped


def _blocks_numpy(
    vectors: np.ndarray, rows: np.ndarray, k: int, h: float | None, block_bytes: int, tick: Tick | None = None
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
        if tick is not None:
            tick(len(r))
    return top, lse


def _blocks_torch(
    vectors: np.ndarray,
    rows: np.ndarray,
    k: int,
    h: float | None,
    block_bytes: int,
    device: str,
    tick: Tick | None = None,
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
            if tick is not None:
                tick(len(r))
    del base
    if device.startswith("cuda"):  # a temporary copy of the pool: hand its memory back before serving
        torch.cuda.empty_cache()
    return top, lse


def bandwidth(vectors: np.ndarray, device: str = "cpu", block_bytes: int = 256 << 20, sample: int = H_SAMPLE) -> float:
    """Median over pool rows (``sample`` of them, evenly spaced; all rows below that) of 1 - s to the
    10th nearest other row."""
    n = len(vectors)
    if n < 2:
        return 1.0
    kb = min(KBAND, n - 1)
    rows = np.unique(np.linspace(0, n - 1, min(n, sample)).astype(np.int64))
    if device.startswith("cuda"):
        top, _ = _blocks_torch(vectors, rows, kb, None, block_bytes, device)
    else:
        top, _ = _blocks_numpy(vectors, rows, kb, None, block_bytes)
    return max(float(np.median(1.0 - top[:, kb - 1].astype(np.float64))), H_FLOOR)


def resolve_method(method: str, n: int, device: str = "cpu") -> str:
    """``"exact"`` or ``"approx"``: what ``method`` means for a pool of ``n`` rows on ``device``.

    >>> resolve_method("auto", 1000), resolve_method("auto", 10**6), resolve_method("auto", 10**6, "cuda")
    ('exact', 'approx', 'exact')
    """
    if method not in METHODS:
        raise InputError(f"unknown density statistics method {method!r}: use one of {', '.join(METHODS)}")
    if method != "auto":
        return method
    return "exact" if n <= (EXACT_ROWS_CUDA if device.startswith("cuda") else EXACT_ROWS_CPU) else "approx"


def _threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


@dataclass(frozen=True)
class _Cells:
    """The approximate method's partition of the pool: k-means cells, each cell's probe list, a sample."""

    order: np.ndarray  # pool rows grouped by cell
    starts: np.ndarray  # cell a's rows: order[starts[a] : starts[a + 1]]
    probes: list[np.ndarray]  # per cell: the cells searched exactly (own cell first)
    sample: np.ndarray  # uniform sample of pool rows, ascending
    sample_cell: np.ndarray  # the cell of each sample row

    def cand(self, a: int) -> np.ndarray:
        return np.concatenate([self.order[self.starts[p] : self.starts[p + 1]] for p in self.probes[a]])

    def outside(self, a: int) -> np.ndarray:
        """The sample rows in none of cell a's probed cells."""
        return self.sample[~np.isin(self.sample_cell, self.probes[a])]


def _cells(vectors: np.ndarray, cluster_rows: int, probe: int, sample_rows: int, seed: int) -> _Cells:
    """Spherical k-means (FAISS) on a sample of up to 64 rows a cell, every row assigned to its nearest
    centroid, each cell's probe list (its nearest cells by centroid, until ~``probe`` cells' rows), and
    a uniform sample of ``sample_rows`` rows."""
    import faiss

    n, d = vectors.shape
    cells = max(1, min(n, round(n / cluster_rows)))
    rng = np.random.default_rng(seed)
    if cells > 1:
        train = np.ascontiguousarray(vectors[np.sort(rng.choice(n, min(n, 64 * cells), replace=False))], np.float32)
        km = faiss.Kmeans(
            d,
            cells,
            niter=10,
            spherical=True,
            seed=seed,
            verbose=False,
            min_points_per_centroid=1,
            max_points_per_centroid=64,
        )
        km.train(train)
        cent = np.asarray(km.centroids, dtype=np.float32).reshape(cells, d)
        labels = np.empty(n, dtype=np.int64)
        step = max(1, (64 << 20) // (4 * cells))
        for r0 in range(0, n, step):
            labels[r0 : r0 + step] = np.argmax(np.asarray(vectors[r0 : r0 + step], np.float32) @ cent.T, axis=1)
    else:
        cent = np.zeros((1, d), np.float32)
        labels = np.zeros(n, dtype=np.int64)
    sizes = np.bincount(labels, minlength=cells)
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    want = probe * n / cells
    near = min(cells, 8 * probe)  # candidate cells per cell, nearest centroids first
    probes: list[np.ndarray] = []
    step = max(1, (32 << 20) // (4 * cells))
    for a0 in range(0, cells, step):
        cc = cent[a0 : a0 + step] @ cent.T
        cc[np.arange(len(cc)), np.arange(a0, a0 + len(cc))] = np.inf  # own cell first
        top = (
            np.argpartition(-cc, near - 1, axis=1)[:, :near]
            if near < cells
            else np.tile(np.arange(cells), (len(cc), 1))
        )
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(cc, top, 1), axis=1, kind="stable"), 1)
        for row in top:
            keep = int(np.searchsorted(np.cumsum(sizes[row]), want)) + 1  # cells until ~want rows
            probes.append(row[:keep].astype(np.int64))
    sample = np.sort(rng.choice(n, min(n, sample_rows), replace=False)).astype(np.int64)
    return _Cells(order, starts, probes, sample, labels[sample])


def _scores(vectors: np.ndarray, rows: np.ndarray, other: np.ndarray) -> np.ndarray:
    if len(other) == 0:
        return np.zeros((len(rows), 0), dtype=np.float32)
    return np.asarray(vectors[rows], dtype=np.float32) @ np.asarray(vectors[other], dtype=np.float32).T


def _top_sorted(s: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` largest values, best first (``s`` is partitioned in place)."""
    if k == 0:
        return np.zeros((len(s), 0), dtype=np.float32)
    if k < s.shape[1]:
        s.partition(s.shape[1] - k, axis=1)
    return -np.sort(-s[:, s.shape[1] - k :], axis=1)


def _approx_cell(
    vectors: np.ndarray,
    cells: _Cells,
    a: int,
    k: int,
    grid: np.ndarray,
    h: float,
    block_bytes: int,
    prefix: np.ndarray,
    lse: np.ndarray,
    stop: threading.Event,
) -> int:
    """Fill ``prefix`` and ``lse`` for the rows of cell a; the rows done."""
    n = len(vectors)
    own = cells.order[cells.starts[a] : cells.starts[a + 1]]
    cand, out = cells.cand(a), cells.outside(a)
    w = (n - len(cand)) / len(out) if len(out) else 0.0  # rows each outside sample row stands for
    ka = min(k, len(cand) - 1)
    kb = min(len(out), math.ceil(k / w)) if w > 0 else 0
    step = max(1, block_bytes // (4 * (len(cand) + len(out))))
    xc = np.asarray(vectors[cand], dtype=np.float32)
    xo = np.asarray(vectors[out], dtype=np.float32)
    for r0 in range(0, len(own), step):
        if stop.is_set():
            return r0
        xr = np.asarray(vectors[own[r0 : r0 + step]], dtype=np.float32)
        m = len(xr)
        sa = xr @ xc.T
        sa[np.arange(m), np.arange(r0, r0 + m)] = -np.inf  # self: own cell's rows open the candidates
        sb = xr @ xo.T if len(xo) else np.zeros((m, 0), np.float32)
        ta, tb = _top_sorted(sa, ka), _top_sorted(sb, kb)
        mx = ta[:, 0] if kb == 0 else np.maximum(ta[:, 0], tb[:, 0])
        # the full-pool KDE: probed rows exactly, the rest from the sample (each stands for w rows)
        total = np.zeros(m, dtype=np.float64)
        for blk, weight in ((sa, 1.0), (sb, w)):
            if blk.shape[1]:
                blk -= mx[:, None]
                blk *= np.float32(1.0 / h)
                np.exp(blk, out=blk)
                total += weight * blk.sum(axis=1, dtype=np.float64)
        rows = own[r0 : r0 + m]
        base = mx.astype(np.float64) / h
        lse[rows] = base + np.log(total / (n - 1))
        prefix[rows] = base[:, None] + np.log(_weighted_prefix(ta, tb, w, mx, h, grid) / grid[None, :])
    return len(own)


def _weighted_prefix(
    ta: np.ndarray, tb: np.ndarray, w: float, mx: np.ndarray, h: float, grid: np.ndarray
) -> np.ndarray:
    """Sum of exp((s - mx) / h) over the first ``g`` units of weight of the merged descending list
    (``ta``: weight 1 each, ``tb``: weight ``w`` each), for each g in ``grid``; (rows, len(grid)) float64."""
    m, na = ta.shape
    nb = tb.shape[1]
    ea = np.exp((ta.astype(np.float64) - mx[:, None]) / h)
    ca = np.concatenate([np.zeros((m, 1)), np.cumsum(ea, axis=1)], axis=1)  # ca[:, i] = sum of the first i
    ea = np.concatenate([ea, np.zeros((m, 1))], axis=1)
    out = np.empty((m, len(grid)), dtype=np.float64)
    ar = np.arange(m)
    if nb == 0:
        for j, g in enumerate(grid):
            out[:, j] = ca[:, min(int(g), na)]
        return out
    eb = np.exp((tb.astype(np.float64) - mx[:, None]) / h)
    cb = np.concatenate([np.zeros((m, 1)), np.cumsum(eb, axis=1)], axis=1)
    # r[i, j] = how many of row i's ta values are above tb[i, j] (rows kept apart by an offset of 4)
    off = 4.0 * ar[:, None]
    r = np.searchsorted((off - ta).ravel(), (off - tb).ravel(), side="left").reshape(m, nb) - na * ar[:, None]
    start = r + w * np.arange(nb)[None, :]  # weight before tb[i, j] in the merged list
    for j, g in enumerate(grid.astype(np.float64)):
        started = (start < g).sum(axis=1)  # tb entries that begin before the cut
        last = np.maximum(started - 1, 0)
        s_last = start[ar, last]
        inside = (started > 0) & (s_last + w >= g)  # the cut falls inside tb[last]
        in_b = ca[ar, r[ar, last]] + w * cb[ar, last] + (g - s_last) * eb[ar, last]
        ia_f = np.clip(g - w * started, 0, na)
        ia = np.minimum(np.floor(ia_f).astype(np.int64), na)
        in_a = ca[ar, ia] + (ia_f - ia) * ea[ar, ia] + w * cb[ar, started]
        out[:, j] = np.where(inside, in_b, in_a)
    return out


def _run_cells(
    tasks: list[int], fn: Callable[[int], int], threads: int, done: Callable[[int], None], check: Callable[[], None]
) -> None:
    """``fn`` over ``tasks`` on ``threads`` threads; ``done`` and ``check`` run in the calling thread."""
    if threads <= 1:
        for t in tasks:
            check()
            done(fn(t))
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="near-pool-stats") as pool:
        pending: list[Future[int]] = []
        try:
            for t in tasks:
                check()
                pending.append(pool.submit(fn, t))
                while len(pending) >= 2 * threads:
                    done(pending.pop(0).result())
            while pending:
                check()
                done(pending.pop(0).result())
        finally:
            for f in pending:
                f.cancel()


def _approx_stats(
    vectors: np.ndarray,
    k: int,
    grid: np.ndarray,
    block_bytes: int,
    tick: Tick,
    check: Callable[[], None],
    sample_rows: int | None,
    cluster_rows: int | None,
    probe: int,
    threads: int,
) -> tuple[float, np.ndarray, np.ndarray]:
    n = len(vectors)
    cluster_rows = cluster_rows or min(CLUSTER_ROWS, max(16, n // 64))
    sample_rows = sample_rows or min(SAMPLE_ROWS, max(1, n // 2))  # its error depends on its size, not n
    t0 = time.perf_counter()
    cells = _cells(vectors, cluster_rows, probe, sample_rows, APPROX_SEED)
    check()
    n_cells = len(cells.probes)
    log.info(
        "pool density statistics (approx): %d rows in %d cells (mean %.0f, probe %d), sample %d; cells in %.1fs",
        n,
        n_cells,
        n / n_cells,
        probe,
        len(cells.sample),
        time.perf_counter() - t0,
    )
    # the bandwidth: exact 10th neighbours of fewer evenly spaced rows (2^31 / n: 2,147 at 1M rows)
    h = bandwidth(vectors, "cpu", block_bytes, sample=int(np.clip((1 << 31) // n, H_SAMPLE_MIN, H_SAMPLE)))
    check()
    prefix = np.empty((n, len(grid)), dtype=np.float32)
    lse = np.empty(n, dtype=np.float64)
    stop = threading.Event()

    def one(a: int) -> int:
        return _approx_cell(vectors, cells, a, k, grid, h, block_bytes, prefix, lse, stop)

    def guarded() -> None:
        try:
            check()
        except StatsStopped:
            stop.set()
            raise

    big_first = sorted(range(n_cells), key=lambda a: -(cells.starts[a + 1] - cells.starts[a]))
    _run_cells([a for a in big_first if cells.starts[a + 1] > cells.starts[a]], one, threads, tick, guarded)
    return h, prefix, lse


def compute_pool_stats(
    vectors: np.ndarray,
    device: str = "cpu",
    method: str = "auto",
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    k_max: int = K_MAX,
    block_bytes: int | None = None,
    sample_rows: int | None = None,
    cluster_rows: int | None = None,
    probe: int = PROBE,
    threads: int | None = None,
) -> PoolStats:
    """:class:`PoolStats` of L2-normalised pool ``vectors``, by the exact blocked self-search or the
    approximate method (module docstring); ``method`` "auto" takes exact up to :data:`EXACT_ROWS_CPU`
    rows on a CPU (:data:`EXACT_ROWS_CUDA` on CUDA), approx above.

    ``on_progress(done_rows, total_rows)`` is called (in the calling thread) after every block;
    ``should_stop()`` is asked as often, and True raises :class:`StatsStopped`.

    Exact: n^2 d multiply-adds plus a top-(K+1) selection and one exp per pair; memory ~3x
    ``block_bytes`` (default 128 MiB; a float32 score block and its float64 copy) plus 13 floats a row;
    ``device`` "cuda" runs its blocks in torch. Approx (CPU, ``threads`` threads, default the cores up
    to 8): ~n (PROBE x CLUSTER_ROWS + SAMPLE_ROWS) d multiply-adds, memory ~``threads`` x 2x
    ``block_bytes`` (default 64 MiB) plus ~30 bytes a row. ``sample_rows``, ``cluster_rows`` and
    ``probe`` override the approximate method's sizes (tests, benchmarks).
    """
    t0 = time.perf_counter()
    n = len(vectors)
    how = resolve_method(method, n, device)
    k = min(k_max, n - 1)
    grid = kp_grid(k)
    if k < 1:
        z = np.zeros(n, dtype=np.float32)
        return PoolStats(1.0, grid, np.zeros((n, 0), dtype=np.float32), z, method=how)
    done = 0

    def check() -> None:
        if should_stop is not None and should_stop():
            raise StatsStopped(f"pool density statistics stopped after {done:,} of {n:,} rows")

    def tick(rows: int) -> None:
        nonlocal done
        done += rows
        if on_progress is not None:
            on_progress(done, n)
        check()

    check()
    if on_progress is not None:
        on_progress(0, n)
    if how == "approx":
        h, prefix, lse = _approx_stats(
            vectors,
            k,
            grid,
            block_bytes or (64 << 20),
            tick,
            check,
            sample_rows,
            cluster_rows,
            probe,
            threads or _threads(),
        )
        log.info("pool density statistics: %d rows, K=%d, h=%.4f, approx, in %.2fs", n, k, h, time.perf_counter() - t0)
        return PoolStats(h, grid, prefix, lse.astype(np.float32), method="approx")
    bb = block_bytes or (128 << 20)
    h = bandwidth(vectors, device, bb)
    check()
    rows = np.arange(n, dtype=np.int64)
    if device.startswith("cuda"):
        top, lse_ = _blocks_torch(vectors, rows, k, h, bb, device, tick)
    else:
        top, lse_ = _blocks_numpy(vectors, rows, k, h, bb, tick)
    assert lse_ is not None
    a = top.astype(np.float64) / h
    mx = a[:, :1]  # rows are sorted: the first is the largest
    csum = np.cumsum(np.exp(a - mx), axis=1)[:, grid - 1]
    prefix = (mx + np.log(csum / grid[None, :])).astype(np.float32)
    log.info("pool density statistics: %d rows, K=%d, h=%.4f, exact, in %.2fs", n, k, h, time.perf_counter() - t0)
    return PoolStats(h, grid, prefix, lse_.astype(np.float32), method="exact")
