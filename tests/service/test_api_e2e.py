"""End to end: a real uvicorn server, the real packaged MiniLM, a real Redis.

What only real parts can show: /select equals ``near-select offline``, the real model's answers,
limits over real (chunked) HTTP, the API key over real HTTP and out of the access log, and the run
ledger surviving a kill and restart. Validation, errors, auth and ledger logic are tested in-process
(test_api_inprocess*.py); Redis dying and returning, and warm restarts, in test_api_redis.py.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from near_service.cli import main as cli_main
from near_service.core.records import load_texts
from tests.conftest import RedisServer, ServiceFactory, ServiceProcess

from .api_data import post_select, qa_records, query_records, write_jsonl

pytestmark = pytest.mark.e2e

KEY = "sk-test-7f3a9c0e1b2d4f6a8c0e"
WRONG = "sk-wrong-0000000000000000000"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    return {
        "pool": write_jsonl(d / "pool.jsonl", qa_records(40)),
        "queries": write_jsonl(d / "queries.jsonl", query_records()),
        "dir": d,
    }


@pytest.fixture(scope="module")
def svc(
    module_service_factory: ServiceFactory, module_redis_server: RedisServer, files: dict[str, Path]
) -> ServiceProcess:
    return module_service_factory(
        candidates=[files["pool"]], redis_url=module_redis_server.url, max_queries=64, max_body_bytes=8192
    )


def offline(files: dict[str, Path], tmp: Path, *extra: str) -> tuple[np.ndarray, np.ndarray, list[int] | None]:
    out = tmp / "out"
    rc = cli_main(
        [
            "offline",
            "--candidates",
            str(files["pool"]),
            "--queries",
            str(files["queries"]),
            "--out-dir",
            str(out),
            "--cache-dir",
            str(tmp / "offline-cache"),
            "--quiet",
            *extra,
        ]
    )
    assert rc == 0
    sel = json.loads((out / "selected.json").read_text()) if (out / "selected.json").exists() else None
    return np.load(out / "top_indices.npy"), np.load(out / "top_scores.npy"), sel


@pytest.mark.parametrize("strategy", ["round_robin", "max_score"])
def test_select_equals_offline_cli(svc: ServiceProcess, files: dict[str, Path], tmp_path: Path, strategy: str) -> None:
    # offline has a cache of its own (empty), so both sides embed everything themselves
    indices, scores, selected = offline(files, tmp_path, "--max-k", "12", "--budget", "9", "--strategy", strategy)
    queries = load_texts([files["queries"]], "default", "query")
    r = post_select(svc.url, queries=queries, max_k=12, budget=9, strategy=strategy)
    assert r.status_code == 200, r.text
    body = r.json()
    assert np.array_equal(np.asarray(body["indices"]), indices)
    np.testing.assert_allclose(np.asarray(body["scores"], dtype=np.float32), scores, atol=1e-6)
    assert body["selected"] == selected
    info = httpx.get(f"{svc.url}/info").json()
    assert body["pool"] == info["pool"] and info["pool"]["size"] == 40
    assert "search;dur=" in r.headers["server-timing"]


def test_info_health_docs_of_the_real_model(svc: ServiceProcess) -> None:
    assert httpx.get(f"{svc.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{svc.url}/ready").json()
    assert ready["status"] == "ready" and ready["redis"] == "ok"
    info = httpx.get(f"{svc.url}/info").json()
    assert info["dim"] == 384 and info["backend"] == "sentence-transformers" and info["index"] == "flat"
    spec = httpx.get(f"{svc.url}/openapi.json").json()
    assert {"/select", "/runs/{run_id}", "/v1/embeddings", "/ready", "/metrics"} <= set(spec["paths"])
    assert httpx.get(f"{svc.url}/docs").status_code == 200


def test_embeddings_of_the_real_model(svc: ServiceProcess) -> None:
    pool_text = "\n".join(qa_records(40)[0].values())
    r = httpx.post(f"{svc.url}/v1/embeddings", json={"input": [pool_text, "hello"], "model": "all-MiniLM-L6-v2"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]
    v = np.asarray(body["data"][0]["embedding"], dtype=np.float32)
    assert v.shape == (384,) and abs(float(np.linalg.norm(v)) - 1) < 1e-3
    assert body["usage"]["prompt_tokens"] > 0
    b64 = httpx.post(f"{svc.url}/v1/embeddings", json={"input": "hello", "encoding_format": "base64"}).json()
    v64 = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(v64, np.asarray(body["data"][1]["embedding"], dtype=np.float32), atol=1e-6)


OVER_HTTP = [
    ("too many queries", {"json": {"queries": ["q"] * 65, "max_k": 3}}, 413, "too_large"),
    (
        "body too large, chunked",
        {
            "content": iter([b'{"queries": ["' + b"x" * 5000, b"y" * 5000 + b'"]}']),
            "headers": {"content-type": "application/json"},
        },
        413,
        "too_large",
    ),
]


@pytest.mark.parametrize(("why", "kwargs", "status", "code"), OVER_HTTP, ids=[b[0] for b in OVER_HTTP])
def test_limits_over_real_http_then_good(
    svc: ServiceProcess, why: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    r = httpx.post(f"{svc.url}/select", timeout=60, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert post_select(svc.url, queries=["How many apples?"], max_k=3).status_code == 200


def test_api_key_over_real_http_and_not_logged(module_service_factory: ServiceFactory, files: dict[str, Path]) -> None:
    locked = module_service_factory(candidates=[files["pool"]], api_key=KEY, log_level="debug")
    try:
        assert httpx.get(f"{locked.url}/health").status_code == 200
        for headers in ({}, {"Authorization": f"Bearer {WRONG}"}):
            r = httpx.get(f"{locked.url}/info", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        auth = {"Authorization": f"Bearer {KEY}"}
        r = httpx.post(f"{locked.url}/select", headers=auth, json={"queries": ["apples"], "max_k": 3})
        assert r.status_code == 200 and len(r.json()["indices"][0]) == 3
        log = locked.log()
        assert "GET /info" in log  # the access log is on
        assert KEY not in log and WRONG not in log
    finally:
        locked.stop()


def test_ledger_survives_kill_and_restart(svc: ServiceProcess) -> None:
    body = {"queries": ["trains and clocks", "apples"], "max_k": 8, "budget": 5, "run_id": "e2e-run", "round": 0}
    first = httpx.post(f"{svc.url}/select", json=body, timeout=60)
    assert first.status_code == 200 and first.json()["source"] == "computed"
    svc.stop()  # killed: nothing is flushed at exit
    svc.start()  # same port, same settings, same Redis
    again = httpx.post(f"{svc.url}/select", json=body, timeout=60)
    assert again.status_code == 200 and again.json()["source"] == "stored"
    assert again.json()["selected"] == first.json()["selected"]
    assert [x["round"] for x in httpx.get(f"{svc.url}/runs/e2e-run").json()["rounds"]] == [0]
