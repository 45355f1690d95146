"""Issue 9 (part A), in-process: one bad request fails only itself; limits are clear errors.

Every test here failed on the code before the hardening: a lone surrogate failed a whole
micro-batch, nothing capped queries x max_k, client-chosen methods became metric labels, "5" was a
valid max_k, and a 500 named the exception class.
"""

from __future__ import annotations

import concurrent.futures
import logging
import re
from typing import Any

import numpy as np
import pytest

from near_service.core.settings import Settings
from near_service.server.app import QuietHealthChecks
from tests.conftest import InProcessFactory


def test_a_lone_surrogate_is_a_422_naming_the_field(inprocess: InProcessFactory) -> None:
    svc = inprocess()
    raw = b'{"queries":["fine","\\ud800"],"max_k":1}'
    r = svc.client.post("/select", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert "queries.1" in r.json()["error"]["message"] and "surrogate" in r.json()["error"]["message"]
    for body in (b'{"input":"\\udfff"}', b'{"input":["ok","\\ud800x"]}'):
        r = svc.client.post("/v1/embeddings", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "surrogate" in r.json()["error"]["message"], r.text
    assert svc.client.post("/select", json={"queries": ["apples"], "max_k": 1}).status_code == 200


def test_a_request_that_breaks_the_model_fails_only_itself(inprocess: InProcessFactory) -> None:
    """150 innocent requests around one whose text makes the model raise: all 150 get 200."""
    svc = inprocess()
    backend = svc.embedder.backend
    encode = backend.encode

    def poisoned(texts: Any) -> Any:
        if any("POISON" in t for t in texts):
            raise RuntimeError("the model choked on this text")
        return encode(texts)

    backend.encode = poisoned  # type: ignore[method-assign]

    def post(i: int) -> int:
        q = "POISON pill" if i == 75 else f"how many apples {i}"
        return svc.client.post("/select", json={"queries": [q], "max_k": 1}).status_code

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(post, range(151)))
    assert codes[75] == 500
    assert codes[:75] + codes[76:] == [200] * 150
    assert svc.client.post("/select", json={"queries": ["apples"], "max_k": 1}).status_code == 200


def test_a_500_names_no_internals_and_carries_a_request_id(
    inprocess: InProcessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    svc = inprocess()

    def boom(texts: Any) -> Any:
        raise ZeroDivisionError("secret detail")

    svc.embedder.backend.encode = boom  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR):
        r = svc.client.post("/select", json={"queries": ["never seen before"], "max_k": 1})
    assert r.status_code == 500
    message = r.json()["error"]["message"]
    assert "ZeroDivisionError" not in message and "secret" not in message
    request_id = re.search(r"request ([0-9a-f]+)", message)
    assert request_id and r.headers["x-request-id"] == request_id.group(1)
    assert request_id.group(1) in caplog.text


@pytest.mark.parametrize(
    "body",
    [
        {"queries": ["a"], "max_k": "5"},
        {"queries": ["a"], "max_k": True},
        {"queries": ["a"], "max_k": 1.0},
        {"queries": ["a"], "max_k": 1, "budget": "2"},
        {"queries": ["a"], "max_k": 1, "budget": 1, "run_id": "r", "round": 0, "exclude_previous": 0},
        {"queries": [5], "max_k": 1},
    ],
)
def test_no_loose_coercion(inprocess: InProcessFactory, body: dict[str, Any]) -> None:
    svc = inprocess()
    r = svc.client.post("/select", json=body)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input", r.text


def test_queries_times_max_k_is_capped(inprocess: InProcessFactory) -> None:
    svc = inprocess(max_result_entries=1000)
    r = svc.client.post("/select", json={"queries": ["apples"] * 101, "max_k": 10})
    assert r.status_code == 413 and "NEAR_MAX_RESULT_ENTRIES" in r.json()["error"]["message"], r.text
    assert svc.client.post("/select", json={"queries": ["apples"] * 100, "max_k": 10}).status_code == 200


def test_a_big_answer_is_streamed_and_equals_the_small_path(inprocess: InProcessFactory) -> None:
    svc = inprocess()
    queries = [f"apples and trains number {i}" for i in range(1700)]
    big = svc.client.post("/select", json={"queries": queries, "max_k": 40, "budget": 30})  # 68,000 > 65,536
    assert big.status_code == 200 and "content-length" not in big.headers  # chunked
    small = svc.client.post("/select", json={"queries": queries[:3], "max_k": 40, "budget": 30})
    body = big.json()
    assert len(body["indices"]) == 1700 and body["indices"][:3] == small.json()["indices"]
    assert np.allclose(body["scores"][:3], small.json()["scores"], atol=1e-6)  # BLAS batch sizes differ
    assert body["pool"] == small.json()["pool"] and body["selected"] is not None


def test_client_chosen_methods_do_not_grow_metrics(inprocess: InProcessFactory) -> None:
    svc = inprocess()
    sizes = []
    for burst in range(3):
        for i in range(100):
            svc.client.request(f"MADEUP{burst}x{i}", f"/nope/{burst}/{i}")
            svc.client.request(f"X{burst}x{i}", "/select")
        sizes.append(len(svc.client.get("/metrics").text))
    text = svc.client.get("/metrics").text
    assert "MADEUP" not in text and 'method="X' not in text and "/nope" not in text
    assert 'method="other"' in text
    assert abs(sizes[2] - sizes[1]) < 200, sizes  # 200 more made-up methods and paths: no new series


def test_the_default_body_limit_is_sized_from_the_query_limits() -> None:
    s = Settings()
    assert s.body_limit == 4096 * 4096 + 32768 * 6  # 16.2 MiB, not 64 MiB
    assert Settings(max_queries=64, max_query_chars=500).body_limit == 64 * 4096 + 500 * 6
    assert Settings(max_body_bytes=8192).body_limit == 8192


def test_the_docs_work_offline(inprocess: InProcessFactory) -> None:
    svc = inprocess()
    page = svc.client.get("/docs")
    assert page.status_code == 200 and "cdn" not in page.text.lower()
    for asset in re.findall(r'(?:src|href)="(/docs/static/[^"]+)"', page.text):
        assert svc.client.get(asset).status_code == 200, asset
    assert "/docs/static/swagger-ui-bundle.js" in page.text


def test_health_checks_stay_out_of_the_access_log() -> None:
    quiet = QuietHealthChecks()

    def line(path: str, status: int) -> logging.LogRecord:
        args = ("127.0.0.1:5", "GET", path, "1.1", status)
        return logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d', args, None)

    assert not quiet.filter(line("/health", 200)) and not quiet.filter(line("/ready?x=1", 503))
    assert quiet.filter(line("/select", 200)) and quiet.filter(line("/health", 500))
