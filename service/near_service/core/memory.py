"""The search side's memory plan: what the pool and one search take on the device, checked before ready.

vLLM takes its share of the GPU first (``NEAR_VLLM_GPU_MEMORY_UTILIZATION``, by default what the
model needs, :mod:`near_service.core.gpu`); the plan then reads what is free
(``torch.cuda.mem_get_info``), lowers the search's block size until the pool, one search's
workspace (``max_k_limit`` neighbours for a block of up to ``max_queries`` queries) and a reserve
fit, or refuses to start with the numbers and what to change. Device searches run one at a time
(:class:`~near_service.core.index.VectorIndex` holds a lock), so one workspace is the whole need.
Then the pool moves to the device and one warm-up search allocates the workspace, all before
``/ready`` says ready.

>>> plan_memory(1_000_000, 1024, 10000, 1024, "float32", free_bytes=8 << 30).block_bytes >> 20
1024
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from near_service.core.errors import ConfigError
from near_service.core.index import Storage, VectorIndex, torch_blocks
from near_service.core.rescore import margin_for

log = logging.getLogger(__name__)

RESERVE_BYTES = 512 << 20  # the caching allocator's rounding and fragmentation, cuBLAS workspaces
MAX_BLOCK_BYTES = 1 << 30
MIN_BLOCK_BYTES = 16 << 20
GiB = float(1 << 30)


@dataclass(frozen=True)
class MemoryPlan:
    """Where search runs and what it holds there (bytes)."""

    device: str
    storage: Storage
    pool_bytes: int  # the pool's vectors on the search device
    workspace_bytes: int  # one search at max_k_limit over a block of queries (estimate)
    block_bytes: int  # one score block, as bounded by the plan
    query_block: int  # queries per block
    free_bytes: int | None  # free on the device before the pool moved there (after the model loaded)
    total_bytes: int | None
    vllm_gpu_memory_utilization: float | None = None
    peak_bytes: int | None = None  # measured over the warm-up search (CUDA only)


def workspace_bytes(n: int, dim: int, queries: int, k: int, block_bytes: int, storage: Storage) -> tuple[int, int]:
    """(bytes, queries per block) of one :func:`~near_service.core.index.torch_topk_dropped` search.

    The score block twice (the matmul's output and ``topk``'s temporaries), the running top-k four
    times (values and indices; the merge's concatenation, its ``topk`` and gather) and the queries,
    plus a quarter for the allocator's rounding.
    """
    elem = 2 if storage == "float16" else 4
    kk = min(n, k + margin_for(k)) if storage == "float16" else k
    rows, base_block = torch_blocks(n, queries, kk, block_bytes, elem)
    scores = rows * min(base_block, n) * elem
    running = rows * (kk + 1) * (elem + 8)
    return int(1.25 * (2 * scores + 4 * running + rows * dim * 4)), rows


def plan_memory(
    n: int,
    dim: int,
    k: int,
    queries: int,
    storage: Storage,
    free_bytes: int,
    total_bytes: int | None = None,
    vllm_fraction: float | None = None,
    device: str = "cuda",
) -> MemoryPlan:
    """The largest score block (up to 1 GiB) with which the pool and one search fit in ``free_bytes``;
    ConfigError, with the numbers, where none does."""
    pool = n * dim * (2 if storage == "float16" else 4)
    room = free_bytes - pool - RESERVE_BYTES
    block = MAX_BLOCK_BYTES
    ws, rows = workspace_bytes(n, dim, queries, k, block, storage)
    while ws > room and block > MIN_BLOCK_BYTES:
        block //= 2
        ws, rows = workspace_bytes(n, dim, queries, k, block, storage)
    if ws > room:
        card = f" of {total_bytes / GiB:.1f} GiB" if total_bytes else ""
        vllm = f" (vLLM gpu_memory_utilization {vllm_fraction})" if vllm_fraction else ""
        hint = "; set NEAR_GPU_STORAGE=float16 (halves the pool)" if storage == "float32" else ""
        raise ConfigError(
            f"the pool does not fit on {device}: {n} x {dim} {storage} vectors take {pool / GiB:.2f} GiB and a "
            f"search at K {k} needs {ws / GiB:.2f} GiB more (+{RESERVE_BYTES / GiB:.1f} GiB reserve), but "
            f"{free_bytes / GiB:.2f} GiB{card} is free after the model loaded{vllm}. Lower "
            f"NEAR_VLLM_GPU_MEMORY_UTILIZATION or NEAR_MAX_K_LIMIT{hint}, or use NEAR_INDEX=ivf"
        )
    return MemoryPlan(device, storage, pool, ws, block, rows, free_bytes, total_bytes, vllm_fraction)


def device_memory(device: str) -> tuple[int, int]:
    """(free, total) bytes of a CUDA device, all processes counted (this creates the CUDA context)."""
    import torch

    free, total = torch.cuda.mem_get_info(torch.device(device))
    return int(free), int(total)


def host_available_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def prepare_search(
    index: VectorIndex,
    storage: Storage,
    max_k: int,
    max_queries: int,
    vllm_fraction: float | None = None,
    memory: Callable[[str], tuple[int, int]] = device_memory,
) -> MemoryPlan:
    """Plan, check, move the pool to the device and warm up one search; the plan (for ``/info``).

    On the CPU (and for the approximate indexes, whose exact fallback runs on the CPU) nothing moves:
    the plan reports the pool's host bytes and the host's available memory.
    """
    k = min(max_k, index.size)
    if index.device == "cpu" or index.kind != "flat":
        rows = max(1, min(max_queries, (256 << 20) // max(4 * len(index.vectors), 1)))  # numpy_topk's block
        ws = rows * len(index.vectors) * 4 + 2 * rows * k * 12
        host = index.vectors.nbytes
        return MemoryPlan("cpu", "float32", host, ws, 256 << 20, rows, host_available_bytes(), None, vllm_fraction)
    free, total = memory(index.device)
    n, dim = index.vectors.shape
    plan = plan_memory(n, dim, k, max_queries, storage, free, total, vllm_fraction, index.device)
    log.info(
        "memory plan on %s: pool %.2f GiB (%s), search workspace ~%.2f GiB (block %d MiB, %d queries), "
        "%.2f GiB free of %.2f GiB",
        index.device,
        plan.pool_bytes / GiB,
        storage,
        plan.workspace_bytes / GiB,
        plan.block_bytes >> 20,
        plan.query_block,
        free / GiB,
        total / GiB,
    )
    index.block_bytes = plan.block_bytes
    cuda = index.device.startswith("cuda")
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats(index.device)
    index.to_device(storage)
    index.warm_up(k, plan.query_block)
    if not cuda:
        return plan
    peak = int(torch.cuda.max_memory_allocated(index.device))
    log.info("warm-up search at K %d: peak %.2f GiB on %s (pool included)", k, peak / GiB, index.device)
    return replace(plan, peak_bytes=peak)
