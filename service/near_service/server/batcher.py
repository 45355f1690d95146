"""Micro-batching of query embeddings across concurrent requests, in fair, bounded chunks.

Each request becomes a job on a list and awaits a future. One worker task builds each embedding
call from what is waiting (after a ``window_s`` pause that lets concurrent requests join), at most
``max_texts`` texts, taking from the jobs that have been served the fewest chunks first (then the
oldest). So small requests share one call, and a big request is split into chunks that take turns
with everyone else's: a 1-query request waits for at most one chunk, never for a 4,096-query one.

A request only ever fails itself: when a call fails, each job's part of it is retried on its own
and only the part that fails again fails its request. A request whose client went away (its
future cancelled) has its remaining chunks dropped. The event loop never waits for the model.

>>> batcher = QueryBatcher(lambda texts: embed(texts), executor)           # doctest: +SKIP
>>> vectors = await batcher.embed(["What is 2 + 2?"])                        # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

EmbedFn = Callable[[list[str]], np.ndarray]


@dataclass(eq=False)
class _Job:
    """One request's texts: how far they have been sent to the model, and the rows back so far."""

    texts: list[str]
    future: asyncio.Future[np.ndarray]
    seq: int
    sent: int = 0  # texts handed to the model so far
    chunks: int = 0  # embedding calls this job has had a part in (fairness: fewest first)
    rows: list[np.ndarray] = field(default_factory=list)
    done_texts: int = 0


_Part = tuple[_Job, int, int]  # a job and the [start, end) of its texts in one call


class QueryBatcher:
    """Groups the texts of requests that arrive together into bounded, fair embedding calls."""

    def __init__(
        self,
        embed: EmbedFn,
        executor: Executor,
        window_s: float = 0.002,
        max_texts: int = 256,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self._embed, self._executor = embed, executor
        self.window_s, self.max_texts = window_s, max_texts
        self._on_depth = on_depth
        self._jobs: list[_Job] = []  # jobs with texts not yet sent, in arrival order
        self._wake = asyncio.Event()
        self._seq = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self.waiting_texts = 0
        self.batches = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="near-query-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _depth(self, delta: int) -> None:
        self.waiting_texts += delta
        if self._on_depth is not None:
            self._on_depth(self.waiting_texts)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The query vectors of ``texts`` (float32 rows), computed together with concurrent requests.

        Cancelling the awaiting task (the client went away) drops the chunks not yet embedded.
        """
        loop = asyncio.get_running_loop()
        if not texts:
            return await loop.run_in_executor(self._executor, self._embed, [])
        job = _Job(list(texts), loop.create_future(), next(self._seq))
        self._jobs.append(job)
        self._depth(len(job.texts))
        self._wake.set()
        return await job.future

    def _drop(self, job: _Job) -> None:
        """Forget a job's unsent texts (its request failed or was cancelled)."""
        if job in self._jobs:
            self._jobs.remove(job)
            self._depth(-(len(job.texts) - job.sent))

    def _take(self) -> list[_Part]:
        """The next call: up to ``max_texts`` texts, least-served jobs first, then oldest."""
        for job in [j for j in self._jobs if j.future.done()]:  # cancelled: the client went away
            self._drop(job)
        room, parts = self.max_texts, []
        for job in sorted(self._jobs, key=lambda j: (j.chunks, j.seq)):
            if room <= 0:
                break
            n = min(room, len(job.texts) - job.sent)
            parts.append((job, job.sent, job.sent + n))
            job.sent += n
            job.chunks += 1
            room -= n
        for job, _, _ in parts:
            if job.sent == len(job.texts):
                self._jobs.remove(job)
        self._depth(-(self.max_texts - room))
        return parts

    def _fail(self, job: _Job, exc: BaseException) -> None:
        self._drop(job)
        if not job.future.done():
            job.future.set_exception(exc)

    def _deliver(self, job: _Job, vectors: np.ndarray) -> None:
        if job.future.done():
            return
        job.rows.append(vectors)
        job.done_texts += len(vectors)
        if job.done_texts == len(job.texts):
            job.future.set_result(job.rows[0] if len(job.rows) == 1 else np.concatenate(job.rows))

    async def _call(self, texts: list[str]) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._embed, texts)

    async def _run_batch(self, parts: list[_Part]) -> None:
        texts = [t for job, a, b in parts for t in job.texts[a:b]]
        self.batches += 1
        try:
            vectors = await self._call(texts)
        except Exception as exc:
            if len(parts) == 1:
                log.exception("query embedding failed for a request's %d texts", len(texts))
                self._fail(parts[0][0], exc)
                return
            # one bad request must not fail the others: retry each request's part on its own
            log.warning(
                "query embedding failed for a batch of %d texts (%r); retrying each request alone", len(texts), exc
            )
            for job, a, b in parts:
                if job.future.done():
                    continue
                try:
                    self._deliver(job, await self._call(job.texts[a:b]))
                except Exception as exc1:
                    log.exception("query embedding failed for a request's %d texts", b - a)
                    self._fail(job, exc1)
            return
        start = 0
        for job, a, b in parts:
            self._deliver(job, vectors[start : start + b - a])
            start += b - a

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if self.waiting_texts < self.max_texts and self.window_s > 0:
                await asyncio.sleep(self.window_s)  # let requests arriving together share the call
            parts = self._take()
            if not self._jobs:
                self._wake.clear()
            if not parts:
                continue
            try:
                await self._run_batch(parts)
            except Exception as exc:  # never let the worker die: fail only this call's requests
                log.exception("query batcher error")
                for job, _, _ in parts:
                    self._fail(job, exc)
