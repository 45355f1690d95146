"""``near-select offline``: DataFlex-compatible ``top_indices.npy`` from candidate and query files.

Writes into ``out_dir``: ``top_indices.npy`` (int64, queries x max_k, nearest first, what DataFlex's
``near`` selector reads), ``top_scores.npy`` (float32 cosine), ``manifest.json``, and with a
budget ``selected.json``. Files are written to a temporary name and renamed, so a reader never sees
half a file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from near_schema import STRATEGIES
from near_service import __version__
from near_service.cli.args import add_settings_args
from near_service.core.embedder import Embedder, EmbedStats
from near_service.core.errors import BudgetError, MaxKError, NearError
from near_service.core.index import recall_at_k
from near_service.core.records import fingerprint, load_texts
from near_service.core.selection import DENSITY_STRATEGIES
from near_service.core.settings import Settings
from near_service.engine.open import open_pool, open_pool_stats
from near_service.stores.cache import DiskCache, EmbeddingStore

log = logging.getLogger(__name__)


@dataclass
class OfflineJob:
    """One offline run's inputs beyond the shared settings."""

    queries: list[Path]
    out_dir: Path
    max_k: int = 1000
    budget: int | None = None
    strategy: str = "density"
    clamp: bool = False
    query_template: str | None = None
    progress: bool = True
    save_embeddings: bool = False
    report: bool = False  # also write report.html (near_service.cli.report)


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        write(fh)
    os.replace(tmp, path)


def _check_numbers(job: OfflineJob, pool_size: int, n_queries: int) -> int:
    if job.max_k < 1:
        raise MaxKError(f"max_k must be at least 1, got {job.max_k}")
    max_k = job.max_k
    if max_k > pool_size:
        if not job.clamp:
            raise MaxKError(
                f"max_k {max_k} is larger than the candidate pool ({pool_size} candidates); "
                "lower it, or pass --clamp to use the pool size"
            )
        log.warning("max_k %d is larger than the pool; clamped to %d", max_k, pool_size)
        max_k = pool_size
    if job.budget is not None and not 1 <= job.budget <= pool_size:
        raise BudgetError(f"budget must be between 1 and the pool size ({pool_size}), got {job.budget}")
    if job.budget is not None and job.budget > n_queries * max_k:
        raise BudgetError(
            f"budget {job.budget} asks for more candidates than {n_queries} queries x max_k {max_k} "
            f"= {n_queries * max_k} neighbours can reach; raise max_k or lower the budget"
        )
    return max_k


def run_offline(settings: Settings, job: OfflineJob) -> dict[str, Any]:
    """Run one offline selection end to end and return its manifest."""
    with Embedder.from_settings(settings) as embedder:  # closed on the way out: a vLLM engine stops here
        return _run_offline(settings, job, embedder)


def _run_offline(settings: Settings, job: OfflineJob, embedder: Embedder) -> dict[str, Any]:
    t_start = time.perf_counter()
    cand_texts = load_texts(settings.candidates, settings.template, "candidate")
    query_texts = load_texts(job.queries, job.query_template or settings.template, "query")
    max_k = _check_numbers(job, len(cand_texts), len(query_texts))
    t_loaded = time.perf_counter()

    stores: list[EmbeddingStore] = [DiskCache(settings.cache_dir)] if settings.cache_dir else []
    pool_stats, query_stats = EmbedStats(), EmbedStats()
    pool_fp = fingerprint(cand_texts)
    pool = open_pool(
        settings, embedder, cand_texts, pool_fp, stores, stats=pool_stats, progress=job.progress
    )  # the same path as the service's pools: stored or imported vectors, else embedded and stored
    if job.budget is not None and job.strategy in DENSITY_STRATEGIES:
        pool.density_stats, _ = open_pool_stats(settings, embedder, pool, "load")
    t_pool = time.perf_counter()
    result = pool.select_texts(
        embedder, query_texts, max_k, job.budget, job.strategy, stores=stores, progress=job.progress, stats=query_stats
    )
    t_done = time.perf_counter()
    qvecs = result.query_vectors
    assert qvecs is not None  # computed here, not read from a ledger

    recall = None
    if settings.index != "flat":
        recall = recall_at_k(pool.index, qvecs, max_k)
        log.warning(
            "index %s: recall@%d against exact search on a sample of queries = %.4f", settings.index, max_k, recall
        )

    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    assert result.indices.min() >= 0 and result.indices.max() < pool.size
    _atomic_write(out / "top_indices.npy", lambda fh: np.save(fh, result.indices.astype(np.int64)))
    _atomic_write(out / "top_scores.npy", lambda fh: np.save(fh, result.scores.astype(np.float32)))
    if job.save_embeddings:
        _atomic_write(out / "candidate_embeddings.npy", lambda fh: np.save(fh, pool.vectors))
        _atomic_write(out / "query_embeddings.npy", lambda fh: np.save(fh, qvecs))
    if result.selected is not None:
        data = json.dumps([int(i) for i in result.selected]).encode()
        _atomic_write(out / "selected.json", lambda fh: fh.write(data))
    manifest: dict[str, Any] = {
        "near_select_version": __version__,
        **embedder.describe(),
        "dims": int(pool.vectors.shape[1]),
        "template": settings.template,
        "query_template": job.query_template or settings.template,
        "candidates": [str(p) for p in settings.candidates],
        "queries": [str(p) for p in job.queries],
        "pool_size": pool.size,
        "pool_fingerprint": pool.fingerprint,
        "query_count": len(query_texts),
        "query_fingerprint": fingerprint(query_texts),
        "max_k": max_k,
        "index": settings.index,
        "recall_at_k": recall,
        "budget": job.budget,
        "strategy": job.strategy if job.budget is not None else None,
        "cache": {
            "dir": str(settings.cache_dir) if settings.cache_dir else None,
            "pool_hits": pool_stats.cache_hits,
            "pool_embedded": pool_stats.embedded,
            "query_hits": query_stats.cache_hits,
            "query_embedded": query_stats.embedded,
        },
        "timings": {
            "load_inputs_s": round(t_loaded - t_start, 4),
            "embed_pool_s": round(t_pool - t_loaded, 4),
            "embed_queries_s": round(result.timings["embed_queries_s"], 4),
            "search_s": round(result.timings["search_s"], 4),
            "select_s": round(result.timings["select_s"], 4),
            "total_s": round(t_done - t_start, 4),
            "embedded_tokens": pool_stats.tokens + query_stats.tokens,
        },
    }
    text = json.dumps(manifest, indent=2).encode()
    _atomic_write(out / "manifest.json", lambda fh: fh.write(text))
    if job.report:
        from near_service.cli.report import write_offline_report

        write_offline_report(
            out, pool_texts=cand_texts, query_texts=query_texts, pool_vectors=pool.vectors, query_vectors=qvecs
        )
    return manifest


# Settings that mean something offline; serve takes them all.
OFFLINE_FIELDS = (
    "candidates",
    "template",
    "model",
    "backend",
    "dtype",
    "device",
    "max_length",
    "query_instruction",
    "batch_tokens",
    "vllm_gpu_memory_utilization",
    "cache_dir",
    "embeddings",
    "embeddings_trust_model",
    "index",
    "ivf_nprobe",
    "hnsw_m",
    "log_level",
)


def _cmd_offline(ns: argparse.Namespace, settings: Settings) -> int:
    if not settings.candidates:
        raise NearError("--candidates is required (or NEAR_CANDIDATES)")
    job = OfflineJob(
        queries=[Path(q) for q in ns.queries],
        out_dir=Path(ns.out_dir),
        max_k=ns.max_k,
        budget=ns.budget,
        strategy=ns.strategy,
        clamp=ns.clamp,
        query_template=ns.query_template,
        progress=not ns.quiet,
        save_embeddings=ns.save_embeddings,
        report=ns.report,
    )
    manifest = run_offline(settings, job)
    t = manifest["timings"]
    print(
        f"wrote {ns.out_dir}/top_indices.npy: {manifest['query_count']} queries x {manifest['max_k']} "
        f"neighbours over {manifest['pool_size']} candidates ({manifest['backend']}, {manifest['dtype']}, "
        f"{t['total_s']:.1f}s)"
    )
    if manifest["budget"] is not None:
        print(f"wrote {ns.out_dir}/selected.json: {manifest['budget']} candidates ({manifest['strategy']})")
    if manifest["recall_at_k"] is not None:
        print(f"{manifest['index']} recall@{manifest['max_k']} vs exact (sampled): {manifest['recall_at_k']:.4f}")
    if ns.report:
        print(f"wrote {ns.out_dir}/report.html")
    if ns.json:
        print(json.dumps(manifest, indent=2))
    return 0


def add_offline_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``offline`` to the ``near-select`` command."""
    off = sub.add_parser(
        "offline",
        help="embed, search and write DataFlex-compatible top_indices.npy",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    off.add_argument("--queries", nargs="+", required=True, help="query (target/validation) files")
    off.add_argument("--out-dir", required=True, help="folder for top_indices.npy, top_scores.npy, manifest.json")
    off.add_argument("--max-k", type=int, default=1000, help="neighbours per query")
    off.add_argument(
        "--budget", type=int, default=None, help="also write selected.json with this many unique candidates"
    )
    off.add_argument(
        "--strategy",
        choices=list(STRATEGIES),
        default="density",
        help="how the budget is filled: density (recommended), round_robin (DataFlex's order), max_score, "
        "importance; see README 'Choosing a strategy'",
    )
    off.add_argument("--clamp", action="store_true", help="clamp max_k to the pool size instead of failing")
    off.add_argument("--query-template", default=None, help="template for queries (default: --template)")
    off.add_argument(
        "--save-embeddings",
        action="store_true",
        help="also write candidate_embeddings.npy and query_embeddings.npy (float32, L2-normalised)",
    )
    off.add_argument(
        "--report", action="store_true", help="also write report.html (a self-contained page: see near-select report)"
    )
    off.add_argument("--quiet", action="store_true", help="no progress bar")
    off.add_argument("--json", action="store_true", help="print the manifest")
    add_settings_args(off, OFFLINE_FIELDS)
    off.set_defaults(func=_cmd_offline, fields=OFFLINE_FIELDS)
