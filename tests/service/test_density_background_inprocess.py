"""Density statistics in the background (issue 20, part 1), in-process: while a pool's statistics are
being computed it is searchable (``round_robin``, ``max_score``), ``density`` and ``importance``
answer 503 ``stats_pending`` with progress and ``Retry-After``, and ``GET /pools/{name}`` shows the
progress; afterwards ``density`` answers 200. A pool above the exact method's CPU row limit gets the
approximate statistics under ``NEAR_DENSITY_STATS=auto``: no strategy answers 422 for pool size.

The computation is held by :class:`tests.fakes.FakeHeldPoolStats` (a fake, named as one) put where the
engine calls it; the statistics it then returns are the real ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from near_service.core import density
from near_service.engine import open as engine_open
from tests.conftest import InProcessFactory, InProcessService
from tests.fakes import FakeHeldPoolStats
from tests.service.api_data import qa_records
from tests.service.test_pools_inprocess import QUERIES, assert_error, pool_texts, wait_state

pytestmark = pytest.mark.inprocess

ROWS = 40
HELD_DONE = 17


@pytest.fixture
def held(inprocess: InProcessFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHeldPoolStats]:
    """The statistics' computation, held; released at teardown (before the services shut down)."""
    fake = FakeHeldPoolStats(held_done=HELD_DONE)
    monkeypatch.setattr(engine_open, "compute_pool_stats", fake)
    try:
        yield fake
    finally:
        fake.release.set()


def select(client: TestClient, strategy: str, pool: str | None = None) -> Any:
    body: dict[str, Any] = {"queries": QUERIES, "max_k": 5, "budget": 6, "strategy": strategy}
    if pool is not None:
        body["pool"] = pool
    return client.post("/select", json=body)


def wait_computing(client: TestClient, name: str, fake: FakeHeldPoolStats) -> dict[str, Any]:
    assert fake.started.wait(30), "the statistics' computation never started"
    return wait_state(client, name, ("stats",))


def assert_pending(client: TestClient, strategy: str, name: str, done: int, total: int) -> None:
    r = select(client, strategy, None if name == "default" else name)
    message = assert_error(r, 503, "stats_pending", client)
    assert int(r.headers["Retry-After"]) >= 1
    assert strategy in message and repr(name) in message, message
    assert f"{done}/{total} rows" in message, message  # the progress
    assert "round_robin and max_score answer now" in message, message


def test_startup_pool_serves_while_its_statistics_compute(inprocess: InProcessFactory, held: FakeHeldPoolStats) -> None:
    svc = inprocess(qa_records(ROWS), wait_ready=False)
    status = wait_computing(svc.client, "default", held)
    assert status["stats"] == {"state": "computing", "done": HELD_DONE, "total": ROWS, "method": None, "message": None}
    assert status["progress"]["done"] == ROWS  # the vectors are indexed: searchable
    ready = svc.client.get("/ready")
    assert ready.status_code == 503 and f"density statistics ({HELD_DONE}/{ROWS})" in ready.json()["message"]

    for strategy in ("round_robin", "max_score"):
        r = select(svc.client, strategy)
        assert r.status_code == 200, r.text
        assert len(r.json()["selected"]) == 6
    plain = svc.client.post("/select", json={"queries": QUERIES, "max_k": 3})  # a search without a budget
    assert plain.status_code == 200, plain.text
    for strategy in ("density", "importance"):
        assert_pending(svc.client, strategy, "default", HELD_DONE, ROWS)

    held.release.set()
    status = wait_state(svc.client, "default")
    assert status["stats"]["state"] == "ready" and status["stats"]["method"] == "exact"
    assert status["stats"]["done"] == ROWS
    assert svc.client.get("/ready").status_code == 200
    for strategy in ("density", "importance"):
        r = select(svc.client, strategy)
        assert r.status_code == 200, r.text
        assert len(r.json()["selected"]) == 6
    assert held.calls == [ROWS]


def test_registered_pool_serves_while_its_statistics_compute(
    inprocess: InProcessFactory, held: FakeHeldPoolStats
) -> None:
    held.release.set()  # the startup pool's statistics go through
    svc: InProcessService = inprocess()
    held.release.clear()
    held.started.clear()
    texts = pool_texts(30)
    r = svc.client.put("/pools/x", json={"texts": texts})
    assert r.status_code == 202, r.text
    status = wait_computing(svc.client, "x", held)
    assert status["stats"]["state"] == "computing"
    assert (status["stats"]["done"], status["stats"]["total"]) == (HELD_DONE, 30)
    listed = {p["name"]: p for p in svc.client.get("/pools").json()["pools"]}
    assert listed["x"]["state"] == "stats" and listed["x"]["stats"]["done"] == HELD_DONE

    assert select(svc.client, "round_robin", "x").status_code == 200
    assert select(svc.client, "max_score", "x").status_code == 200
    assert_pending(svc.client, "density", "x", HELD_DONE, 30)
    assert_pending(svc.client, "importance", "x", HELD_DONE, 30)
    # the other pools are not held up by this one
    assert select(svc.client, "density").status_code == 200
    assert svc.client.get("/ready").status_code == 200

    held.release.set()
    assert wait_state(svc.client, "x")["stats"]["state"] == "ready"
    r = select(svc.client, "density", "x")
    assert r.status_code == 200, r.text
    assert r.json()["pool"]["name"] == "x"


def test_deleting_a_pool_while_its_statistics_compute(inprocess: InProcessFactory, held: FakeHeldPoolStats) -> None:
    held.release.set()
    svc = inprocess()
    held.release.clear()
    held.started.clear()
    assert svc.client.put("/pools/gone", json={"texts": pool_texts(20)}).status_code == 202
    wait_computing(svc.client, "gone", held)
    assert svc.client.delete("/pools/gone").status_code in (200, 204)
    assert_error(select(svc.client, "density", "gone"), 404, "pool_not_found", svc.client)


def test_a_pool_above_the_exact_limit_gets_approximate_statistics(
    inprocess: InProcessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the exact method's CPU limit made small: the same pool sizes, above it, without 200k rows
    monkeypatch.setattr(density, "EXACT_ROWS_CPU", 25)
    svc = inprocess(qa_records(ROWS), density_stats="auto")  # ready: the statistics are there
    status = svc.client.get("/pools/default").json()
    assert status["state"] == "ready", status
    assert status["stats"]["state"] == "ready" and status["stats"]["method"] == "approx", status
    r = svc.client.put("/pools/small", json={"texts": pool_texts(20)})  # under the limit: exact
    assert r.status_code == 202, r.text
    assert wait_state(svc.client, "small")["stats"]["method"] == "exact"
    r = svc.client.put("/pools/big", json={"texts": pool_texts(60)})
    assert r.status_code == 202, r.text
    assert wait_state(svc.client, "big")["stats"]["method"] == "approx"
    for pool in (None, "big"):
        for strategy in ("density", "importance", "round_robin", "max_score"):
            r = select(svc.client, strategy, pool)
            assert r.status_code == 200, (strategy, pool, r.text)
            assert len(r.json()["selected"]) == 6
