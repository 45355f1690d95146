"""The pools registered at run time, on disk, so they come back after a restart.

Layout (under ``<cache_dir>/registry``; the vectors and statistics stay in the pool store)::

    pools/<name>.json          PoolRecord: name, fingerprint, rows, source, files, template, options
    texts/<fingerprint>.jsonl  the pool's texts, one JSON string a line, written before the record

Both are written to a temporary name, fsynced and renamed, the texts first: a record on disk always
has its texts, and a kill -9 at any moment leaves a pool registered whole or not at all (a
temporary file is never read). The texts are written one line at a time, so a large pool is not
held a second time as one serialized copy. A record whose texts are missing or do not match its
fingerprint is logged and dropped, never a crash. Registries written before the texts were JSON
lines hold ``texts/<fingerprint>.json`` (one JSON list); those are still read.

>>> registry = Registry(tmp_path)                                   # doctest: +SKIP
>>> registry.save(record, texts); registry.records()[0].name         # doctest: +SKIP
'x'
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from near_schema import fingerprint

__all__ = ["PoolRecord", "Registry"]

log = logging.getLogger(__name__)


@dataclass
class PoolRecord:
    """What a registered pool is, as far as a restart needs to know."""

    name: str
    fingerprint: str
    rows: int
    source: str  # texts | files
    template: str = "default"
    files: list[str] = field(default_factory=list)
    density_stats: str | None = None
    created_at: float = 0.0


#: Temporary files older than this are left over from a killed process (a write takes seconds).
STALE_TMP_S = 3600.0


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """``write`` the file's content to a temporary name beside ``path``, fsync, rename over ``path``.

    On any error (a full disk: ENOSPC) the temporary file is removed and ``path`` is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    try:
        with open(tmp, "wb", buffering=1 << 18) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (best effort: not every platform can open a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _json_lines(texts: Iterable[str]) -> Callable[[IO[bytes]], None]:
    def write(fh: IO[bytes]) -> None:
        for t in texts:  # one text at a time: never a second whole copy of the pool in memory
            fh.write(orjson.dumps(t, option=orjson.OPT_APPEND_NEWLINE))

    return write


def _content(data: bytes) -> Callable[[IO[bytes]], None]:
    def write(fh: IO[bytes]) -> None:
        fh.write(data)

    return write


class Registry:
    """Registered pools under ``root`` (None: nothing is kept across restarts)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def _record_path(self, name: str) -> Path:
        assert self.root is not None
        return self.root / "pools" / f"{name}.json"

    def _texts_path(self, fp: str) -> Path:
        assert self.root is not None
        return self.root / "texts" / f"{fp}.jsonl"

    def _legacy_texts_path(self, fp: str) -> Path:
        """Where registries of earlier versions kept the texts (one JSON list)."""
        assert self.root is not None
        return self.root / "texts" / f"{fp}.json"

    def save(self, record: PoolRecord, texts: list[str]) -> None:
        """Write the texts (unless that content is there already), then the record.

        Raises ``OSError`` (ENOSPC on a full disk) with nothing new left behind: a texts file this
        call wrote is removed again when the record cannot be written."""
        if self.root is None:
            return
        tp = self._texts_path(record.fingerprint)
        wrote = not tp.exists() and not self._legacy_texts_path(record.fingerprint).exists()
        if wrote:
            _atomic_write(tp, _json_lines(texts))
        try:
            _atomic_write(self._record_path(record.name), _content(json.dumps(asdict(record), indent=1).encode()))
        except BaseException:
            if wrote:
                tp.unlink(missing_ok=True)
            raise

    def texts(self, fp: str) -> list[str] | None:
        """The texts of content ``fp``, checked against the fingerprint (None if absent or damaged)."""
        if self.root is None:
            return None
        path = self._texts_path(fp)
        try:
            data = self._read_lines(path) if path.exists() else self._read_legacy(self._legacy_texts_path(fp))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
            log.warning("registry: %s is unreadable (%s)", path, exc)
            return None
        if data is None or fingerprint(data) != fp:
            log.warning("registry: %s does not hold the texts of %s; not used", path, fp)
            return None
        return data

    @staticmethod
    def _read_lines(path: Path) -> list[str] | None:
        out: list[str] = []
        with open(path, "rb") as fh:
            for line in fh:
                value = orjson.loads(line)
                if not isinstance(value, str):
                    return None
                out.append(value)
        return out

    @staticmethod
    def _read_legacy(path: Path) -> list[str] | None:
        data: Any = orjson.loads(path.read_bytes())
        if not isinstance(data, list) or not all(isinstance(t, str) for t in data):
            return None
        return data

    def _remove_stale_tmp(self) -> None:
        """Temporary files a killed process left behind (never read; only their space is freed)."""
        assert self.root is not None
        now = time.time()
        for folder in (self.root / "texts", self.root / "pools"):
            for tmp in folder.glob(".*.tmp-*") if folder.is_dir() else ():
                with contextlib.suppress(OSError):
                    if now - tmp.stat().st_mtime > STALE_TMP_S:
                        tmp.unlink()
                        log.info("registry: removed %s, left over from an interrupted write", tmp.name)

    def records(self) -> list[PoolRecord]:
        """Every readable record, oldest first; damaged ones are moved aside with a warning."""
        if self.root is None or not (self.root / "pools").is_dir():
            return []
        self._remove_stale_tmp()
        out = []
        for path in sorted((self.root / "pools").glob("*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                out.append(PoolRecord(**{k: data[k] for k in PoolRecord.__dataclass_fields__ if k in data}))
            except (OSError, ValueError, TypeError, KeyError) as exc:
                aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
                log.warning("registry: %s is damaged (%s); moved to %s", path, exc, aside.name)
                with contextlib.suppress(OSError):
                    path.replace(aside)
        return sorted(out, key=lambda r: r.created_at)

    def remove(self, name: str, fp: str, keep_texts: bool) -> None:
        if self.root is None:
            return
        self._record_path(name).unlink(missing_ok=True)
        if not keep_texts:
            self._texts_path(fp).unlink(missing_ok=True)
            self._legacy_texts_path(fp).unlink(missing_ok=True)
