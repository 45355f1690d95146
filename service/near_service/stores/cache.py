"""Embedding caches: content-addressed vectors, so no text is embedded twice for the same settings.

A key is ``sha256(namespace, text)`` where the namespace hashes the model id and revision, backend,
dtype, max length and pooling, and the text already carries its prompt. Values are the embedder's
blobs (:func:`~near_service.core.embedder.encode_blob`: magic, crc32, float32 bytes), checked on read.
Stores share one small protocol so the embedder can chain them (Redis first, then disk).

>>> store = DiskCache(tmp_path)                                   # doctest: +SKIP
>>> store.put_many([(text_key("ns", "hi"), b"\\0" * 4)])           # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from near_service.core.embedder import EmbeddingStore, text_key
from near_service.stores.breaker import Breaker

__all__ = ["Breaker", "DiskCache", "EmbeddingStore", "RedisCache", "text_key"]

log = logging.getLogger(__name__)

_SQL_CHUNK = 900  # stays under SQLite's bound-parameter limit


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    """A damaged file (not a database, malformed image), as opposed to a locked or full disk."""
    name = getattr(exc, "sqlite_errorname", None)
    return name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") if name else type(exc) is sqlite3.DatabaseError


class DiskCache:
    """SQLite file under ``cache_dir``; every batch is committed, so a killed run keeps its work.

    A damaged file (truncated, overwritten, "not a database") never stops the service: at open or
    on any later read or write it is moved aside to ``embeddings.sqlite3.corrupt-<time>`` with an
    ERROR log line and an empty cache takes its place; what it held is embedded again. Other SQLite
    errors (a full disk, a lock held too long) fail open: reads become misses, writes are skipped.
    """

    def __init__(self, cache_dir: str | Path) -> None:
        self.path = Path(cache_dir).expanduser() / "embeddings.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.moved_aside: list[Path] = []
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise
            self._move_aside(exc)
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, timeout=60)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, vec BLOB NOT NULL) WITHOUT ROWID")
            db.commit()
            db.execute("SELECT key, vec FROM emb LIMIT 1").fetchall()  # reads a page: catches most damage now
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _move_aside(self, exc: BaseException) -> None:
        aside = self.path.with_name(
            f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**6}"
        )
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                src.replace(Path(f"{aside}{suffix}"))
        self.moved_aside.append(aside)
        log.error(
            "embedding cache %s is damaged (%s: %s); moved it to %s and started an empty one",
            self.path,
            type(exc).__name__,
            exc,
            aside,
        )

    def _recover(self, exc: sqlite3.DatabaseError) -> bool:
        """After a failed call (lock held): start over on corruption; True if the call may be retried."""
        if not _is_corrupt(exc):
            log.warning(
                "embedding cache %s: %s: %s; continuing without it for this call", self.path, type(exc).__name__, exc
            )
            return False
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        self._move_aside(exc)
        self._db = self._open()
        return True

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        found: dict[str, bytes] = {}
        with self._lock:
            try:
                for start in range(0, len(keys), _SQL_CHUNK):
                    chunk = keys[start : start + _SQL_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    found.update(self._db.execute(f"SELECT key, vec FROM emb WHERE key IN ({marks})", chunk))
            except sqlite3.DatabaseError as exc:
                self._recover(exc)
                return [None] * len(keys)
        return [found.get(k) for k in keys]

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        if not items:
            return
        with self._lock:
            for _attempt in range(2):
                try:
                    self._db.executemany("INSERT OR REPLACE INTO emb (key, vec) VALUES (?, ?)", items)
                    self._db.commit()
                    return
                except sqlite3.DatabaseError as exc:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.rollback()
                    if not self._recover(exc):
                        return

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM emb").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RedisCache:
    """Redis as an :class:`EmbeddingStore` shared by replicas and restarts; fails open, fast.

    Keys are ``near:emb:<text_key>``, read with pipelined MGETs and written with pipelined SETs, in
    batches; ``ttl`` (seconds) makes the written keys expire (query vectors), ``None`` keeps them
    (pool vectors). A Redis error never fails a caller: reads become misses, writes are skipped.
    The client's short socket timeout bounds one call, and the :class:`Breaker` (shared with the
    ledger) skips Redis after a failure, so a hung Redis costs one timeout per backoff window, not
    one per call. ``check()`` pings (the health loop calls it) and reports to the breaker.

    >>> store = RedisCache(redis.Redis.from_url("redis://localhost:6379/0"))   # doctest: +SKIP
    """

    prefix = "near:emb:"
    batch = 1000

    def __init__(self, client: object, breaker: Breaker | None = None, ttl: int | None = None) -> None:
        self.client: Any = client
        self.breaker = breaker if breaker is not None else Breaker()
        self.ttl = ttl or None

    @property
    def up(self) -> bool:
        return self.breaker.up

    @property
    def errors(self) -> int:
        return self.breaker.errors

    def mark_down(self, exc: BaseException) -> None:
        self.breaker.failure(exc)

    def with_ttl(self, ttl: int | None) -> RedisCache:
        """The same Redis and breaker, writing keys that expire after ``ttl`` seconds."""
        return RedisCache(self.client, self.breaker, ttl)

    def check(self) -> bool:
        """Ping Redis now (ignoring the backoff); return and record whether it answered."""
        try:
            self.client.ping()
        except Exception as exc:  # redis errors and socket errors alike: fail open
            self.breaker.failure(exc)
            return False
        self.breaker.success()
        return True

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys or not self.breaker.allow():
            return [None] * len(keys)
        try:
            pipe = self.client.pipeline(transaction=False)
            for start in range(0, len(keys), self.batch):
                pipe.mget([self.prefix + k for k in keys[start : start + self.batch]])
            found = [v for chunk in pipe.execute() for v in chunk]
        except Exception as exc:
            self.breaker.failure(exc)
            return [None] * len(keys)
        self.breaker.success()
        return found

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        if not items or not self.breaker.allow():
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            if self.ttl is None:
                for start in range(0, len(items), self.batch):
                    pipe.mset({self.prefix + k: v for k, v in items[start : start + self.batch]})
            else:
                for k, v in items:
                    pipe.set(self.prefix + k, v, ex=self.ttl)
            pipe.execute()
        except Exception as exc:
            self.breaker.failure(exc)
            return
        self.breaker.success()
