"""The query batcher under a big request, a bad one and a cancelled one (issue 9, items 1 and 8).

Before: one embedding call took everything queued (up to 4,096 texts), so a 1-query request waited
behind a 4,096-query one; a failed call failed every request in it; a cancelled request's texts
were still embedded.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from near_service.server.batcher import QueryBatcher


class Model:
    """Records each call's texts; raises on texts containing POISON; ``delay`` seconds per call."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[list[str]] = []
        self.delay = delay

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        time.sleep(self.delay)
        if any("POISON" in t for t in texts):
            raise ValueError("bad text")
        return np.array([[float(len(t)), float(hash(t) % 97)] for t in texts], dtype=np.float32)


def _run(coro_fn, model: Model, **kw):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        with ThreadPoolExecutor(1) as ex:
            batcher = QueryBatcher(model, ex, **kw)
            batcher.start()
            try:
                return await coro_fn(batcher)
            finally:
                await batcher.stop()

    return asyncio.run(main())


def test_a_small_request_does_not_wait_behind_a_big_one() -> None:
    model = Model(delay=0.01)

    async def go(b: QueryBatcher) -> int:
        big = asyncio.ensure_future(b.embed([f"big {i}" for i in range(4096)]))
        await asyncio.sleep(0.015)  # the big one's first chunk is running
        small = await b.embed(["small one"])
        assert small.shape == (1, 2)
        assert not big.done()
        rows = await big
        assert rows.shape == (4096, 2) and rows[5][0] == len("big 5")
        return next(i for i, call in enumerate(model.calls) if "small one" in call)

    call_index = _run(go, model, max_texts=256)
    assert call_index <= 2, call_index  # after at most the chunk running and one more, not 16 chunks
    assert max(len(c) for c in model.calls) <= 256


def test_a_failed_call_fails_only_the_guilty_request() -> None:
    model = Model()

    async def go(b: QueryBatcher) -> list[object]:
        jobs = [b.embed([f"q{i}", "POISON" if i == 3 else f"fine {i}"]) for i in range(8)]
        return await asyncio.gather(*jobs, return_exceptions=True)

    results = _run(go, model, window_s=0.01)
    assert isinstance(results[3], ValueError)
    assert all(isinstance(r, np.ndarray) and r.shape == (2, 2) for i, r in enumerate(results) if i != 3)
    assert len(model.calls[0]) == 16  # they did share one call, which failed, and were retried alone


def test_a_cancelled_request_stops_being_embedded() -> None:
    model = Model(delay=0.01)

    async def go(b: QueryBatcher) -> int:
        big = asyncio.ensure_future(b.embed([f"big {i}" for i in range(4096)]))
        await asyncio.sleep(0.05)
        big.cancel()
        await asyncio.sleep(0.1)
        after = await b.embed(["still works"])
        assert after.shape == (1, 2) and b.waiting_texts == 0
        return sum(len(c) for c in model.calls)

    embedded = _run(go, model, max_texts=256)
    assert embedded < 4096 / 2, embedded
