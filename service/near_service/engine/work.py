"""The model thread: one thread runs every model call, queries before pool work.

:class:`ModelWorker` is a :class:`concurrent.futures.Executor` whose ``submit`` queues a call at
query priority; :meth:`ModelWorker.submit_background` queues pool work (one embedding batch at a
time) behind every waiting query. So while a large pool is embedded, a ``/select`` waits for at
most the one pool batch that is running, never for the rest of the pool (the same idea as
text-embeddings-inference's queue: one owner of the model, a priority order in front of it).

>>> worker = ModelWorker()
>>> worker.submit(sum, [1, 2]).result(), worker.submit_background(max, 3, 4).result()
(3, 4)
>>> worker.shutdown()
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

__all__ = ["BACKGROUND", "QUERY", "ModelWorker"]

T = TypeVar("T")
QUERY, BACKGROUND = 0, 1


class ModelWorker(Executor):
    """One thread, a priority queue in front of it (``QUERY`` before ``BACKGROUND``, FIFO within each)."""

    def __init__(self, name: str = "near-model") -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Future[Any] | None, Callable[[], Any] | None]] = (
            queue.PriorityQueue()
        )
        self._seq = itertools.count()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self.waiting = [0, 0]  # queued calls per priority (for /metrics and tests)

    def _put(self, priority: int, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the model worker is shut down")
            self.waiting[priority] += 1
            self._queue.put((priority, next(self._seq), future, lambda: fn(*args, **kwargs)))
        return future

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Queue ``fn(*args, **kwargs)`` at query priority."""
        return self._put(QUERY, fn, args, kwargs)

    def submit_background(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Queue ``fn(*args, **kwargs)`` behind every waiting query (pool embedding, one batch a call)."""
        return self._put(BACKGROUND, fn, args, kwargs)

    def run_background(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the model thread at background priority and wait for it (from another thread)."""
        return self.submit_background(fn).result()

    def _run(self) -> None:
        while True:
            priority, _, future, call = self._queue.get()
            if future is None or call is None:
                return
            with self._lock:
                self.waiting[priority] -= 1
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = call()
            except BaseException as exc:  # handed to the caller, which decides
                future.set_exception(exc)
            else:
                future.set_result(result)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end (after :meth:`shutdown`)."""
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if cancel_futures:
                pending = []
                while True:
                    try:
                        pending.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                for priority, _, future, _ in pending:
                    if future is not None:
                        future.cancel()
                        self.waiting[priority] -= 1  # not reset: the thread may be counting one down now
            self._queue.put((2, next(self._seq), None, None))  # after everything still queued
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()
