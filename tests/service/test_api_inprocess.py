"""The API in-process (TestClient + the fake embedder): validation, errors, auth, ledger logic.

Fast and subprocess-free; the real model and real uvicorn run in the end-to-end tests beside it.
"""

from __future__ import annotations

from tests.conftest import InProcessFactory, RedisServer
from tests.service.api_data import query_records


def _queries() -> list[str]:
    return [f"{r['question']}\n{r['answer']}" for r in query_records()]


def test_select_answers_with_neighbours_and_a_budget(inprocess: InProcessFactory) -> None:
    svc = inprocess()
    r = svc.client.post("/select", json={"queries": _queries(), "max_k": 5, "budget": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["indices"]) == 5 and all(len(row) == 5 for row in body["indices"])
    assert len(set(body["selected"])) == 7 and body["source"] == "computed"
    assert body["pool"]["size"] == 40 and body["pool"]["model"] == "fake/hashing-bow"


def test_ledger_round_is_stored_once_and_conflicts_are_409(
    inprocess: InProcessFactory, redis_server: RedisServer
) -> None:
    svc = inprocess(redis_url=redis_server.url)
    body = {"queries": _queries(), "max_k": 5, "budget": 7, "run_id": "r1", "round": 0}
    first = svc.client.post("/select", json=body)
    again = svc.client.post("/select", json=body)
    assert (first.json()["source"], again.json()["source"]) == ("computed", "stored")
    assert again.json()["indices"] == first.json()["indices"]
    conflict = svc.client.post("/select", json={**body, "max_k": 6})
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "conflict"
