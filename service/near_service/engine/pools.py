"""One pool of the engine: its state, progress, memory and (once loaded) the searchable Pool.

A :class:`PoolEntry` moves ``queued -> embedding -> stats -> ready``; ``failed`` holds a message,
``evicted`` means the vectors are on disk only (the next ``/select`` reloads them). Between
``stats`` and ``ready`` the pool is searchable (``round_robin``, ``max_score``) while its density
statistics compute in the background.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from near_schema import PoolProgress, PoolSource, PoolState, PoolStatus, StatsState, StatsStatus
from near_service.core.pool import Pool
from near_service.stores.ledger import Ledger

__all__ = ["PoolCancelled", "PoolEntry"]


class PoolCancelled(RuntimeError):
    """The pool was deleted or replaced while its work was running."""


@dataclass(eq=False)
class PoolEntry:
    name: str
    fingerprint: str
    rows: int
    source: PoolSource
    template: str = "default"
    files: list[str] = field(default_factory=list)
    density_stats: str = "auto"
    created_at: float = field(default_factory=time.time)
    texts: list[str] | None = None
    state: PoolState = "queued"
    message: str | None = None
    pool: Pool | None = None
    planned_bytes: int = 0
    embedded: int = 0
    done: int = 0
    started: float | None = None
    stats_state: StatsState = "pending"
    stats_done: int = 0
    stats_total: int = 0
    stats_method: str | None = None
    stats_message: str | None = None
    last_used: float | None = None
    in_use: int = 0
    ledger: Ledger | None = None
    ledger_scope: str = ""
    cancel: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)  # reloads of an evicted pool

    def check_cancelled(self) -> None:
        if self.cancel.is_set():
            raise PoolCancelled(f"pool {self.name!r} was deleted or replaced")

    @property
    def searchable(self) -> bool:
        return self.state in ("stats", "ready") and self.pool is not None

    @property
    def memory_bytes(self) -> int:
        return self.planned_bytes if self.pool is not None else 0

    def progress(self) -> PoolProgress:
        rate = eta = None
        if self.started is not None and self.state == "embedding" and self.done:
            elapsed = max(time.monotonic() - self.started, 1e-6)
            rate = self.done / elapsed
            eta = max(self.rows - self.done, 0) / rate if rate > 0 else None
        done = self.rows if self.state in ("stats", "ready", "evicted") else self.done
        return PoolProgress(done=done, total=self.rows, rows_per_s=rate, eta_s=eta)

    def status(self, default: str | None) -> PoolStatus:
        return PoolStatus(
            name=self.name,
            state=self.state,
            rows=self.rows,
            fingerprint=self.fingerprint,
            source=self.source,
            default=self.name == default,
            progress=self.progress(),
            stats=StatsStatus(
                state=self.stats_state,
                done=self.stats_done,
                total=self.stats_total,
                method=self.stats_method,
                message=self.stats_message,
            ),
            memory_bytes=self.memory_bytes,
            planned_bytes=self.planned_bytes,
            message=self.message,
            created_at=self.created_at,
            last_used=self.last_used,
            embedded=self.embedded,
        )
