"""``near-select import``: bring your own pool vectors, so ``serve`` and ``offline`` embed nothing.

    near-select import vectors.npy --candidates pool.jsonl            # manifest: vectors.npy.json
    near-select import emb.parquet --candidates pool.jsonl --manifest emb.json
    near-select import emb.safetensors --candidates pool.jsonl --embeddings-trust-model true

The file holds one row per candidate, in pool order. It is checked against the pool (row count,
fingerprint when the manifest has one), the model (its name in the manifest, its vector size) and
for usable values, normalised where needed, and written to the pool store under ``cache_dir``.
Run ``serve``/``offline`` with the same model settings and cache folder afterwards; the file's
checks and formats are described in :mod:`near_service.stores.vector_files`.
"""

from __future__ import annotations

import argparse
import time

from near_service.cli.args import add_settings_args
from near_service.core.embedder import Embedder
from near_service.core.errors import ConfigError
from near_service.core.records import fingerprint, load_texts
from near_service.core.settings import Settings
from near_service.stores.vector_files import import_vectors, stored_pool_vectors
from near_service.stores.vectors import PoolVectorStore

# What decides the pool (candidates, template), the store's namespace (model, backend, dtype, device,
# max_length) and where it lives (cache_dir).
VECTOR_FIELDS = (
    "candidates",
    "template",
    "model",
    "backend",
    "dtype",
    "device",
    "max_length",
    "cache_dir",
    "embeddings_trust_model",
    "log_level",
)


def import_pool_vectors(settings: Settings) -> Embedder:
    """Import ``settings.embeddings`` into the pool store (unless that file is already there) and
    return the embedder, model loaded, for the service to reuse."""
    texts = load_texts(settings.candidates, settings.template, "candidate")
    embedder = Embedder.from_settings(settings)
    stored_pool_vectors(settings, embedder, fingerprint(texts), len(texts))
    return embedder


def _cmd_import(ns: argparse.Namespace, settings: Settings) -> int:
    if not settings.candidates:
        raise ConfigError("--candidates is required (or NEAR_CANDIDATES): the vectors are checked against the pool")
    if not settings.cache_dir:
        raise ConfigError("import writes into the pool store under the cache folder: set --cache-dir")
    t0 = time.perf_counter()
    texts = load_texts(settings.candidates, settings.template, "candidate")
    pool_fp = fingerprint(texts)
    embedder = Embedder.from_settings(settings)
    vectors = import_vectors(settings, embedder, ns.file, pool_fp, len(texts), ns.manifest)
    path, _ = PoolVectorStore(settings.cache_dir).paths(embedder.namespace, pool_fp)
    print(
        f"imported {vectors.shape[0]} x {vectors.shape[1]} vectors of {embedder.spec.name} for pool {pool_fp} "
        f"into {path} ({time.perf_counter() - t0:.1f}s); serve and offline with the same model settings and "
        "cache folder embed nothing"
    )
    return 0


def add_import_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``import`` to the ``near-select`` command."""
    parser = sub.add_parser(
        "import",
        help="import pool vectors (.npy, .parquet, .safetensors) into the pool store",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("file", help="vectors, one row per candidate in pool order")
    parser.add_argument(
        "--manifest", default=None, help="manifest JSON (default: FILE.json, <stem>.json or the file's metadata)"
    )
    add_settings_args(parser, VECTOR_FIELDS)
    parser.set_defaults(func=_cmd_import, fields=VECTOR_FIELDS)


def add_vector_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``import`` and ``embed`` (the pool store's commands) to the ``near-select`` command."""
    from near_service.cli.embed import add_embed_parser

    add_import_parser(sub)
    add_embed_parser(sub)
