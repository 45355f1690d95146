"""Micro-batching of query embeddings across concurrent requests.

Each request puts its texts on an asyncio queue and awaits a future. One worker task takes what is
queued (waiting up to ``window_s`` for more while the batch is small), makes one embedding call in
the model's worker thread, and hands each request its rows. While a call runs, new requests queue
up and go together in the next call, so under load batches grow by themselves; the event loop
never waits for the model.

>>> batcher = QueryBatcher(lambda texts: embed(texts), executor)           # doctest: +SKIP
>>> vectors = await batcher.embed(["What is 2 + 2?"])                        # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

import numpy as np

log = logging.getLogger(__name__)

EmbedFn = Callable[[list[str]], np.ndarray]
_Item = tuple[list[str], "asyncio.Future[np.ndarray]"]


class QueryBatcher:
    """Groups the texts of requests that arrive together into one embedding call."""

    def __init__(
        self,
        embed: EmbedFn,
        executor: Executor,
        window_s: float = 0.002,
        max_texts: int = 4096,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self._embed, self._executor = embed, executor
        self.window_s, self.max_texts = window_s, max_texts
        self._on_depth = on_depth
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
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
        """The query vectors of ``texts`` (float32 rows), computed together with concurrent requests."""
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._depth(len(texts))
        await self._queue.put((list(texts), fut))
        return await fut

    async def _next_batch(self) -> list[_Item]:
        batch = [await self._queue.get()]
        size = len(batch[0][0])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.window_s
        while size < self.max_texts:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            batch.append(item)
            size += len(item[0])
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            texts = [t for item_texts, _ in batch for t in item_texts]
            self._depth(-len(texts))
            self.batches += 1
            try:
                vectors = await loop.run_in_executor(self._executor, self._embed, texts)
            except Exception as exc:
                log.exception("query embedding failed for a batch of %d texts", len(texts))
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            start = 0
            for item_texts, fut in batch:
                if not fut.done():  # a request whose client went away is cancelled; skip it
                    fut.set_result(vectors[start : start + len(item_texts)])
                start += len(item_texts)
