"""The pools registered at run time, on disk, so they come back after a restart.

Layout (under ``<cache_dir>/registry``; the vectors and statistics stay in the pool store)::

    pools/<name>.json         PoolRecord: name, fingerprint, rows, source, files, template, options
    texts/<fingerprint>.json  the pool's texts (a JSON list), written before the record

Both are written to a temporary name, flushed and renamed, the texts first: a record on disk always
has its texts, and a kill -9 at any moment leaves a pool registered whole or not at all. A record
whose texts are missing or do not match its fingerprint is logged and moved aside, never a crash.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class Registry:
    """Registered pools under ``root`` (None: nothing is kept across restarts)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def _record_path(self, name: str) -> Path:
        assert self.root is not None
        return self.root / "pools" / f"{name}.json"

    def _texts_path(self, fp: str) -> Path:
        assert self.root is not None
        return self.root / "texts" / f"{fp}.json"

    def save(self, record: PoolRecord, texts: list[str]) -> None:
        """Write the texts (unless that content is there already), then the record."""
        if self.root is None:
            return
        tp = self._texts_path(record.fingerprint)
        if not tp.exists():
            _atomic_write(tp, orjson.dumps(texts))
        _atomic_write(self._record_path(record.name), json.dumps(asdict(record), indent=1).encode())

    def texts(self, fp: str) -> list[str] | None:
        """The texts of content ``fp``, checked against the fingerprint (None if absent or damaged)."""
        if self.root is None:
            return None
        path = self._texts_path(fp)
        try:
            data: Any = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning("registry: %s is unreadable (%s)", path, exc)
            return None
        if not isinstance(data, list) or not all(isinstance(t, str) for t in data) or fingerprint(data) != fp:
            log.warning("registry: %s does not hold the texts of %s; not used", path, fp)
            return None
        return data

    def records(self) -> list[PoolRecord]:
        """Every readable record, oldest first; damaged ones are moved aside with a warning."""
        if self.root is None or not (self.root / "pools").is_dir():
            return []
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
