"""What the density statistics cost to compute, and how close the approximate ones come to exact.

    python bench/pool_stats_cost.py                 # cost table -> docs/scaling.md (bench:pool_stats)
    python bench/pool_stats_cost.py --accuracy      # 100k real pool -> docs/benchmarks.md (bench:pool_stats_accuracy)

Cost: exact at 10k rows (all rows) and 100k (timed on 10k rows, every row costs the same); approx at
100k and 1M measured whole, each in its own process (peak RSS beyond the vectors from
``resource.getrusage``), on a clustered synthetic pool (topics of Zipf sizes, 384 dims), with the
exact statistics of 1,000 of the 1M rows (against the whole pool) to say how far approx is at that
size; 10M extrapolated from the measured per-row cost. The load average is printed beside the numbers.

Accuracy: a real pool of 100,000 distinct texts from the shared data (every record of GSM8K train, the
DataFlex demo sets and t0dev, then their sentences and lines), embedded with the packaged MiniLM
(cached); exact vs approx: Spearman per statistic, and the overlap of what ``density`` and
``importance`` select at budgets 1,000 and 10,000 for GSM8K test questions and for the t0dev queries.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import resource
import time
import tracemalloc
from pathlib import Path
from typing import Any, cast

import numpy as np
from report import cpu_name, write_section

from near_service.core.density import K_MAX, _blocks_numpy, bandwidth, compute_pool_stats, kp_grid
from near_service.core.embedder import Embedder
from near_service.core.index import VectorIndex
from near_service.core.records import load_texts
from near_service.core.selection import fill_budget
from near_service.core.settings import load_settings
from near_service.stores.cache import DiskCache
from near_service.stores.pool_stats import load_pool_stats, save_pool_stats, stats_path

ROOT = Path(__file__).resolve().parents[1]
SCALING = ROOT / "docs" / "scaling.md"


def unit(n: int, d: int) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


POOL_FILES = (
    "gsm8k/train.jsonl",
    "dataflex_demo/alpaca_en_demo.json",
    "dataflex_demo/alpaca_zh_demo.json",
    "dataflex_demo/c4_demo.jsonl",
    "dataflex_demo/wiki_demo.jsonl",
    "t0dev/candidates.jsonl",
)
_PIECES = re.compile(r"(?<=[.!?\u3002\uff01\uff1f])\s+|\n+")


def real_texts(data: Path, rows: int) -> list[str]:
    """A real pool of ``rows`` distinct texts from the shared data: every record (GSM8K train, the
    DataFlex demo sets, t0dev; default template), then its sentences and lines (20+ characters),
    evenly spaced down to ``rows``."""
    records: list[str] = []
    for f in POOL_FILES:
        records += load_texts([data / f], "default", "candidate")
    pieces = [q for t in records for p in _PIECES.split(t) if len(q := p.strip()) >= 20]
    seen = set(records)
    extra = [t for t in dict.fromkeys(pieces) if t not in seen]
    need = max(0, rows - len(records))
    if need > len(extra):
        raise SystemExit(f"the shared data gives only {len(records) + len(extra)} distinct texts, asked for {rows}")
    pick = np.unique(np.linspace(0, len(extra) - 1, need).astype(np.int64)) if need else np.zeros(0, np.int64)
    return (records + [extra[i] for i in pick])[:rows]


def real_vectors(data: Path, rows: int, cache: Path) -> np.ndarray:
    """:func:`real_texts` embedded with the packaged MiniLM (dtype auto) through :class:`Embedder`,
    with the quality bench's disk cache (a rerun embeds nothing)."""
    texts = real_texts(data, rows)
    embedder = Embedder.from_settings(load_settings(cache_dir=cache, dtype="auto"))
    t = time.perf_counter()
    vectors = embedder.embed(texts, "document", [DiskCache(cache)], progress=True)
    print(f"real pool: {len(texts)} texts embedded or read in {time.perf_counter() - t:.0f}s", flush=True)
    return vectors


def clustered(n: int, d: int, seed: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """A clustered pool written in blocks (no temporary the size of the pool): 200 topics of Zipf
    sizes, 8 subtopics each, rows around a subtopic at the topic's own spread."""
    rng = np.random.default_rng(seed)
    topics, subs = 200, 8
    centre = rng.standard_normal((topics, d)).astype(np.float32)
    sub = centre[:, None, :] + 0.6 * rng.standard_normal((topics, subs, d)).astype(np.float32)
    weight = 1.0 / np.arange(1, topics + 1) ** 0.8
    spread = rng.uniform(0.5, 1.0, topics).astype(np.float32)
    x = np.empty((n, d), dtype=np.float32) if out is None else out
    for r0 in range(0, n, 4096):  # small blocks: the peak RSS after this is the vectors' (+ ~25 MiB)
        m = min(4096, n - r0)
        t = rng.choice(topics, m, p=weight / weight.sum())
        b = sub[t, rng.integers(0, subs, m)] + spread[t][:, None] * rng.standard_normal((m, d), dtype=np.float32)
        x[r0 : r0 + m] = b / np.linalg.norm(b, axis=1, keepdims=True)
    return x


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def exact_rows(x: np.ndarray, rows: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
    """The exact statistics (prefix, log_pool) of ``rows`` against the whole pool, at bandwidth ``h``."""
    k = min(K_MAX, len(x) - 1)
    grid = kp_grid(k)
    top, lse = _blocks_numpy(x, rows, k, h, 128 << 20)
    assert lse is not None
    a = top.astype(np.float64) / h
    csum = np.cumsum(np.exp(a - a[:, :1]), axis=1)[:, grid - 1]
    return a[:, :1] + np.log(csum / grid[None, :]), lse


def _approx_child(n: int, d: int, check_rows: int, conn: Any) -> None:
    """In a fresh process: build the pool, run approx, report time, peak RSS beyond the vectors and
    (``check_rows``) the error against exact on that many rows."""
    x = clustered(n, d)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = time.perf_counter()
    stats = compute_pool_stats(x, method="approx")
    secs = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    err: dict[str, float] = {}
    if check_rows:
        rows = np.unique(np.linspace(0, n - 1, check_rows).astype(np.int64))
        prefix, lse = exact_rows(x, rows, stats.h)
        for j, g in enumerate(stats.grid):
            if g in (16, 256, 2048):
                err[f"lp@{g}"] = spearman(prefix[:, j], stats.prefix[rows, j])
        err["log_pool"] = spearman(lse, stats.log_pool[rows])
    conn.send((secs, peak, err))
    conn.close()


def approx_run(n: int, d: int, check_rows: int = 0) -> tuple[float, float, dict[str, float]]:
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    proc = ctx.Process(target=_approx_child, args=(n, d, check_rows, there))
    proc.start()
    out = here.recv()
    proc.join()
    return cast(tuple[float, float, dict[str, float]], out)


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def measure(n: int, d: int, rows: int) -> tuple[float, float, bool]:
    """Exact: (seconds for the whole pool, peak bytes beyond the vectors, whether every row was timed)."""
    x = clustered(n, d)
    tracemalloc.start()
    t = time.perf_counter()
    if n <= rows:
        compute_pool_stats(x, method="exact")
        total, full = time.perf_counter() - t, True
    else:
        h = bandwidth(x)
        t_h = time.perf_counter() - t
        sample = np.arange(rows, dtype=np.int64)
        t = time.perf_counter()
        _blocks_numpy(x, sample, min(K_MAX, n - 1), h, 128 << 20)
        total, full = t_h + (time.perf_counter() - t) * n / rows, False
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return total, peak + n * 13 * 4, full  # + what is kept: 12 prefix floats and log_pool per row


def cost(args: argparse.Namespace) -> None:
    d = args.dims
    lines = [
        "| pool rows | method | time | how | peak memory beyond the vectors | load (1/5/15 min) |",
        "|---|---|---|---|---|---|",
    ]
    per_pair = None
    for n in args.sizes:
        secs, peak, full = measure(n, d, args.rows)
        per_pair = secs / (n * n)
        how = "all rows" if full else f"{args.rows:,} rows timed, x n/{args.rows:,}"
        lines.append(f"| {n:,} | exact | {secs:.1f} s | {how} | {peak / 2**20:.0f} MiB | {load()} |")
        print(lines[-1], flush=True)
    assert per_pair is not None
    lines.append(f"| 1,000,000 | exact | ~{per_pair * 1e12 / 3600:.1f} h | n^2 from the row above | - | - |")
    errs: dict[int, dict[str, float]] = {}
    per_row = 0.0
    for n in args.approx_sizes:
        secs, peak, err = approx_run(n, d, args.check_rows if n == max(args.approx_sizes) else 0)
        errs[n], per_row = err, secs / n
        lines.append(f"| {n:,} | approx | {secs:.1f} s | whole pool, own process | {peak / 2**20:.0f} MiB | {load()} |")
        print(lines[-1], err, flush=True)
    big, n_big = 10_000_000, max(args.approx_sizes)
    big_peak = peak + 72 * (big - n_big)  # + the per-row arrays: prefix, log_pool, cells, order (~72 B a row)
    lines.append(
        f"| 10,000,000 | approx | ~{per_row * big / 60:.0f} min | per-row cost of the largest run x 10M "
        f"(the work is linear in n) | ~{big_peak / 2**20:.0f} MiB | - |"
    )
    n_check = max(args.approx_sizes)
    err_line = ", ".join(f"{k} {v:.4f}" for k, v in errs[n_check].items())
    text = "\n".join(
        [
            f"Density statistics, `bench/pool_stats_cost.py` ({time.strftime('%Y-%m-%d %H:%M')}): {cpu_name()}, "
            f"{os.cpu_count()} cores shared with other work (load average beside each row); clustered synthetic "
            f"pool, {d} dims, K = {K_MAX}.",
            "",
            *lines,
            "",
            f"- Approx at {n_check:,} rows against the exact statistics of {args.check_rows:,} evenly spaced rows "
            f"(each searched exactly against the whole pool, same h), Spearman: {err_line}.",
            "- Exact: n^2 d multiply-adds plus a top-(K+1) selection and one exp per pair. Approx: "
            "n x (~8 cells of ~1,024 rows + a 8,192-row sample) x d, i.e. linear in n; see the method above.",
            "- Both are computed once per (pool, model) in the background and read back from "
            "`<cache_dir>/pools/<namespace>/<fingerprint>.density.npz` (52 bytes a row) at every start.",
        ]
    )
    print(text)
    if not args.no_write:
        write_section("bench:pool_stats", text, SCALING)


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return len(np.intersect1d(a, b)) / len(a)


def accuracy(args: argparse.Namespace) -> None:
    x = real_vectors(args.data, args.real_rows, args.cache)
    embedder = Embedder.from_settings(load_settings(cache_dir=args.cache, dtype="auto"))
    stores = [DiskCache(args.cache)]
    t0 = args.data / "t0dev" / "queries"
    query_sets = {
        "GSM8K test (200)": load_texts([args.data / "gsm8k" / "test.jsonl"], "default", "query")[:200],
        "t0dev, all 8 targets": load_texts(sorted(t0.glob("*.jsonl")), "default", "query"),
    }
    path = stats_path(args.cache, "bench-real", f"exact-{len(x)}")  # exact is slow: kept for reruns
    t = time.perf_counter()
    stored = load_pool_stats(path, "bench-real", f"exact-{len(x)}", len(x), "exact")
    exact = stored or compute_pool_stats(x, method="exact")
    t_exact = time.perf_counter() - t
    if stored is None:
        save_pool_stats(path, "bench-real", f"exact-{len(x)}", exact)
    t = time.perf_counter()
    approx = compute_pool_stats(x, method="approx")
    t_approx = time.perf_counter() - t
    print(f"exact {t_exact:.0f}s, approx {t_approx:.0f}s (load {load()})", flush=True)
    corr = [f"| log_pool (importance) | {spearman(exact.log_pool, approx.log_pool):.4f} |"]
    for j, g in enumerate(exact.grid):
        corr.append(
            f"| lp at {g:,} neighbours (density, budget ~{max(1, int(g) // 2):,}) | "
            f"{spearman(exact.prefix[:, j], approx.prefix[:, j]):.4f} |"
        )
    sel = []
    index = VectorIndex(x)
    for name, texts in query_sets.items():
        qv = embedder.embed(texts, "query", stores)
        sc, idx = index.search(qv, args.max_k)
        for budget in (1000, 10_000):
            row = [name, f"{budget:,}"]
            for strategy in ("density", "importance"):
                e = fill_budget(idx, sc, budget, strategy, queries=qv, pool_vectors=x, stats=exact)
                a = fill_budget(idx, sc, budget, strategy, queries=qv, pool_vectors=x, stats=approx)
                row.append(f"{overlap(e, a):.3f}")
            sel.append("| " + " | ".join(row) + " |")
            print(sel[-1], flush=True)
    text = "\n".join(
        [
            f"Approximate vs exact density statistics, `bench/pool_stats_cost.py --accuracy` "
            f"({time.strftime('%Y-%m-%d %H:%M')}): {cpu_name()}, {os.cpu_count()} cores (load {load()}); a real pool "
            f"of {len(x):,} distinct texts (every record of GSM8K train, the DataFlex demo sets and t0dev, then "
            f"their sentences and lines), packaged all-MiniLM-L6-v2; h exact {exact.h:.4f}, approx {approx.h:.4f}; "
            f"exact {t_exact:.0f} s{' (read back from an earlier run)' if stored else ''}, approx {t_approx:.0f} s.",
            "",
            "| per-row statistic | Spearman, approx vs exact |",
            "|---|---|",
            *corr,
            "",
            f"Overlap of the selected sets (approx vs exact statistics, same queries, max_k {args.max_k}):",
            "",
            "| queries | budget | density | importance |",
            "|---|---|---|---|",
            *sel,
        ]
    )
    print(text)
    if not args.no_write:
        write_section("bench:pool_stats_accuracy", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="exact")
    parser.add_argument("--approx-sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--rows", type=int, default=10_000, help="exact: larger pools are timed on this many rows")
    parser.add_argument("--check-rows", type=int, default=1000, help="approx: rows checked against exact")
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--accuracy", action="store_true", help="the 100k real-pool comparison instead")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--cache", type=Path, default=ROOT / "out" / "bench-quality-cache", help="embedding cache")
    parser.add_argument("--real-rows", type=int, default=100_000)
    parser.add_argument("--max-k", type=int, default=2000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    accuracy(args) if args.accuracy else cost(args)


if __name__ == "__main__":
    main()
