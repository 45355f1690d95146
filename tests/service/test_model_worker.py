"""The model thread (``engine/work.py``): queries go first, pool work proceeds one batch at a time
(issue 17, point 6), shown by the order of the calls, never by timing.

Every test holds one call on the model thread (a :class:`Gate`, or :class:`FakeHeldModel`, a
fake model that holds a chosen batch until the test releases it), queues more work behind it while
it is held, then releases it and reads the order in which the model thread ran everything. The pool
work goes the way the engine sends it: ``Embedder.embed(..., run=worker.run_background)`` with a
small token budget per batch (NEAR_POOL_BATCH_TOKENS), so the pool is many batches.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import CancelledError, Future

import numpy as np
import pytest

from near_service.engine.work import BACKGROUND, QUERY, ModelWorker
from tests.fakes import FakeEmbedder, HashingBackend

WAIT_S = 30.0  # a safety net against a hung test, never a speed assert
POOL_BATCH_TOKENS = 256  # NEAR_POOL_BATCH_TOKENS' lower bound: ~20 of the texts below a batch


class Gate:
    """A call that, on the model thread, logs ``label`` and blocks until the test releases it."""

    def __init__(self, log: list[str], label: str) -> None:
        self.log, self.label = log, label
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self) -> str:
        self.log.append(self.label)
        self.entered.set()
        assert self.release.wait(WAIT_S), "the test never released the gate"
        return self.label


class FakeHeldModel(HashingBackend):
    """A fake model (:class:`HashingBackend`) that logs the label of each encode call (a text's first
    word: ``pool-a``, ``query-1``), holds the next call of a chosen label until released, and fails
    the calls of ``fail_label``."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[str] = []
        self.entered, self.release = threading.Event(), threading.Event()
        self.fail_label: str | None = None
        self._hold: str | None = None

    def hold(self, label: str) -> None:
        self._hold = label
        self.entered.clear()
        self.release.clear()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        label = texts[0].split(" ", 1)[0]
        assert all(t.startswith(label + " ") for t in texts), "one call mixed two jobs' texts"
        self.log.append(label)
        if label == self._hold:
            self._hold = None
            self.entered.set()
            assert self.release.wait(WAIT_S), "the test never released the model"
        if label == self.fail_label:
            raise RuntimeError(f"FakeHeldModel: the model failed on a {label} batch")
        return super().encode(texts)


def pool_texts(label: str, n: int = 160) -> list[str]:
    topics = ["apples", "trains", "clocks", "bicycles", "recipes"]
    return [f"{label} row {i} is a question about {topics[i % 5]} and the number {i * 7 % 31}" for i in range(n)]


class Setup:
    """A worker and an embedder whose model is :class:`FakeHeldModel`."""

    def __init__(self) -> None:
        self.embedder = FakeEmbedder()
        self.model = FakeHeldModel()
        self.embedder.backend = self.embedder._backend = self.model
        self.worker = ModelWorker(name="test-model")
        self.errors: dict[str, BaseException] = {}
        self.vectors: dict[str, np.ndarray] = {}

    def embed_pool(self, label: str, n: int = 160) -> threading.Thread:
        """Embed a pool as the engine does (each batch a background call), in a thread of its own."""

        def run() -> None:
            try:
                self.vectors[label] = self.embedder.embed(
                    pool_texts(label, n), "document", run=self.worker.run_background, batch_tokens=POOL_BATCH_TOKENS
                )
            except BaseException as exc:  # the test reads it
                self.errors[label] = exc

        t = threading.Thread(target=run, name=f"pool {label}")
        t.start()
        return t

    def query(self, label: str) -> Future[np.ndarray]:
        """A /select's query embedding, at query priority (what the batcher submits)."""
        return self.worker.submit(self.embedder.embed, [f"{label} how many apples are in the basket?"], "query")

    def wait_background_queued(self, n: int) -> None:
        """Until ``n`` background calls wait in the queue (a pool thread has sent its next call)."""
        deadline = time.monotonic() + WAIT_S
        while self.worker.waiting[BACKGROUND] < n:
            assert time.monotonic() < deadline, self.worker.waiting
            time.sleep(0.001)

    def close(self) -> None:
        self.model.release.set()
        self.worker.shutdown(wait=False, cancel_futures=True)
        self.worker.join(WAIT_S)


@pytest.fixture
def setup() -> Iterator[Setup]:
    s = Setup()
    yield s
    s.close()


def expected_batches(label: str, n: int = 160) -> int:
    from near_service.core.embedder import plan_batches

    texts = pool_texts(label, n)
    return len(plan_batches(HashingBackend().token_lengths(texts), POOL_BATCH_TOKENS, HashingBackend.max_batch_texts))


def reference(label: str, n: int = 160) -> np.ndarray:
    return FakeEmbedder().embed(pool_texts(label, n), "document")


# --- the priority queue itself --------------------------------------------------------------------


def test_queries_jump_the_queued_pool_batches_fifo_within_each_priority() -> None:
    worker, log = ModelWorker(), list[str]()
    first, second = Gate(log, "a1"), Gate(log, "b1")
    try:
        worker.submit_background(first)
        assert first.entered.wait(WAIT_S)  # a1 runs on the model thread and holds it
        pool_work: list[Future[object]] = [worker.submit_background(second)]
        pool_work += [worker.submit_background(log.append, label) for label in ("a2", "b2", "a3")]
        queries = [worker.submit(log.append, "q1"), worker.submit(log.append, "q2")]
        assert worker.waiting == [2, 4]
        first.release.set()
        assert second.entered.wait(WAIT_S)  # b1 is next after the queries, and holds the thread
        queries.append(worker.submit(log.append, "q3"))  # a query arriving while pool work runs
        second.release.set()
        for f in pool_work + queries:
            f.result(WAIT_S)
        assert log == ["a1", "q1", "q2", "b1", "q3", "a2", "b2", "a3"]
        assert worker.waiting == [0, 0]
    finally:
        first.release.set()
        second.release.set()
        worker.shutdown()


def test_a_query_on_an_idle_worker_runs_at_once() -> None:
    worker, log = ModelWorker(), list[str]()

    def query() -> str:
        log.append("q")
        return "answer"

    try:
        assert worker.submit(query).result(WAIT_S) == "answer"
        assert log == ["q"] and worker.waiting == [0, 0]  # nothing ran before it, nothing waits
        assert worker.submit_background(log.append, "p").result(WAIT_S) is None
        assert log == ["q", "p"]
    finally:
        worker.shutdown()


# --- pool embedding as the engine runs it ---------------------------------------------------------


def test_a_query_runs_right_after_the_pool_batch_in_progress(setup: Setup) -> None:
    batches = expected_batches("pool-a")
    assert batches >= 6  # the pool is many batches, or the test shows nothing
    setup.model.hold("pool-a")
    pool = setup.embed_pool("pool-a")
    assert setup.model.entered.wait(WAIT_S)  # the first pool batch runs and holds the model
    answer = setup.query("query-1")
    setup.model.release.set()
    vector = answer.result(WAIT_S)
    pool.join(WAIT_S)
    assert not setup.errors
    assert setup.model.log == ["pool-a", "query-1"] + ["pool-a"] * (batches - 1)
    np.testing.assert_allclose(setup.vectors["pool-a"], reference("pool-a"), atol=1e-6)
    assert vector.shape == (1, setup.model.dim)


def test_several_queries_and_several_pools(setup: Setup) -> None:
    setup.model.hold("pool-a")
    pools = [setup.embed_pool("pool-a")]
    assert setup.model.entered.wait(WAIT_S)
    pools.append(setup.embed_pool("pool-b"))
    pools.append(setup.embed_pool("pool-c"))
    setup.wait_background_queued(2)  # pools b and c each wait with their next call
    answers = [setup.query(f"query-{i}") for i in range(1, 4)]
    assert setup.worker.waiting[QUERY] == 3
    setup.model.release.set()
    for a in answers:
        a.result(WAIT_S)
    for t in pools:
        t.join(WAIT_S)
    assert not setup.errors
    log = setup.model.log
    assert log[:4] == ["pool-a", "query-1", "query-2", "query-3"]  # every waiting query before any pool batch
    for label in ("pool-a", "pool-b", "pool-c"):
        assert log.count(label) == expected_batches(label)
        np.testing.assert_allclose(setup.vectors[label], reference(label), atol=1e-6)
    # a query that arrives while the pools run waits for one batch at most, again
    setup.model.hold("pool-d")
    pool_d = setup.embed_pool("pool-d")
    assert setup.model.entered.wait(WAIT_S)
    late = setup.query("query-4")
    setup.model.release.set()
    late.result(WAIT_S)
    pool_d.join(WAIT_S)
    assert log[log.index("pool-d") + 1] == "query-4"


def test_a_failed_pool_batch_does_not_hurt_queries(setup: Setup) -> None:
    setup.model.fail_label = "pool-bad"
    setup.model.hold("pool-bad")
    bad = setup.embed_pool("pool-bad")
    assert setup.model.entered.wait(WAIT_S)
    answer = setup.query("query-1")
    setup.model.release.set()
    bad.join(WAIT_S)
    assert isinstance(setup.errors.pop("pool-bad"), RuntimeError)  # the pool's owner hears of it
    assert answer.result(WAIT_S).shape == (1, setup.model.dim)
    assert setup.model.log == ["pool-bad", "query-1"]  # the pool stopped at its failed batch
    assert setup.worker.running
    good = setup.embed_pool("pool-a")  # and the model thread goes on serving pools and queries
    after = setup.query("query-2")
    good.join(WAIT_S)
    assert after.result(WAIT_S).shape == (1, setup.model.dim) and not setup.errors
    np.testing.assert_allclose(setup.vectors["pool-a"], reference("pool-a"), atol=1e-6)


def test_closing_the_worker_fails_pending_work_cleanly(setup: Setup) -> None:
    """What Engine.close does: the call in progress finishes, everything queued is cancelled (its
    owner gets CancelledError, no hang), new work is refused, and the thread ends."""
    setup.model.hold("pool-a")
    pools = [setup.embed_pool("pool-a")]
    assert setup.model.entered.wait(WAIT_S)
    pools.append(setup.embed_pool("pool-b"))
    setup.wait_background_queued(1)
    queries = [setup.query("query-1"), setup.query("query-2")]
    setup.worker.shutdown(wait=False, cancel_futures=True)
    assert all(q.cancelled() for q in queries) and setup.worker.waiting == [0, 0]
    with pytest.raises(RuntimeError, match="shut down"):
        setup.query("query-3")
    setup.model.release.set()  # the batch in progress completes; nothing after it runs
    for t in pools:
        t.join(WAIT_S)
        assert not t.is_alive()
    setup.worker.join(WAIT_S)
    assert not setup.worker.running
    assert isinstance(setup.errors.pop("pool-b"), CancelledError)  # its queued call was cancelled
    refused = setup.errors.pop("pool-a")  # its next batch, sent after the one in progress, is refused
    assert isinstance(refused, RuntimeError) and "shut down" in str(refused) and not setup.errors
    assert setup.model.log == ["pool-a"]
    for q in queries:
        with pytest.raises(CancelledError):
            q.result(0)


def test_closing_without_cancelling_drains_the_queue_first() -> None:
    worker, log = ModelWorker(), list[str]()
    gate = Gate(log, "p1")
    worker.submit_background(gate)
    assert gate.entered.wait(WAIT_S)
    pending = [worker.submit_background(log.append, "p2"), worker.submit(log.append, "q1")]
    worker.shutdown(wait=False)
    with pytest.raises(RuntimeError, match="shut down"):
        worker.submit(log.append, "q2")
    gate.release.set()
    worker.join(WAIT_S)
    assert not worker.running
    assert [f.result(0) for f in pending] == [None, None]
    assert log == ["p1", "q1", "p2"]
