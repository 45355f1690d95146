"""POST /select against a real uvicorn server: equals the offline CLI, limits, errors, batching."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from near_service.cli import main as cli_main
from near_service.core.records import load_texts

from .api_data import metric, post_select, qa_records, query_records, write_jsonl


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    return {
        "pool": write_jsonl(d / "pool.jsonl", qa_records(40)),
        "queries": write_jsonl(d / "queries.jsonl", query_records()),
        "dir": d,
    }


@pytest.fixture(scope="module")
def svc(module_service_factory: Any, files: dict[str, Path]) -> Any:
    return module_service_factory(
        candidates=[files["pool"]],
        max_queries=64,
        max_query_chars=500,
        max_body_bytes=8192,
        max_k_limit=30,
        max_queue=4,
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
def test_select_equals_offline_cli(svc: Any, files: dict[str, Path], tmp_path: Path, strategy: str) -> None:
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


def test_duplicates_and_shapes(svc: Any) -> None:
    r = post_select(svc.url, queries=[qa_records(40)[3]["question"]], max_k=30)
    assert r.status_code == 200
    row = r.json()["indices"][0]
    assert len(row) == 30 and len(set(row)) == 30
    assert row.index(39) == row.index(3) + 1  # the duplicate comes right after its first copy
    assert r.json()["selected"] is None


def test_info_health_docs(svc: Any) -> None:
    assert httpx.get(f"{svc.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{svc.url}/ready").json()
    assert ready["status"] == "ready" and ready["redis"] == "disabled"
    info = httpx.get(f"{svc.url}/info").json()
    assert info["dim"] == 384 and info["backend"] == "sentence-transformers" and info["index"] == "flat"
    spec = httpx.get(f"{svc.url}/openapi.json").json()
    assert {"/select", "/runs/{run_id}", "/v1/embeddings", "/ready", "/metrics"} <= set(spec["paths"])
    assert httpx.get(f"{svc.url}/docs").status_code == 200


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
def test_bad_input_then_good(svc: Any, why: str, kwargs: dict[str, Any], status: int, code: str) -> None:
    r = httpx.post(f"{svc.url}/select", timeout=60, **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    ok = post_select(svc.url, queries=["How many apples?"], max_k=3)
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nope", 404, "not_found"),
        ("GET", "/select", 405, "method_not_allowed"),
        ("GET", "/runs/some-run", 503, "unavailable"),
    ],
)
def test_http_errors_are_json(svc: Any, method: str, path: str, status: int, code: str) -> None:
    r = httpx.request(method, f"{svc.url}{path}")
    assert r.status_code == status and r.json()["error"]["code"] == code


def test_embeddings_openai_compatible(svc: Any) -> None:
    pool_text = "\n".join(qa_records(40)[0].values())
    r = httpx.post(f"{svc.url}/v1/embeddings", json={"input": [pool_text, "hello"], "model": "all-MiniLM-L6-v2"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]
    v = np.asarray(body["data"][0]["embedding"], dtype=np.float32)
    assert v.shape == (384,) and abs(float(np.linalg.norm(v)) - 1) < 1e-3
    assert body["usage"]["prompt_tokens"] > 0
    b64 = httpx.post(f"{svc.url}/v1/embeddings", json={"input": "hello", "encoding_format": "base64"}).json()
    import base64

    v64 = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(v64, np.asarray(body["data"][1]["embedding"], dtype=np.float32), atol=1e-6)
    for bad in ({"input": "x", "model": "other-model"}, {"input": "x", "dimensions": 17}, {"input": []}):
        r = httpx.post(f"{svc.url}/v1/embeddings", json=bad)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"


def test_concurrent_requests_are_micro_batched(svc: Any) -> None:
    before = metric(svc.url, "near_embed_batches_total")
    queries = [f"How many {t} are left after {i} are sold?" for i, t in enumerate(["pens", "cups", "hats", "dogs"])]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda q: post_select(svc.url, queries=[q], max_k=5), queries))
    assert all(a.status_code == 200 for a in answers)
    batches = metric(svc.url, "near_embed_batches_total") - before
    assert 1 <= batches <= len(queries)
    # the same queries again: served from the cache, the model embeds nothing
    embedded = metric(svc.url, "near_embedded_texts_total")
    again = post_select(svc.url, queries=queries, max_k=5)
    assert again.json()["indices"] == [a.json()["indices"][0] for a in answers]
    assert metric(svc.url, "near_embedded_texts_total") == embedded


def test_queue_full_gets_429_with_retry_after(svc: Any) -> None:
    def ask(i: int) -> httpx.Response:
        return post_select(svc.url, queries=[f"question {i} number {j} about trains" for j in range(60)], max_k=5)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(16)))
    codes = sorted(a.status_code for a in answers)
    assert set(codes) <= {200, 429} and 200 in codes
    for a in answers:
        if a.status_code == 429:
            assert a.headers["retry-after"] == "1" and a.json()["error"]["code"] == "overloaded"
    assert 429 in codes, "16 concurrent requests over a queue of 4 should see a 429"
    assert post_select(svc.url, queries=["x"], max_k=2).status_code == 200
