"""POST /select and the other routes in-process (TestClient + the fake embedder): answers, limits,
errors, the OpenAI-compatible embeddings, micro-batching and the queue limit.

Fast and subprocess-free; the real model and real uvicorn run in test_api_e2e.py beside it.
"""

from __future__ import annotations

import base64
import concurrent.futures
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import InProcessFactory, InProcessService, RedisServer
from tests.fakes import FAKE_DIM
from tests.service.api_data import metric, qa_records, query_records


def _queries() -> list[str]:
    return [f"{r['question']}\n{r['answer']}" for r in query_records()]


@pytest.fixture(scope="module")
def svc(module_inprocess: InProcessFactory) -> InProcessService:
    """Small limits, so each one can be hit; no Redis."""
    return module_inprocess(max_queries=64, max_query_chars=500, max_body_bytes=8192, max_k_limit=30, max_queue=4)


def select(svc: InProcessService, **body: Any) -> httpx.Response:
    return svc.client.post("/select", json=body)


def test_select_answers_with_neighbours_and_a_budget(svc: InProcessService) -> None:
    r = select(svc, queries=_queries(), max_k=5, budget=7)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["indices"]) == 5 and all(len(row) == 5 for row in body["indices"])
    assert len(set(body["selected"])) == 7 and body["source"] == "computed"
    assert body["pool"]["size"] == 40 and body["pool"]["model"] == "fake/hashing-bow"
    assert body["pool"] == svc.client.get("/info").json()["pool"]
    assert "search;dur=" in r.headers["server-timing"]


@pytest.mark.parametrize("strategy", ["density", "round_robin", "max_score", "importance"])
def test_select_is_deterministic_and_scores_are_sorted(svc: InProcessService, strategy: str) -> None:
    first = select(svc, queries=_queries(), max_k=12, budget=9, strategy=strategy).json()
    again = select(svc, queries=_queries(), max_k=12, budget=9, strategy=strategy).json()
    assert first == again and len(first["selected"]) == 9
    for row in first["scores"]:
        assert row == sorted(row, reverse=True)


def test_duplicates_and_shapes(svc: InProcessService) -> None:
    r = select(svc, queries=[qa_records(40)[3]["question"]], max_k=30)
    assert r.status_code == 200
    row = r.json()["indices"][0]
    assert len(row) == 30 and len(set(row)) == 30
    assert row.index(39) == row.index(3) + 1  # the duplicate comes right after its first copy
    assert r.json()["selected"] is None


def test_info_health_docs(svc: InProcessService) -> None:
    assert svc.client.get("/health").json() == {"status": "ok"}
    ready = svc.client.get("/ready").json()
    assert ready["status"] == "ready" and ready["redis"] == "disabled"
    info = svc.client.get("/info").json()
    assert info["dim"] == FAKE_DIM and info["model"] == "fake/hashing-bow" and info["index"] == "flat"
    spec = svc.client.get("/openapi.json").json()
    assert {"/select", "/runs/{run_id}", "/v1/embeddings", "/ready", "/metrics"} <= set(spec["paths"])
    assert svc.client.get("/docs").status_code == 200


BAD_INPUTS = [
    # (why, request kwargs, status, code)
    ("empty queries", {"json": {"queries": [], "max_k": 3}}, 422, "invalid_input"),
    ("max_k zero", {"json": {"queries": ["x"], "max_k": 0}}, 422, "invalid_input"),
    ("max_k over the limit", {"json": {"queries": ["x"], "max_k": 31}}, 422, "invalid_max_k"),
    ("budget over the reachable", {"json": {"queries": ["x"], "max_k": 3, "budget": 10}}, 422, "budget_too_large"),
    (
        "unknown strategy",
        {"json": {"queries": ["x"], "max_k": 3, "budget": 2, "strategy": "best"}},
        422,
        "invalid_input",
    ),
    ("unknown field", {"json": {"queries": ["x"], "max_k": 3, "top_k": 3}}, 422, "invalid_input"),
    ("round without run_id", {"json": {"queries": ["x"], "max_k": 3, "round": 1}}, 422, "invalid_input"),
    ("queries not a list", {"json": {"queries": "x", "max_k": 3}}, 422, "invalid_input"),
    ("not JSON", {"content": b"{nope", "headers": {"content-type": "application/json"}}, 422, "invalid_input"),
    ("too many queries", {"json": {"queries": ["q"] * 65, "max_k": 3}}, 413, "too_large"),
    ("query too long", {"json": {"queries": ["x" * 501], "max_k": 3}}, 413, "too_large"),
    ("body too large", {"json": {"queries": ["x" * 400] * 30, "max_k": 3}}, 413, "too_large"),
    (
        "body too large, streamed",
        {
            "content": iter([b'{"queries": ["' + b"x" * 5000, b"y" * 5000 + b'"]}']),
            "headers": {"content-type": "application/json"},
        },
        413,
        "too_large",
    ),
    ("run_id without Redis", {"json": {"queries": ["x"], "max_k": 3, "run_id": "r", "round": 0}}, 503, "unavailable"),
]


@pytest.mark.parametrize(("why", "kwargs", "status", "code"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_then_good(svc: InProcessService, why: str, kwargs: dict[str, Any], status: int, code: str) -> None:
    r = svc.client.post("/select", **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    ok = select(svc, queries=["How many apples?"], max_k=3)
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nope", 404, "not_found"),
        ("GET", "/select", 405, "method_not_allowed"),
        ("GET", "/runs/some-run", 503, "unavailable"),
    ],
)
def test_http_errors_are_json(svc: InProcessService, method: str, path: str, status: int, code: str) -> None:
    r = svc.client.request(method, path)
    assert r.status_code == status and r.json()["error"]["code"] == code


def test_embeddings_openai_compatible(svc: InProcessService) -> None:
    pool_text = "\n".join(qa_records(40)[0].values())
    r = svc.client.post("/v1/embeddings", json={"input": [pool_text, "hello"], "model": "hashing-bow"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]
    v = np.asarray(body["data"][0]["embedding"], dtype=np.float32)
    assert v.shape == (FAKE_DIM,) and abs(float(np.linalg.norm(v)) - 1) < 1e-3
    assert body["usage"]["prompt_tokens"] > 0
    b64 = svc.client.post("/v1/embeddings", json={"input": "hello", "encoding_format": "base64"}).json()
    v64 = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(v64, np.asarray(body["data"][1]["embedding"], dtype=np.float32), atol=1e-6)
    for bad in ({"input": "x", "model": "other-model"}, {"input": "x", "dimensions": 17}, {"input": []}):
        r = svc.client.post("/v1/embeddings", json=bad)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"


def test_concurrent_requests_are_micro_batched(inprocess: InProcessFactory, redis_server: RedisServer) -> None:
    svc = inprocess(redis_url=redis_server.url)  # queries are cached in Redis only
    before = metric(svc.client, "near_embed_batches_total")
    queries = [f"How many {t} are left after {i} are sold?" for i, t in enumerate(["pens", "cups", "hats", "dogs"])]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda q: select(svc, queries=[q], max_k=5), queries))
    assert all(a.status_code == 200 for a in answers)
    batches = metric(svc.client, "near_embed_batches_total") - before
    assert 1 <= batches <= len(queries)
    # the same queries again: served from the cache, the model embeds nothing
    embedded = metric(svc.client, "near_embedded_texts_total")
    calls = len(svc.embedder.backend.calls)
    again = select(svc, queries=queries, max_k=5)
    assert again.json()["indices"] == [a.json()["indices"][0] for a in answers]
    assert metric(svc.client, "near_embedded_texts_total") == embedded
    assert len(svc.embedder.backend.calls) == calls


def test_queue_full_gets_429_with_retry_after(svc: InProcessService) -> None:
    def ask(i: int) -> httpx.Response:
        return select(svc, queries=[f"question {i} number {j} about trains" for j in range(60)], max_k=5)

    svc.embedder.backend.delay = 0.2  # each model call takes a while: requests pile up behind it
    try:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, range(16)))
    finally:
        svc.embedder.backend.delay = 0.0
    codes = sorted(a.status_code for a in answers)
    assert set(codes) <= {200, 429} and 200 in codes
    for a in answers:
        if a.status_code == 429:
            assert a.headers["retry-after"] == "1" and a.json()["error"]["code"] == "overloaded"
    assert 429 in codes, "16 concurrent requests over a queue of 4 should see a 429"
    assert select(svc, queries=["x"], max_k=2).status_code == 200
