"""Embedding caches: content-addressed vectors, so no text is embedded twice for the same settings.

A key is ``sha256(namespace, text)`` where the namespace hashes the model id and revision, backend,
dtype, max length and pooling, and the text already carries its prompt. Values are float32 bytes.
Stores share one small protocol so the embedder can chain them (Redis first, then disk).

>>> store = DiskCache(tmp_path)                                   # doctest: +SKIP
>>> store.put_many([(text_key("ns", "hi"), b"\\0" * 4)])           # doctest: +SKIP
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from near_service.core.embedder import EmbeddingStore, text_key

__all__ = ["DiskCache", "EmbeddingStore", "RedisCache", "text_key"]

log = logging.getLogger(__name__)

_SQL_CHUNK = 900  # stays under SQLite's bound-parameter limit


class DiskCache:
    """SQLite file under ``cache_dir``; every batch is committed, so a killed run keeps its work."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.path = Path(cache_dir).expanduser() / "embeddings.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, vec BLOB NOT NULL) WITHOUT ROWID")
        self._db.commit()

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        found: dict[str, bytes] = {}
        with self._lock:
            for start in range(0, len(keys), _SQL_CHUNK):
                chunk = keys[start : start + _SQL_CHUNK]
                marks = ",".join("?" * len(chunk))
                found.update(self._db.execute(f"SELECT key, vec FROM emb WHERE key IN ({marks})", chunk))
        return [found.get(k) for k in keys]

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        if not items:
            return
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO emb (key, vec) VALUES (?, ?)", items)
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM emb").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RedisCache:
    """Redis as an :class:`EmbeddingStore` shared by replicas and restarts; fails open.

    Keys are ``near:emb:<text_key>``, read with pipelined MGETs and written with pipelined SETs, in
    batches. A Redis error never fails a caller: reads become misses, writes are skipped, the store
    is marked down, and it tries again after a backoff (0.5 s doubling to 5 s), so it reconnects by
    itself once Redis is back. ``check()`` pings (a health loop calls it) and clears the backoff.

    >>> store = RedisCache(redis.Redis.from_url("redis://localhost:6379/0"))   # doctest: +SKIP
    """

    prefix = "near:emb:"
    batch = 1000

    def __init__(self, client: object, min_backoff: float = 0.5, max_backoff: float = 5.0) -> None:
        self.client: Any = client
        self.up = True
        self.errors = 0
        self._min_backoff, self._max_backoff = min_backoff, max_backoff
        self._backoff = min_backoff
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def _usable(self) -> bool:
        return self.up or time.monotonic() >= self._retry_at

    def mark_down(self, exc: BaseException) -> None:
        with self._lock:
            if self.up:
                log.warning("Redis unavailable (%s: %s); continuing without it", type(exc).__name__, exc)
            self.up = False
            self.errors += 1
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, self._max_backoff)

    def mark_up(self) -> None:
        with self._lock:
            if not self.up:
                log.warning("Redis is back")
            self.up = True
            self._backoff = self._min_backoff

    def check(self) -> bool:
        """Ping Redis now (ignoring the backoff); return and record whether it answered."""
        try:
            self.client.ping()
        except Exception as exc:  # redis errors and socket errors alike: fail open
            self.mark_down(exc)
            return False
        self.mark_up()
        return True

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys or not self._usable():
            return [None] * len(keys)
        try:
            pipe = self.client.pipeline(transaction=False)
            for start in range(0, len(keys), self.batch):
                pipe.mget([self.prefix + k for k in keys[start : start + self.batch]])
            found = [v for chunk in pipe.execute() for v in chunk]
        except Exception as exc:
            self.mark_down(exc)
            return [None] * len(keys)
        self.mark_up()
        return found

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        if not items or not self._usable():
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for start in range(0, len(items), self.batch):
                pipe.mset({self.prefix + k: v for k, v in items[start : start + self.batch]})
            pipe.execute()
        except Exception as exc:
            self.mark_down(exc)
            return
        self.mark_up()
