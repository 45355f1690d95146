"""Pools registered at run time against a real uvicorn process and the packaged MiniLM (small pools).

- ``PUT /pools/x {"texts": pool}`` then ``/select`` with ``pool: "x"`` answers exactly what
  ``near-select offline`` writes for the same records (every strategy);
- a client that hangs up mid-upload leaves nothing registered;
- kill -9 while a pool embeds: after the restart the pool is queued again and finishes, never
  served half-embedded; a second restart brings it back ready without embedding a row;
- a 10 MB text is refused at once (413); a 192k-character one is accepted and truncated by the model.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from near_schema import ERROR_CODES, fingerprint
from near_schema.templates import render_records
from near_service.cli import main as cli_main
from tests.conftest import ServiceFactory, ServiceProcess
from tests.service.api_data import metric, qa_records, query_records, write_jsonl

STRATEGIES = ("density", "round_robin", "max_score", "importance")


def wait_pool(url: str, name: str, timeout: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = httpx.get(f"{url}/pools/{name}", timeout=30).json()
        if status["state"] == "ready":
            return status
        assert status["state"] != "failed", status
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"} and body["error"]["code"] == code
    assert code in ERROR_CODES


def document_embedded(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith('near_embedded_texts_total{kind="document"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def no_pool_service(module_service_factory: ServiceFactory) -> ServiceProcess:
    """A service started with no pool at all (ready once the model loads)."""
    return module_service_factory(candidates=[], dtype="float32")


def test_put_pool_answers_exactly_what_offline_writes(no_pool_service: ServiceProcess, tmp_path: Path) -> None:
    url = no_pool_service.url
    records = qa_records(60, seed=3)
    texts = render_records(records, "default")
    r = httpx.put(f"{url}/pools/x", json={"texts": texts}, timeout=60)
    assert r.status_code == 202, r.text
    status = wait_pool(url, "x")
    assert status["fingerprint"] == fingerprint(texts)
    pool_file = write_jsonl(tmp_path / "pool.jsonl", records)
    queries = query_records()
    query_file = write_jsonl(tmp_path / "queries.jsonl", queries)
    query_texts = render_records(queries, "default")
    max_k, budget = 10, 12
    for strategy in STRATEGIES:
        out = tmp_path / f"out-{strategy}"
        argv = ["offline", "--candidates", str(pool_file), "--queries", str(query_file), "--out-dir", str(out)]
        argv += ["--max-k", str(max_k), "--budget", str(budget), "--strategy", strategy, "--dtype", "float32"]
        argv += ["--cache-dir", str(tmp_path / "cache"), "--quiet"]
        assert cli_main(argv) == 0
        body = {"queries": query_texts, "max_k": max_k, "budget": budget, "strategy": strategy, "pool": "x"}
        r = httpx.post(f"{url}/select", json=body, timeout=120)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["pool"]["name"] == "x" and answer["pool"]["fingerprint"] == fingerprint(texts)
        offline = np.load(out / "top_indices.npy")
        served = np.array(answer["indices"])
        recall = np.mean([len(np.intersect1d(a, b)) / max_k for a, b in zip(served, offline, strict=True)])
        assert recall == 1.0, strategy
        selected = json.loads((out / "selected.json").read_text())
        assert sorted(answer["selected"]) == sorted(selected), strategy


def test_client_hanging_up_mid_upload_registers_nothing(no_pool_service: ServiceProcess) -> None:
    url = no_pool_service.url
    body = json.dumps({"texts": [f"row {i} about apples" for i in range(5000)]}).encode()
    nd = b"".join(json.dumps(f"row {i} about trains").encode() + b"\n" for i in range(5000))
    for name, content_type, raw in (("gone", "application/json", body), ("gone-nd", "application/x-ndjson", nd)):
        with socket.create_connection(("127.0.0.1", no_pool_service.port), timeout=10) as s:
            head = (
                f"PUT /pools/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(raw)}\r\n\r\n"
            )
            s.sendall(head.encode() + raw[: len(raw) // 2])
            time.sleep(0.3)
        time.sleep(0.5)
        assert_error(httpx.get(f"{url}/pools/{name}", timeout=10), 404, "pool_not_found")
        names = [p["name"] for p in httpx.get(f"{url}/pools", timeout=10).json()["pools"]]
        assert name not in names
        cache = Path(no_pool_service.env["NEAR_CACHE_DIR"])
        assert not (cache / "registry" / "pools" / f"{name}.json").exists()
    r = httpx.put(f"{url}/pools/gone", json={"texts": ["the same name, a whole body"]}, timeout=60)
    assert r.status_code == 202, r.text  # the service still serves, and the name is free
    wait_pool(url, "gone")


def test_a_10_mb_text_is_refused_and_a_long_one_truncated(no_pool_service: ServiceProcess) -> None:
    url = no_pool_service.url
    sentence = "How many apples are there in the basket today? "
    others = ["apples in a basket", "trains between cities", "a recipe for bread"]
    r = httpx.put(f"{url}/pools/big", json={"texts": [sentence * (10 * 2**20 // 48), *others]}, timeout=120)
    assert_error(r, 413, "too_large")  # at once: the tokenizer would take minutes over it
    long = sentence * 4000  # 192k characters: accepted, the model reads its first max_length tokens
    r = httpx.put(f"{url}/pools/long", json={"texts": [long, *others]}, timeout=120)
    assert r.status_code == 202, r.text
    wait_pool(url, "long")
    body = {"queries": ["How many apples are in the basket?"], "max_k": 4, "pool": "long"}
    r = httpx.post(f"{url}/select", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert sorted(r.json()["indices"][0]) == [0, 1, 2, 3]
    assert httpx.delete(f"{url}/pools/long", timeout=30).status_code == 200


def test_kill_9_during_registration(service_factory: ServiceFactory) -> None:
    svc = service_factory(candidates=[], dtype="float32")
    texts = [f"row {i}: " + " ".join(f"word{(i * j) % 97}" for j in range(40)) for i in range(1500)]
    r = httpx.put(f"{svc.url}/pools/big", json={"texts": texts}, timeout=120)
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 300
    while True:  # kill it part-way through the embedding
        status = httpx.get(f"{svc.url}/pools/big", timeout=30).json()
        assert status["state"] != "ready", "the pool finished before it could be killed; make it larger"
        if status["state"] == "embedding" and status["progress"]["done"] > 0:
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    svc.stop()  # SIGKILL
    svc.start()
    seen_states = set()
    deadline = time.monotonic() + 600
    while True:
        status = httpx.get(f"{svc.url}/pools/big", timeout=30).json()
        seen_states.add(status["state"])
        assert status["fingerprint"] == fingerprint(texts) and status["rows"] == 1500
        r = httpx.post(f"{svc.url}/select", json={"queries": ["word3 word5"], "max_k": 5, "pool": "big"}, timeout=60)
        if status["state"] == "ready":
            break
        assert status["state"] != "failed", status
        if r.status_code != 200:  # never a half pool: either 503 while it embeds, or the whole pool
            assert_error(r, 503, "pool_not_ready")
        else:
            assert r.json()["pool"]["size"] == 1500
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert r.status_code == 200 and r.json()["pool"]["size"] == 1500, r.text
    svc.stop()
    svc.start()  # and once more: ready from its files, nothing embedded
    status = wait_pool(svc.url, "big")
    assert status["fingerprint"] == fingerprint(texts)
    assert document_embedded(svc.url) == 0
    assert metric(svc.url, "near_embedded_texts_total") == 0
