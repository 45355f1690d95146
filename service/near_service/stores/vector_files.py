"""Vectors users bring: ``.npy``, ``.parquet`` or ``.safetensors`` plus a manifest, into the pool store.

``near-select import`` and ``--embeddings FILE`` (serve, offline) read a file of pool vectors, one row
per candidate in pool order, and check it before anything is served from it:

- **manifest** (``FILE.json``, ``<stem>.json``, the ``manifest.json`` that ``offline
  --save-embeddings`` writes beside ``candidate_embeddings.npy``, safetensors ``__metadata__``, or
  parquet schema metadata): ``model`` (required unless ``embeddings_trust_model``), and optionally
  ``dims``, ``count``/``pool_size``, ``pool_fingerprint`` and ``namespace``;
- **model**: it must be the service's model (queries are embedded by that model, and vectors of two
  models are not comparable). A different or missing model is refused unless
  ``embeddings_trust_model`` declares the vectors belong to this model;
- **shape**: as many rows as the pool has candidates, the model's vector size; a manifest
  fingerprint must be this pool's (same texts, same order);
- **values**: finite, no zero rows; rows that are not unit length are L2-normalised (with a log line).

The checked vectors are written into :class:`~near_service.stores.vectors.PoolVectorStore` (when a
cache folder is set) and served from there.

>>> vectors = import_vectors(settings, embedder, "pool.npy", pool_fp, count)     # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from near_service.core.embedder import Embedder
from near_service.core.errors import ConfigError, InputError
from near_service.core.settings import Settings
from near_service.stores.vectors import NORM_TOLERANCE, NpyRows, PoolVectorStore, npy_header

__all__ = ["VectorFile", "import_vectors", "read_vector_file", "remember_pool_vectors", "stored_pool_vectors"]

log = logging.getLogger(__name__)

FORMATS = (".npy", ".parquet", ".safetensors")
_COLUMNS = ("embedding", "embeddings", "vector", "vectors")
_BLOCK = 65536
_MANIFEST_KEYS = ("model", "dims", "count", "pool_size", "pool_fingerprint", "fingerprint", "namespace", "normalized")


@dataclass
class VectorFile:
    """A file's vectors (an ``.npy`` file's read on demand, any float dtype) and its manifest."""

    path: Path
    vectors: np.ndarray | NpyRows
    manifest: dict[str, Any]
    manifest_from: str | None  # where the manifest came from, for messages

    @property
    def source(self) -> str:
        return file_source(self.path)


def file_source(path: Path) -> str:
    """Names this exact file (path, size, modification time): a store manifest's ``source``."""
    st = path.stat()
    return f"imported:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _json_manifest(path: Path, explicit: Path | None) -> tuple[dict[str, Any], str] | None:
    candidates = [explicit] if explicit else [path.with_name(path.name + ".json"), path.with_suffix(".json")]
    if not explicit and path.name == "candidate_embeddings.npy":
        candidates.append(path.with_name("manifest.json"))  # what `offline --save-embeddings` writes
    for c in candidates:
        if c is not None and c.is_file() and c != path:
            try:
                data = json.loads(c.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise InputError(f"{c}: not a readable JSON manifest ({exc})") from exc
            if not isinstance(data, dict):
                raise InputError(f"{c}: a manifest is a JSON object")
            return data, str(c)
    if explicit:
        raise InputError(f"{explicit}: no such manifest file")
    return None


def _from_parquet(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise InputError(f"{path}: not a readable parquet file ({exc})") from exc
    lists = [f.name for f in table.schema if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)]
    names = [n for n in _COLUMNS if n in table.column_names] or lists
    if len(names) != 1 and not any(n in _COLUMNS for n in names):
        raise InputError(f"{path}: expected one list column named one of {', '.join(_COLUMNS)}; found {lists}")
    col = table.column(names[0]).combine_chunks()
    if col.null_count:
        raise InputError(f"{path}: column {names[0]!r} has {col.null_count} empty rows")
    n = len(col)
    if pa.types.is_fixed_size_list(col.type):
        flat, dims = col.flatten(), col.type.list_size
    else:
        lengths = np.unique(col.value_lengths().to_numpy())
        if len(lengths) > 1:
            raise InputError(f"{path}: rows of {names[0]!r} differ in length ({lengths.min()} to {lengths.max()})")
        flat, dims = col.flatten(), int(lengths[0]) if len(lengths) else 0
    vectors = flat.to_numpy(zero_copy_only=False).reshape(n, dims)
    meta = table.schema.metadata or {}
    manifest: dict[str, Any] = {}
    if b"near" in meta:
        manifest = json.loads(meta[b"near"])
    else:
        manifest = {k.decode(): v.decode() for k, v in meta.items() if k.decode() in _MANIFEST_KEYS}
    return vectors, manifest


def _from_safetensors(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            keys = list(f.keys())
            names = [k for k in _COLUMNS if k in keys] or keys
            if len(names) != 1 and not any(k in _COLUMNS for k in names):
                raise InputError(f"{path}: expected one tensor named one of {', '.join(_COLUMNS)}; found {keys}")
            vectors = f.get_tensor(names[0])
            manifest: dict[str, Any] = dict(f.metadata() or {})
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from exc
    return vectors, manifest


def _npy_rows(path: Path) -> np.ndarray | NpyRows:
    """A ``.npy`` file's rows, read block by block as they are imported (never memory-mapped: a file
    truncated during the import must fail the import, not kill the process with SIGBUS); a Fortran-
    ordered file (``np.save`` of a transposed array) is read whole, its rows not being contiguous."""
    with open(path, "rb") as fh:
        fortran = npy_header(fh)[1]
    return np.load(path, allow_pickle=False) if fortran else NpyRows(path)


def read_vector_file(path: str | Path, manifest_path: str | Path | None = None) -> VectorFile:
    """Read ``path``'s vectors (``.npy`` rows on demand, see :class:`NpyRows`) and find its manifest."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"{p}: no such embeddings file")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            vectors = _npy_rows(p)
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(f"{p}: not a readable .npy file ({exc})") from exc
        inline: dict[str, Any] = {}
    elif suffix == ".parquet":
        vectors, inline = _from_parquet(p)
    elif suffix == ".safetensors":
        vectors, inline = _from_safetensors(p)
    else:
        raise InputError(f"{p}: embeddings must be one of {', '.join(FORMATS)}")
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
        raise InputError(f"{p}: expected a 2-D float array (rows x dims), got {vectors.dtype} {vectors.shape}")
    found = _json_manifest(p, Path(manifest_path).expanduser() if manifest_path else None)
    if found is not None:
        return VectorFile(p, vectors, found[0], found[1])
    return VectorFile(p, vectors, inline, f"{p.name} metadata" if inline else None)


def model_matches(declared: str, embedder: Embedder, settings_model: str) -> bool:
    """Whether a manifest's model names the embedder's model (hub id, local path or its last part)."""

    def short(name: str) -> str:
        return name.rstrip("/").rsplit("/", 1)[-1].lower()

    ours = {embedder.spec.name, settings_model, str(embedder.spec.path)}
    return declared in ours or short(declared) in {short(n) for n in ours}


def _check(vf: VectorFile, embedder: Embedder, settings: Settings, fingerprint: str, count: int, dims: int) -> None:
    m, where = vf.manifest, vf.manifest_from or "no manifest"
    n, d = vf.vectors.shape
    declared = m.get("model")
    if m.get("namespace") == embedder.namespace:
        pass  # written by this very embedder configuration
    elif declared is None and not settings.embeddings_trust_model:
        raise ConfigError(
            f"{vf.path}: no manifest names the model these vectors come from ({where}); write "
            f'{vf.path.name}.json with {{"model": "{embedder.spec.name}"}}, or pass --embeddings-trust-model true '
            f"if they are vectors of {embedder.spec.name}"
        )
    elif declared is not None and not model_matches(str(declared), embedder, settings.model):
        if not settings.embeddings_trust_model:
            raise ConfigError(
                f"{vf.path}: the vectors are from model {declared!r} ({where}) but this service embeds queries "
                f"with {embedder.spec.name!r}; vectors of different models cannot be compared. Serve with "
                f"--model {declared}, or pass --embeddings-trust-model true if they are vectors of "
                f"{embedder.spec.name}"
            )
        log.warning("%s: manifest names model %r; trusted as vectors of %s", vf.path, declared, embedder.spec.name)
    if n != count:
        raise InputError(f"{vf.path}: {n} rows, but the candidate pool has {count} candidates (one row each)")
    declared_count = m.get("count", m.get("pool_size"))
    if declared_count is not None and int(declared_count) != n:
        raise InputError(f"{vf.path}: {n} rows, but its manifest ({where}) says {declared_count}")
    declared_fp = m.get("pool_fingerprint", m.get("fingerprint"))
    if declared_fp is not None and declared_fp != fingerprint:
        raise InputError(
            f"{vf.path}: made for pool {declared_fp}, but the candidate pool is {fingerprint} "
            "(different texts or order; check --candidates and --template)"
        )
    if declared_fp is None:
        log.warning("%s: no pool_fingerprint in the manifest; row order is trusted, not checked", vf.path)
    if d != dims:
        raise InputError(f"{vf.path}: vectors have {d} dims, model {embedder.spec.name} makes {dims}")
    if m.get("dims") is not None and int(m["dims"]) != d:
        raise InputError(f"{vf.path}: vectors have {d} dims, but its manifest ({where}) says {m['dims']}")


def _normalised_into(src: np.ndarray | NpyRows, out: np.ndarray, path: Path) -> int:
    """Copy ``src`` into ``out`` as float32 unit rows, block by block; return how many were rescaled."""
    rescaled = 0
    for start in range(0, len(src), _BLOCK):
        try:
            block = np.asarray(src[start : start + _BLOCK], dtype=np.float32)
        except (OSError, ValueError) as exc:  # the file changed under the import
            raise InputError(f"{path}: could not read rows from {start} on ({exc})") from exc
        norms = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float64))
        bad = ~np.isfinite(norms) | (norms < 1e-12)
        if bad.any():
            row = start + int(np.flatnonzero(bad)[0])
            what = "all zeros" if np.isfinite(norms[bad][0]) else "not finite"
            raise InputError(f"{path}: row {row} is {what}; every candidate needs a usable vector")
        off = np.abs(norms - 1.0) > NORM_TOLERANCE / 4
        rescaled += int(off.sum())
        out[start : start + len(block)] = block / norms[:, None].astype(np.float32) if off.any() else block
    return rescaled


def import_vectors(
    settings: Settings,
    embedder: Embedder,
    path: str | Path,
    fingerprint: str,
    count: int,
    manifest_path: str | Path | None = None,
) -> np.ndarray:
    """Check ``path`` against the pool and the model, store it, and return the vectors to serve.

    Loads the model (its vector size is part of the check). With a cache folder the result is the
    store's file read back (checked), without one an in-memory array.
    """
    vf = read_vector_file(path, manifest_path)
    dims = embedder.load().dim
    _check(vf, embedder, settings, fingerprint, count, dims)
    store = PoolVectorStore(settings.cache_dir) if settings.cache_dir else None
    if store is None:
        out = np.empty(vf.vectors.shape, dtype=np.float32)
        rescaled = _normalised_into(vf.vectors, out, vf.path)
    else:
        with store.writer(embedder.namespace, fingerprint, count, dims, embedder.spec.name, vf.source) as mapped:
            rescaled = _normalised_into(vf.vectors, mapped, vf.path)
    if rescaled:
        log.warning("%s: %d of %d rows were not unit length; L2-normalised them", vf.path, rescaled, count)
    log.info("imported %d x %d vectors from %s (pool %s)", count, dims, vf.path, fingerprint)
    if store is None:
        return out
    loaded = store.load(embedder.namespace, fingerprint, count, dims)
    if loaded is None:
        raise InputError(f"{vf.path}: the imported pool file could not be read back from {store.root}")
    return loaded


def stored_pool_vectors(settings: Settings, embedder: Embedder, fingerprint: str, count: int) -> np.ndarray | None:
    """The pool's vectors without embedding: from ``settings.embeddings`` (imported unless the store
    already holds that very file) or from the pool store; None when the pool must be embedded."""
    store = PoolVectorStore(settings.cache_dir) if settings.cache_dir else None
    if settings.embeddings is not None:
        if store is not None:
            meta = store.manifest(embedder.namespace, fingerprint)
            p = Path(settings.embeddings).expanduser()
            if meta is not None and p.is_file() and meta.source == file_source(p):
                hit = store.load(embedder.namespace, fingerprint, count, embedder.load().dim)
                if hit is not None:
                    return hit
        return import_vectors(settings, embedder, settings.embeddings, fingerprint, count)
    if store is None:
        return None
    return store.load(embedder.namespace, fingerprint, count, embedder.load().dim)


def remember_pool_vectors(settings: Settings, embedder: Embedder, fingerprint: str, vectors: np.ndarray) -> None:
    """After embedding a pool, write its file so the next start maps it (never fails the caller)."""
    if not settings.cache_dir:
        return
    try:
        PoolVectorStore(settings.cache_dir).save(embedder.namespace, fingerprint, vectors, embedder.spec.name)
    except OSError as exc:
        log.warning("could not write the pool vector file (%s); the next start reads the caches instead", exc)
