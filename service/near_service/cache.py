"""Embedding caches: content-addressed vectors, so no text is embedded twice for the same settings.

A key is ``sha256(namespace, text)`` where the namespace hashes the model id and revision, backend,
dtype, max length and pooling, and the text already carries its prompt. Values are float32 bytes.
Stores share one small protocol so the embedder can chain them (Redis first, then disk).

>>> store = DiskCache(tmp_path)                                   # doctest: +SKIP
>>> store.put_many([(text_key("ns", "hi"), b"\\0" * 4)])           # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

_SQL_CHUNK = 900  # stays under SQLite's bound-parameter limit


def text_key(namespace: str, text: str) -> str:
    return hashlib.sha256(namespace.encode() + b"\x00" + text.encode("utf-8")).hexdigest()


class EmbeddingStore(Protocol):
    """What the embedder needs of a cache: batched get and put."""

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None: ...


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
                chunk = keys[start:start + _SQL_CHUNK]
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
