"""The report routes on the real app (in process, FakeEmbedder, a real Redis for the ledger)."""

from __future__ import annotations

from near_schema import ERROR_CODES
from tests.conftest import InProcessFactory, RedisServer
from tests.service.api_data import qa_records


def test_run_and_pool_reports(inprocess: InProcessFactory, redis_server: RedisServer) -> None:
    svc = inprocess(qa_records(40), redis_url=redis_server.url)
    queries = [r["question"] for r in qa_records(40)[:3]]
    for r in (0, 1, 2):
        body = {"queries": queries, "max_k": 8, "budget": 6, "run_id": "rep-1", "round": r, "exclude_previous": True}
        assert svc.client.post("/select", json=body).status_code == 200
    j = svc.client.get("/runs/rep-1/report.json")
    assert j.status_code == 200, j.text
    report = j.json()
    assert len(report["rounds"]) == 3 and [x["selected"] for x in report["rounds"]] == [6, 6, 6]
    html = svc.client.get("/runs/rep-1/report")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "<script src=" not in html.text  # self-contained: nothing loaded by URL
    pool = svc.client.get("/pools/default/report")
    assert pool.status_code == 200 and pool.text.startswith("<!DOCTYPE html>")
    assert svc.client.get("/pools/default/report.json").json()["kind"] == "pool"
    # the run list itself still answers, and unknowns are 404 with the one error body
    assert svc.client.get("/runs/rep-1").status_code == 200
    for path in ("/runs/nope/report", "/runs/nope/report.json", "/pools/nope/report", "/pools/nope/report.json"):
        r = svc.client.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] in ERROR_CODES


def test_a_run_whose_pool_was_deleted_keeps_its_report(inprocess: InProcessFactory, redis_server: RedisServer) -> None:
    svc = inprocess(qa_records(30), redis_url=redis_server.url)
    texts = [f"{r['question']}\n{r['answer']}" for r in qa_records(20, seed=3)]
    assert svc.client.put("/pools/gone", json={"texts": texts}).status_code == 202
    for _ in range(200):
        if svc.client.get("/pools/gone").json()["state"] == "ready":
            break
        import time

        time.sleep(0.05)
    body = {"queries": ["how many apples"], "max_k": 5, "budget": 4, "run_id": "rep-gone", "round": 0, "pool": "gone"}
    assert svc.client.post("/select", json=body).status_code == 200
    assert svc.client.delete("/pools/gone").status_code == 200
    report = svc.client.get("/runs/rep-gone/report.json")
    assert report.status_code == 200
    assert "gone" in str(report.json()).lower()
    assert svc.client.get("/runs/rep-gone").json()["pool_deleted"] is True


def test_reports_need_the_api_key(inprocess: InProcessFactory, redis_server: RedisServer) -> None:
    svc = inprocess(qa_records(20), redis_url=redis_server.url, api_key="k" * 32)
    for path in ("/runs/x/report", "/runs/x/report.json", "/pools/default/report", "/pools/default/report.json"):
        assert svc.client.get(path).status_code == 401
