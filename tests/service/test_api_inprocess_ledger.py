"""The run ledger in a real Redis, in-process: idempotent rounds, conflicts, exclusion across rounds,
listing, pools kept apart. The ledger surviving a service restart is in test_api_e2e.py.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import InProcessFactory, InProcessService, RedisServer
from tests.service.api_data import qa_records, query_records

QUERIES = [q["question"] for q in query_records()]


@pytest.fixture(scope="module")
def svc(module_inprocess: InProcessFactory, module_redis_server: RedisServer) -> InProcessService:
    return module_inprocess(redis_url=module_redis_server.url)


def select(svc: InProcessService, **body: Any) -> httpx.Response:
    return svc.client.post("/select", json=body)


def test_same_round_returns_the_stored_result(svc: InProcessService) -> None:
    body = {"queries": QUERIES, "max_k": 8, "budget": 6, "run_id": "run-a", "round": 0}
    first = select(svc, **body)
    assert first.status_code == 200, first.text
    again = select(svc, **body)
    assert (first.json()["source"], again.json()["source"]) == ("computed", "stored")
    # byte for byte, but for the source marker
    assert again.content.replace(b'"source":"stored"', b'"source":"computed"') == first.content
    plain = select(svc, queries=QUERIES, max_k=8, budget=6)
    assert plain.json()["indices"] == first.json()["indices"]


def test_same_round_other_parameters_is_409(svc: InProcessService) -> None:
    body = {"queries": QUERIES, "max_k": 8, "budget": 6, "run_id": "run-b", "round": 0}
    assert select(svc, **body).status_code == 200
    for change in ({"max_k": 9}, {"budget": 5}, {"queries": QUERIES[:2]}, {"strategy": "max_score"}):
        r = select(svc, **{**body, **change})
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["code"] == "conflict" and "run-b" in err["message"] and "different parameters" in err["message"]
    assert select(svc, **body).status_code == 200


def test_exclude_previous_and_listing(svc: InProcessService) -> None:
    seen: set[int] = set()
    for rnd in range(3):
        r = select(svc, queries=QUERIES, max_k=20, budget=6, run_id="run/c", round=rnd, exclude_previous=True)
        assert r.status_code == 200, r.text
        sel = set(r.json()["selected"])
        assert len(sel) == 6 and not sel & seen
        seen |= sel
    # round 1 asked again (after round 2 exists) is still what was stored, not recomputed
    r1 = select(svc, queries=QUERIES, max_k=20, budget=6, run_id="run/c", round=1, exclude_previous=True)
    assert r1.status_code == 200 and r1.json()["source"] == "stored"
    listing = svc.client.get("/runs/run/c")
    assert listing.status_code == 200, listing.text
    info = listing.json()
    assert info["run_id"] == "run/c" and [x["round"] for x in info["rounds"]] == [0, 1, 2]
    assert all(x["selected"] == 6 and x["max_k"] == 20 and x["strategy"] == "density" for x in info["rounds"])
    assert info["pool"]["size"] == 40


def test_exclusion_that_leaves_too_few_is_422(svc: InProcessService) -> None:
    assert select(svc, queries=QUERIES[:1], max_k=4, budget=4, run_id="run-d", round=0).status_code == 200
    r = select(svc, queries=QUERIES[:1], max_k=4, budget=2, run_id="run-d", round=1, exclude_previous=True)
    assert r.status_code == 422 and r.json()["error"]["code"] == "budget_too_large"
    assert "earlier rounds" in r.json()["error"]["message"]
    assert [x["round"] for x in svc.client.get("/runs/run-d").json()["rounds"]] == [0]


def test_unknown_run_is_404(svc: InProcessService) -> None:
    r = svc.client.get("/runs/never-ran")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_another_pool_does_not_see_the_runs(
    svc: InProcessService, module_inprocess: InProcessFactory, module_redis_server: RedisServer
) -> None:
    """A run is bound to the pool (name + content) of its first round: a service whose default pool
    holds other content neither lists it nor lets the run continue there (409 naming both)."""
    first = select(svc, queries=QUERIES, max_k=5, run_id="run-e", round=0)
    assert first.status_code == 200
    other = module_inprocess(qa_records(30, seed=1), redis_url=module_redis_server.url)
    assert other.client.get("/runs/run-e").status_code == 404
    r = select(other, queries=QUERIES, max_k=5, run_id="run-e", round=0)
    assert r.status_code == 409 and r.json()["error"]["code"] == "run_pool_mismatch"
    assert first.json()["pool"]["fingerprint"] in r.json()["error"]["message"]
    assert select(other, queries=QUERIES, max_k=5, run_id="run-f", round=0).status_code == 200
    assert svc.client.get("/runs/run-e").json()["pool"]["size"] == 40


def test_one_stored_round_is_read_back_without_its_queries(svc: InProcessService) -> None:
    """``GET /runs/{run_id}/rounds/{round}``: what was asked and the stored selection (what a resumed
    trainer replays whatever its queries are now); a run id with slashes works too."""
    for rnd in (0, 1):
        body = {"queries": QUERIES, "max_k": 12, "budget": 5, "run_id": "run/g", "round": rnd, "exclude_previous": True}
        assert select(svc, **body).status_code == 200
    asked = select(svc, queries=QUERIES, max_k=12, budget=5, run_id="run/g", round=1, exclude_previous=True).json()
    r = svc.client.get("/runs/run/g/rounds/1")
    assert r.status_code == 200, r.text
    detail = r.json()
    assert detail["selected"] == asked["selected"] and len(detail["selected"]) == 5
    assert {k: detail[k] for k in ("run_id", "round", "strategy", "max_k", "budget", "query_count")} == {
        "run_id": "run/g",
        "round": 1,
        "strategy": "density",
        "max_k": 12,
        "budget": 5,
        "query_count": len(QUERIES),
    }
    assert detail["exclude_previous"] is True and detail["pool"] == asked["pool"] and detail["pool_deleted"] is False
    assert svc.client.get("/runs/run%2Fg/rounds/0").json()["round"] == 0  # the client's quoted form
    assert svc.client.get("/runs/run/g").status_code == 200  # the listing is still its own route


@pytest.mark.parametrize("path", ["/runs/never-ran/rounds/0", "/runs/run-a/rounds/7"])
def test_unknown_run_or_round_is_404(svc: InProcessService, path: str) -> None:
    assert select(svc, queries=QUERIES, max_k=8, budget=6, run_id="run-a", round=0).status_code == 200
    r = svc.client.get(path)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text


def test_a_stored_round_needs_the_api_key(inprocess: InProcessFactory, redis_server: RedisServer) -> None:
    key = "k" * 32
    svc = inprocess(qa_records(20), redis_url=redis_server.url, api_key=key)
    auth = {"Authorization": f"Bearer {key}"}
    body = {"queries": QUERIES, "max_k": 5, "budget": 3, "run_id": "run-h", "round": 0}
    assert svc.client.post("/select", json=body, headers=auth).status_code == 200
    assert svc.client.get("/runs/run-h/rounds/0").status_code == 401
    assert svc.client.get("/runs/run-h/rounds/0", headers=auth).json()["budget"] == 3
