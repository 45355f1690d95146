"""``near-select report OUT_DIR``: the report of an offline run, from what the run wrote.

Reads ``manifest.json``, ``top_indices.npy``, ``top_scores.npy`` and ``selected.json`` from
``OUT_DIR``, the pool and query files the manifest names (checked against its fingerprints), and
the pool's vectors where they are at hand (``candidate_embeddings.npy`` from ``--save-embeddings``,
else the pool store under the run's cache folder), its density statistics and its cached map. Writes
``OUT_DIR/report.html``. ``near-select offline --report`` calls the same code at the end of a run.

    near-select report out/demo     # -> out/demo/report.html
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from near_service.cli.args import add_settings_args
from near_service.core.density import PoolStats
from near_service.core.errors import InputError, NearError
from near_service.core.records import fingerprint, load_texts, record_sources
from near_service.core.settings import Settings
from near_service.report import PoolView, RoundView, build_run_report, render_html
from near_service.stores.pool_map import pool_projection
from near_service.stores.pool_stats import load_pool_stats, stats_path
from near_service.stores.vectors import PoolVectorStore

__all__ = ["add_report_parser", "offline_report", "write_offline_report"]

log = logging.getLogger(__name__)


def manifest_namespace(manifest: dict[str, Any]) -> str:
    """The embedder namespace of the run (what keys its pool store files): the same hash as
    :class:`near_service.core.embedder.Embedder`'s ``namespace``, from the manifest's fields."""
    parts = [manifest.get(k) for k in ("model", "revision", "backend", "dtype", "max_length", "pooling")]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def _npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the run's {what} ({exc})") from None


def _texts(
    paths: Sequence[str], template: str, expected_fp: str | None, what: str, notes: list[str]
) -> list[str] | None:
    try:
        texts = load_texts(paths, template, what)
    except NearError as exc:
        notes.append(f"the {what} files cannot be read now ({exc.message}): no {what} texts")
        return None
    if expected_fp and fingerprint(texts) != expected_fp:
        notes.append(f"the {what} files changed since the run (fingerprint differs): their texts are not used")
        return None
    return texts


def _pool_vectors(out: Path, manifest: dict[str, Any], n: int, vectors: np.ndarray | None) -> np.ndarray | None:
    if vectors is not None:
        return vectors
    saved = out / "candidate_embeddings.npy"
    if saved.exists():
        v = np.load(saved, mmap_mode="r", allow_pickle=False)
        if v.ndim == 2 and len(v) == n:
            return np.asarray(v, dtype=np.float32)
    cache = (manifest.get("cache") or {}).get("dir")
    if cache:
        return PoolVectorStore(cache).load(manifest_namespace(manifest), manifest["pool_fingerprint"], n)
    return None


def offline_report(
    out_dir: str | Path,
    pool_texts: list[str] | None = None,
    query_texts: list[str] | None = None,
    pool_vectors: np.ndarray | None = None,
    query_vectors: np.ndarray | None = None,
    stats: PoolStats | None = None,
) -> dict[str, Any]:
    """The run report (:func:`near_service.report.build_run_report`) of the offline run in
    ``out_dir``; what is passed in (texts, vectors, statistics) is used instead of being read again."""
    out = Path(out_dir)
    if not (out / "manifest.json").is_file():
        raise InputError(f"{out}: no manifest.json here; point at the --out-dir of a near-select offline run")
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{out / 'manifest.json'}: not readable JSON ({exc})") from None
    indices = _npy(out / "top_indices.npy", "neighbour indices")
    scores = _npy(out / "top_scores.npy", "neighbour scores")
    if indices.ndim != 2 or indices.shape != scores.shape:
        raise InputError(f"{out}: top_indices.npy {indices.shape} and top_scores.npy {scores.shape} do not match")
    selected = None
    if (out / "selected.json").is_file():
        try:
            selected = np.asarray(json.loads((out / "selected.json").read_text()), dtype=np.int64)
        except (OSError, ValueError, TypeError) as exc:
            raise InputError(f"{out / 'selected.json'}: not a JSON list of row numbers ({exc})") from None
    notes: list[str] = []
    n = int(manifest.get("pool_size") or 0)
    if pool_texts is None:
        pool_texts = _texts(
            manifest.get("candidates", []),
            manifest.get("template", "default"),
            manifest.get("pool_fingerprint"),
            "candidate",
            notes,
        )
    if query_texts is None:
        query_texts = _texts(
            manifest.get("queries", []),
            manifest.get("query_template", "default"),
            manifest.get("query_fingerprint"),
            "query",
            notes,
        )
    sources, source_note = None, "the pool files are not at hand: no sources"
    if pool_texts is not None:
        try:
            found, source_note = record_sources(manifest["candidates"])
            sources = found if len(found) == n else None
        except NearError as exc:
            source_note = f"no sources ({exc.message})"
    saved_q = out / "query_embeddings.npy"
    if query_vectors is None and saved_q.exists():
        query_vectors = np.load(saved_q, allow_pickle=False)
    pool_vectors = _pool_vectors(out, manifest, n, pool_vectors)
    cache, ns, fp = (manifest.get("cache") or {}).get("dir"), manifest_namespace(manifest), manifest["pool_fingerprint"]
    fit = coords = None
    if pool_vectors is not None:
        fit, coords, _ = pool_projection(cache, ns, fp, pool_vectors)
        if stats is None and cache:
            stats = load_pool_stats(stats_path(cache, ns, fp), ns, fp, n)
    pool = PoolView(
        name=", ".join(Path(p).name for p in manifest.get("candidates", [])) or "pool",
        texts=pool_texts,
        sources=sources,
        source_note=source_note,
        vectors=pool_vectors,
        stats=stats,
        projection=coords,
        map_fit=fit,
        fingerprint=fp,
        rows=n,
    )
    rnd = RoundView(
        round=0,
        indices=indices,
        scores=scores,
        selected=selected,
        strategy=manifest.get("strategy"),
        budget=manifest.get("budget"),
        max_k=manifest.get("max_k"),
        query_count=manifest.get("query_count"),
        query_texts=query_texts,
        query_vectors=query_vectors,
        created_at=(out / "manifest.json").stat().st_mtime,
    )
    report = build_run_report(out.name or str(out), [rnd], pool)
    report["title"] = f"Offline selection {out.name}"
    report["notes"] = notes + report["notes"]
    return report


def write_offline_report(out_dir: str | Path, **known: Any) -> Path:
    """Build the offline run's report and write ``out_dir/report.html`` (atomically); its path."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    html = render_html(offline_report(out, **known)).encode("utf-8")
    tmp = out / f".report.html.tmp-{time.monotonic_ns()}"
    tmp.write_bytes(html)
    tmp.replace(out / "report.html")
    log.info("report: %s (%.1f MB) in %.2fs", out / "report.html", len(html) / 1e6, time.perf_counter() - t0)
    return out / "report.html"


def _cmd_report(ns: argparse.Namespace, settings: Settings) -> int:
    path = write_offline_report(ns.out_dir)
    print(f"wrote {path}")
    return 0


def add_report_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``report`` to the ``near-select`` command."""
    p = sub.add_parser("report", help="write OUT_DIR/report.html for an offline run (a self-contained HTML page)")
    p.add_argument("out_dir", help="the --out-dir of a near-select offline run")
    add_settings_args(p, ("log_level",))
    p.set_defaults(func=_cmd_report, fields=("log_level",))
