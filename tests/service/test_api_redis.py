"""Redis as the shared cache: fail-open when it dies, reconnect when it returns, warm restarts."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import RedisServer, ServiceFactory

from .api_data import metric, post_select, qa_records, write_jsonl

pytestmark = pytest.mark.e2e

UNIQUE = 39  # qa_records(40) has one duplicate text


def wait_for_redis_state(url: str, want: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/ready").json()["redis"] == want:
            return
        time.sleep(0.2)
    raise AssertionError(f"/ready never reported redis={want!r}")


def emb_keys(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return sum(1 for _ in client.scan_iter("near:emb:*", count=1000))
    finally:
        client.close()


@pytest.fixture
def pool_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "pool.jsonl", qa_records(40))


def test_redis_killed_and_back(service_factory: ServiceFactory, redis_server: RedisServer, pool_file: Path) -> None:
    svc = service_factory(candidates=[pool_file], redis_url=redis_server.url)
    assert emb_keys(redis_server.url) == UNIQUE  # the pool went into Redis
    assert post_select(svc.url, queries=["apples before"], max_k=5).status_code == 200
    assert metric(svc.url, "near_redis_up") == 1

    redis_server.stop()
    for i in range(3):  # new queries: embedded by the model, answered as usual
        r = post_select(svc.url, queries=[f"apples while Redis is down {i}"], max_k=5, budget=3)
        assert r.status_code == 200, r.text
    wait_for_redis_state(svc.url, "degraded")
    assert httpx.get(f"{svc.url}/ready").status_code == 200  # degraded, still serving
    assert metric(svc.url, "near_redis_up") == 0
    led = post_select(svc.url, queries=["x"], max_k=2, run_id="r1", round=0)
    assert led.status_code == 503 and "Redis" in led.json()["error"]["message"]
    assert httpx.get(f"{svc.url}/runs/r1").status_code == 503

    redis_server.start()  # same port, empty (no persistence)
    wait_for_redis_state(svc.url, "ok")
    assert metric(svc.url, "near_redis_up") == 1
    assert post_select(svc.url, queries=["apples after Redis returned"], max_k=5).status_code == 200
    assert emb_keys(redis_server.url) >= 1  # caching again
    assert post_select(svc.url, queries=["x"], max_k=2, run_id="r1", round=0).status_code == 200
    assert "Redis is back" in svc.log()


def test_restart_with_warm_redis_embeds_nothing(
    service_factory: ServiceFactory, redis_server: RedisServer, pool_file: Path, tmp_path: Path
) -> None:
    first = service_factory(candidates=[pool_file], redis_url=redis_server.url, cache_dir=tmp_path / "c1")
    assert metric(first.url, "near_embedded_texts_total") == UNIQUE
    cold = post_select(first.url, queries=["trains and clocks"], max_k=10, budget=4).json()
    first.stop()
    # a new process, a fresh (empty) disk cache: only Redis is warm
    second = service_factory(candidates=[pool_file], redis_url=redis_server.url, cache_dir=tmp_path / "c2")
    warm = post_select(second.url, queries=["trains and clocks"], max_k=10, budget=4).json()
    assert warm == cold
    assert metric(second.url, "near_embedded_texts_total") == 0
    hits = httpx.get(f"{second.url}/metrics").text
    assert f'near_cache_lookups_total{{result="hit",store="redis"}} {UNIQUE + 1}.0' in hits  # pool + query


def test_redis_down_at_start_serves_degraded(
    service_factory: ServiceFactory, redis_server: RedisServer, pool_file: Path
) -> None:
    url = redis_server.url
    redis_server.stop()
    svc = service_factory(candidates=[pool_file], redis_url=url)
    ready = httpx.get(f"{svc.url}/ready").json()
    assert ready["status"] == "ready" and ready["redis"] == "degraded"
    assert post_select(svc.url, queries=["apples"], max_k=3).status_code == 200
    redis_server.start()
    wait_for_redis_state(svc.url, "ok")
