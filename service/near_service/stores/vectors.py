"""The pool vector store: one float32 ``.npy`` file per (embedder namespace, pool fingerprint).

A million-row pool as a million Redis or SQLite entries costs minutes to read back at every start;
as one contiguous ``.npy`` file it is read in a second at disk speed and searched as it is. Layout::

    <cache_dir>/pools/<namespace>/<fingerprint>.npy     float32 (count, dims), L2-normalised rows
    <cache_dir>/pools/<namespace>/<fingerprint>.json    manifest: model, namespace, dims, count, checksum

Both are written to a temporary name, flushed and renamed, the manifest last, so a reader sees a
whole pool file or none. :meth:`PoolVectorStore.load` checks the manifest against the pool, the file
size, a checksum over the header and a sample of rows, and every row's norm. The file is read into the
process (:func:`read_npy`: a copy, so damage to the file while serving cannot reach a search). A file
that fails any check is moved aside (``*.damaged-<time>``) with a warning and the caller embeds the
pool again: damage never crashes.

>>> store = PoolVectorStore(tmp_path)                                            # doctest: +SKIP
>>> store.save(embedder.namespace, pool.fingerprint, vectors, model="all-MiniLM-L6-v2")   # doctest: +SKIP
>>> store.load(embedder.namespace, pool.fingerprint, count=len(texts)) is not None        # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mmap
import os
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["NORM_TOLERANCE", "NpyRows", "PoolManifest", "PoolVectorStore", "npy_header", "read_npy", "sample_checksum"]

log = logging.getLogger(__name__)

FORMAT = 1
NORM_TOLERANCE = 2e-3  # |norm - 1| of a stored row; float32 rounding is ~1e-7, damage is far off
_BLOCK_ROWS = 65536
_SAMPLE_ROWS = 1024


@dataclass(frozen=True)
class PoolManifest:
    """What a pool file holds; written next to it as JSON."""

    namespace: str
    fingerprint: str
    model: str
    count: int
    dims: int
    checksum: str  # sha256 over the shape and a sample of rows (see sample_checksum)
    dtype: str = "float32"
    source: str = "embedded"  # embedded | imported:<file name> | ray
    created: float = 0.0
    format: int = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> PoolManifest:
        data: dict[str, Any] = json.loads(text)
        fields = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in fields})


def sample_checksum(vectors: np.ndarray) -> str:
    """sha256 over the shape, the dtype and up to 1024 evenly spaced rows (first and last included)."""
    n, d = vectors.shape
    h = hashlib.sha256(f"{n}x{d}:{vectors.dtype.str}".encode())
    if n:
        rows = np.unique(np.linspace(0, n - 1, min(n, _SAMPLE_ROWS)).astype(np.int64))
        h.update(np.ascontiguousarray(vectors[rows]).tobytes())
    return h.hexdigest()


def _bad_rows(vectors: np.ndarray) -> tuple[int, int]:
    """(rows whose norm is off 1 or not finite, first such row or -1), reading the array once."""
    bad, first = 0, -1
    for start in range(0, len(vectors), _BLOCK_ROWS):
        block = vectors[start : start + _BLOCK_ROWS]
        norms = np.einsum("ij,ij->i", block, block)
        off = ~(np.abs(norms - 1.0) <= 2 * NORM_TOLERANCE)  # squared norm; NaN counts as off
        if off.any():
            if first < 0:
                first = start + int(np.flatnonzero(off)[0])
            bad += int(off.sum())
    return bad, first


def read_npy(path: Path, chunk_bytes: int = 16 << 20, threads: int = 2) -> np.ndarray:
    """``path`` (a 2-D ``.npy`` file) read into memory of this process, read-only.

    A copy, not a mapping: a mapped file that is truncated or overwritten in place while the service
    runs (``> file``, ``truncate``, a careless copy over it) kills the whole process with SIGBUS at its
    next search; a copy cannot be changed under the service. ``threads`` threads read interleaved
    ``chunk_bytes`` chunks straight into the array (``os.preadv`` releases the GIL, so the disk reads
    and the first-touch page faults of the new memory overlap: 1.2x a plain read of the file at 1.4 GiB
    here, 1.6x with one thread); each chunk's file pages are dropped from the page cache once read, so
    the vectors are in memory once, not twice, even while they are read. Raises OSError/ValueError on
    a file that is not a whole ``.npy`` array (a truncated file included).
    """
    with open(path, "rb", buffering=0) as fh:
        shape, fortran, dtype, offset = npy_header(fh)
        if fortran or len(shape) != 2 or dtype.hasobject:
            raise ValueError(f"expected a C-ordered 2-D numeric array, found {dtype} {shape} (fortran {fortran})")
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if nbytes == 0:
            return np.empty(shape, dtype=dtype)
        memory = _anonymous(nbytes)
        with memoryview(memory) as buf:
            _read_chunks(fh, buf, offset, chunk_bytes, threads)
    out = np.frombuffer(memory, dtype=dtype).reshape(shape)
    out.flags.writeable = False
    return out


def npy_header(fh: Any) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    """(shape, fortran order, dtype, data offset) of the ``.npy`` file open in ``fh``; ValueError when
    its header is not one, or the file is shorter than the array it declares."""
    fmt = np.lib.format
    version = fmt.read_magic(fh)  # type: ignore[no-untyped-call]
    read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, fortran, dtype = read_header(fh)  # type: ignore[no-untyped-call]
    offset = fh.tell()
    if int(np.prod(shape)) * dtype.itemsize > os.fstat(fh.fileno()).st_size - offset:
        raise ValueError(f"file is shorter than its {shape} {dtype} array: truncated")
    return tuple(shape), bool(fortran), dtype, offset


class NpyRows:
    """A C-ordered ``.npy`` file's rows, read on demand: ``rows[a:b]`` is an in-memory array.

    For reading a file someone else owns once, block by block (``near-select import``): positioned
    reads on one open descriptor, never a mapping, so a file truncated while it is read raises
    ValueError in the reader instead of killing the process with SIGBUS, and its pages are dropped
    from the page cache as they are read. ``shape``, ``dtype`` and ``ndim`` are the file's.
    """

    def __init__(self, path: Path) -> None:
        fh = open(path, "rb", buffering=0)  # noqa: SIM115 - held for the object's life, closed by finalize
        self._closer = weakref.finalize(self, fh.close)
        try:
            self.shape, fortran, self.dtype, self._offset = npy_header(fh)
        except BaseException:
            self._closer()
            raise
        if fortran or self.dtype.hasobject:
            self._closer()
            raise ValueError(f"expected a C-ordered numeric array, found {self.dtype} {self.shape} (fortran {fortran})")
        self._fh = fh
        self.ndim = len(self.shape)
        self._row_items = int(np.prod(self.shape[1:])) if self.ndim else 1

    def __len__(self) -> int:
        return self.shape[0] if self.ndim else 1

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(len(self))
        if step != 1:
            raise IndexError("NpyRows reads contiguous row ranges only")
        n = max(0, stop - start)
        row_bytes = self._row_items * self.dtype.itemsize
        buf = bytearray(n * row_bytes)
        if buf:
            with memoryview(buf) as view:  # one chunk, one thread: read_npy's loop, page-cache drop included
                _read_chunks(self._fh, view, self._offset + start * row_bytes, len(buf), threads=1)
        return np.frombuffer(buf, dtype=self.dtype).reshape((n, *self.shape[1:]))

    def close(self) -> None:
        self._closer()


def _read_chunks(fh: Any, buf: memoryview, offset: int, chunk_bytes: int, threads: int) -> None:
    """Fill ``buf`` from the file at ``offset``: chunk ``i`` by thread ``i % threads``, each chunk
    dropped from the page cache once read (where the OS has ``posix_fadvise``)."""
    fd, size = fh.fileno(), len(buf)
    starts = range(0, size, chunk_bytes)
    # no positioned reads (not Unix): one thread, seek + read
    threads = max(1, min(threads, len(starts))) if hasattr(os, "preadv") else 1

    def read_at(pos: int, end: int) -> int:
        if hasattr(os, "preadv"):
            return os.preadv(fd, [buf[pos:end]], offset + pos)
        fh.seek(offset + pos)
        return int(fh.readinto(buf[pos:end]) or 0)

    def work(first: int, step: int) -> None:
        for start in starts[first::step]:
            pos, end = start, min(size, start + chunk_bytes)
            while pos < end:
                got = read_at(pos, end)
                if got <= 0:
                    raise ValueError(f"file ended after {pos} of {size} bytes: truncated while read")
                pos += got
            if hasattr(os, "posix_fadvise"):  # drop what was read: the page cache never holds a second copy
                os.posix_fadvise(fd, offset + start, end - start, os.POSIX_FADV_DONTNEED)

    if threads == 1:
        work(0, 1)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="pool-read") as workers:
        for done in [workers.submit(work, k, threads) for k in range(threads)]:
            done.result()  # re-raises a worker's error


def _anonymous(nbytes: int) -> mmap.mmap:
    """Private anonymous memory of ``nbytes``, in 4 KiB pages.

    Not ``np.empty``: numpy asks for transparent huge pages on large arrays, and where the kernel
    compacts memory to find them (``defrag=madvise``, a common default) reading 1.4 GiB into it took
    0.4 to 3.5 s from one call to the next here; into 4 KiB pages, 0.65-0.85 s every time.
    """
    if hasattr(mmap, "MAP_ANONYMOUS"):
        return mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return mmap.mmap(-1, nbytes)


class PoolVectorStore:
    """Pool files under ``<cache_dir>/pools``; see the module docstring for layout and checks."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.root = Path(cache_dir).expanduser() / "pools"

    def paths(self, namespace: str, fingerprint: str) -> tuple[Path, Path]:
        folder = self.root / namespace
        return folder / f"{fingerprint}.npy", folder / f"{fingerprint}.json"

    def manifest(self, namespace: str, fingerprint: str) -> PoolManifest | None:
        """The manifest of a stored pool, or None when there is none (or it is unreadable)."""
        _, meta = self.paths(namespace, fingerprint)
        try:
            return PoolManifest.from_json(meta.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            self._quarantine(namespace, fingerprint, f"unreadable manifest ({exc})")
            return None

    def load(self, namespace: str, fingerprint: str, count: int, dims: int | None = None) -> np.ndarray | None:
        """The stored vectors of this pool, read into memory (read-only); None if absent or damaged."""
        path, _ = self.paths(namespace, fingerprint)
        meta = self.manifest(namespace, fingerprint)
        if meta is None:
            if path.exists():  # a file without its manifest: a write that did not finish
                self._quarantine(namespace, fingerprint, "no manifest")
            return None
        t0 = time.perf_counter()
        problem = None
        vectors: np.ndarray | None = None
        if (meta.namespace, meta.fingerprint, meta.count) != (namespace, fingerprint, count):
            problem = f"manifest is for {meta.count} rows of pool {meta.fingerprint}, not {count} rows of {fingerprint}"
        elif dims is not None and meta.dims != dims:
            problem = f"{meta.dims} dims stored, the model has {dims}"
        else:
            try:
                vectors = read_npy(path)
            except (OSError, ValueError, EOFError) as exc:  # a truncated file fails here
                problem = f"unreadable ({type(exc).__name__}: {exc})"
        if vectors is not None and problem is None:
            if (
                vectors.shape != (meta.count, meta.dims)
                or vectors.dtype != np.float32
                or not vectors.flags.c_contiguous
            ):
                problem = f"holds {vectors.dtype} {vectors.shape}, manifest says float32 ({meta.count}, {meta.dims})"
            elif sample_checksum(vectors) != meta.checksum:
                problem = "checksum mismatch"
            else:
                bad, first = _bad_rows(vectors)
                if bad:
                    problem = f"{bad} rows are not unit vectors (first: row {first})"
        if problem is not None:
            del vectors
            self._quarantine(namespace, fingerprint, problem)
            return None
        assert vectors is not None
        log.info(
            "pool vectors: read %s (%d x %d, %.0f MiB) in %.2fs",
            path,
            meta.count,
            meta.dims,
            vectors.nbytes / 2**20,
            time.perf_counter() - t0,
        )
        return vectors

    def save(
        self, namespace: str, fingerprint: str, vectors: np.ndarray, model: str, source: str = "embedded"
    ) -> PoolManifest:
        """Write ``vectors`` (float32, L2-normalised rows) as this pool's file, atomically."""
        with self.writer(namespace, fingerprint, vectors.shape[0], vectors.shape[1], model, source) as out:
            for start in range(0, len(vectors), _BLOCK_ROWS):
                out[start : start + _BLOCK_ROWS] = vectors[start : start + _BLOCK_ROWS]
        meta = self.manifest(namespace, fingerprint)
        assert meta is not None
        return meta

    @contextlib.contextmanager
    def writer(
        self, namespace: str, fingerprint: str, count: int, dims: int, model: str, source: str = "embedded"
    ) -> Iterator[np.ndarray]:
        """Yield a writable (count, dims) float32 mapping of a temporary file; on a clean exit it is
        flushed, checksummed and renamed into place with its manifest (on an error it is removed)."""
        path, meta_path = self.paths(namespace, fingerprint)
        path.parent.mkdir(parents=True, exist_ok=True)
        tag = f"{os.getpid()}-{time.monotonic_ns()}"
        tmp = path.with_name(f".{path.name}.tmp-{tag}")
        tmp_meta = meta_path.with_name(f".{meta_path.name}.tmp-{tag}")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(count, dims))  # type: ignore[no-untyped-call]
        try:
            yield out
            out.flush()
            meta = PoolManifest(
                namespace=namespace,
                fingerprint=fingerprint,
                model=model,
                count=count,
                dims=dims,
                checksum=sample_checksum(out),
                source=source,
                created=time.time(),
            )
            del out
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            tmp_meta.write_text(meta.to_json(), encoding="utf-8")
            with contextlib.suppress(FileNotFoundError):
                meta_path.unlink()  # never leave an old manifest beside a new file
            os.replace(tmp, path)
            os.replace(tmp_meta, meta_path)
            log.info("pool vectors: wrote %s (%d x %d, %s)", path, count, dims, source)
        finally:
            for leftover in (tmp, tmp_meta):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

    def _quarantine(self, namespace: str, fingerprint: str, reason: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        moved = []
        for p in self.paths(namespace, fingerprint):
            if p.exists():
                target = p.with_name(f"{p.name}.damaged-{stamp}")
                with contextlib.suppress(OSError):
                    os.replace(p, target)
                    moved.append(target.name)
        log.warning(
            "pool vectors for %s/%s are damaged (%s); moved aside as %s, the pool will be embedded again",
            namespace,
            fingerprint,
            reason,
            ", ".join(moved) or "-",
        )

    def size_bytes(self) -> int:
        """Bytes of every pool file in the store."""
        return sum(p.stat().st_size for p in self.root.glob("*/*.npy")) if self.root.exists() else 0
