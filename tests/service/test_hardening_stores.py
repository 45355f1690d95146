"""Stores under faults, in-process with a real redis-server: a hung Redis, damaged caches, bounded
caches, a ledger that lost rounds or holds a damaged entry, a changed model folder, a shutdown in
the middle of embedding the pool. The hung Redis with real uvicorn is in test_hardening_stores_uvicorn.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from near_service.core.embedder import EmbeddingStopped, decode_blob, encode_blob
from near_service.core.modelspec import _content_revision
from near_service.stores.cache import Breaker, DiskCache, RedisCache
from tests.conftest import InProcessFactory, RedisServer
from tests.fakes import FakeEmbedder, HashingBackend
from tests.service.api_data import metric

UNIQUE = 39  # qa_records(40) has one duplicate text


@pytest.fixture
def hung(redis_server: RedisServer) -> Iterator[RedisServer]:
    """``redis_server``, which the test may SIGSTOP; SIGCONT at teardown whatever happened."""
    yield redis_server
    if redis_server.proc is not None:
        os.kill(redis_server.proc.pid, signal.SIGCONT)


def _stop(server: RedisServer) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)


def _cont(server: RedisServer) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGCONT)


def test_breaker_pays_a_hung_redis_once_per_backoff(hung: RedisServer) -> None:
    client = redis.Redis.from_url(hung.url, socket_timeout=0.25, socket_connect_timeout=0.25)
    cache = RedisCache(client, Breaker())
    cache.put_many([("k", b"v")])
    _stop(hung)
    t = time.perf_counter()
    assert cache.get_many(["k"]) == [None]  # the timeout, once
    first = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(50):  # open: skipped, no socket wait at all
        assert cache.get_many(["k"]) == [None]
    rest = time.perf_counter() - t
    assert 0.2 <= first < 1.0 and rest < 0.1, (first, rest)
    assert not cache.up
    _cont(hung)
    time.sleep(0.6)  # past the first backoff: one half-open probe closes the breaker
    assert cache.get_many(["k"]) == [b"v"] and cache.up


def test_hung_redis_plain_requests_fast_ledger_503_no_429(inprocess: InProcessFactory, hung: RedisServer) -> None:
    svc = inprocess(redis_url=hung.url, max_queue=2)
    _stop(hung)
    ledger_answers: list[httpx.Response] = []

    def ledger(i: int) -> None:
        ledger_answers.append(
            svc.client.post("/select", json={"queries": ["x"], "max_k": 2, "run_id": f"h{i}", "round": 0})
        )

    waiting = [threading.Thread(target=ledger, args=(i,)) for i in range(2)]
    t0 = time.perf_counter()
    for th in waiting:
        th.start()
    time.sleep(0.3)  # both ledger requests now wait on the hung Redis, holding no admission slot
    for i in range(4):
        t = time.perf_counter()
        r = svc.client.post("/select", json={"queries": [f"apples while hung {i}"], "max_k": 3})
        assert r.status_code == 200, r.text
        assert time.perf_counter() - t < 1.5
    for th in waiting:
        th.join()
    assert [r.status_code for r in ledger_answers] == [503, 503]
    assert time.perf_counter() - t0 < 2.0 + 1.5  # NEAR_LEDGER_TIMEOUT and some
    t = time.perf_counter()
    r = svc.client.post("/select", json={"queries": ["x"], "max_k": 2, "run_id": "late", "round": 0})
    assert r.status_code == 503 and time.perf_counter() - t < 0.5  # breaker open: at once
    assert metric(svc.client, "near_rejected_total") == 0
    _cont(hung)
    deadline = time.monotonic() + 15
    while svc.client.get("/ready").json()["redis"] != "ok":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    r = svc.client.post("/select", json={"queries": ["x"], "max_k": 2, "run_id": "late", "round": 0})
    assert r.status_code == 200, r.text


def test_garbage_sqlite_file_is_moved_aside(inprocess: InProcessFactory, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "embeddings.sqlite3").write_bytes(b"this is not a database\n" * 500)
    svc = inprocess(cache_dir=cache)
    assert svc.client.post("/select", json={"queries": ["apples"], "max_k": 3}).status_code == 200
    assert len(list(cache.glob("embeddings.sqlite3.corrupt-*"))) == 1
    assert len(DiskCache(cache)) == UNIQUE


def test_truncated_sqlite_file_is_moved_aside(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path)
    disk.put_many([(f"k{i}", os.urandom(1600)) for i in range(3000)])
    disk.close()
    for extra in tmp_path.glob("embeddings.sqlite3-*"):
        extra.unlink()
    path = tmp_path / "embeddings.sqlite3"
    data = path.read_bytes()
    path.write_bytes(data[:100] + os.urandom(4096) + data[4196 : len(data) // 3])  # damaged header page, cut
    fresh = DiskCache(tmp_path)  # no exception: moved aside at open or at the first read
    fresh.get_many([f"k{i}" for i in range(3000)])
    fresh.put_many([("new", b"x")])
    assert fresh.get_many(["new"]) == [b"x"]
    assert len(list(tmp_path.glob("embeddings.sqlite3.corrupt-*"))) == 1


def test_blob_checks() -> None:
    vec = np.arange(4, dtype=np.float32)
    blob = encode_blob("ns", vec)
    np.testing.assert_array_equal(decode_blob("ns", blob, 4), vec)
    assert decode_blob("ns", blob, 5) is None  # wrong length
    assert decode_blob("other", blob, 4) is None  # another namespace
    assert decode_blob("ns", vec.tobytes(), 4) is None  # a bare vector (no header)
    assert decode_blob("ns", blob[:-1] + bytes([blob[-1] ^ 1]), 4) is None  # a flipped bit
    assert decode_blob("ns", encode_blob("ns", np.array([1, np.nan, 0, 0], dtype=np.float32)), 4) is None


@pytest.mark.parametrize("where", ["redis", "disk"])
def test_bad_blob_is_embedded_again(
    inprocess: InProcessFactory, redis_server: RedisServer, tmp_path: Path, where: str
) -> None:
    first = inprocess(redis_url=redis_server.url, cache_dir=tmp_path / "c")
    key = first.embedder.namespace
    client = redis.Redis.from_url(redis_server.url)
    victim = sorted(client.scan_iter("near:emb:*"))[0]
    bad = b"\0" * 7  # a wrong-length value
    if where == "redis":
        client.set(victim, bad)
    else:
        client.flushall()  # only the disk cache is warm, and one of its values is bad
        first.state.engine.stores[1].put_many([(victim.decode().removeprefix("near:emb:"), bad)])
    shutil.rmtree(tmp_path / "c" / "pools", ignore_errors=True)  # the pool's vector file: start from the caches
    # the damaged store is the only warm one for that entry (a fresh disk cache when Redis holds it)
    second = inprocess(redis_url=redis_server.url, cache_dir=tmp_path / ("c" if where == "disk" else "c2"))
    assert second.client.get("/ready").status_code == 200
    assert metric(second.client, "near_embedded_texts_total") == 1
    fixed = client.get(victim)
    assert fixed is not None and decode_blob(key, fixed, 64) is not None  # overwritten with a good one


def test_query_vectors_expire_pool_vectors_stay(
    inprocess: InProcessFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    svc = inprocess(redis_url=redis_server.url, cache_dir=tmp_path / "c", redis_query_ttl=3600)
    client = redis.Redis.from_url(redis_server.url)
    before = set(client.scan_iter("near:emb:*"))
    assert len(before) == UNIQUE and all(client.ttl(k) == -1 for k in before)
    assert svc.client.post("/select", json={"queries": ["a brand new query"], "max_k": 3}).status_code == 200
    emb = svc.client.post("/v1/embeddings", json={"input": ["a client text"], "model": "fake/hashing-bow"})
    assert emb.status_code == 200, emb.text
    new = set(client.scan_iter("near:emb:*")) - before
    assert len(new) == 2 and all(0 < client.ttl(k) <= 3600 for k in new)
    assert len(DiskCache(tmp_path / "c")) == UNIQUE  # client texts never reach the disk cache


def test_exclude_previous_with_missing_rounds_is_409(inprocess: InProcessFactory, redis_server: RedisServer) -> None:
    svc = inprocess(redis_url=redis_server.url)
    body = {"queries": ["apples", "trains"], "max_k": 10, "budget": 4, "exclude_previous": True}
    assert svc.client.post("/select", json={**body, "run_id": "gap", "round": 0}).status_code == 200
    r = svc.client.post("/select", json={**body, "run_id": "gap", "round": 2})  # round 1 never asked
    assert r.status_code == 409 and r.json()["error"]["code"] == "missing_rounds", r.text
    assert "round(s) 1 " in r.json()["error"]["message"]
    assert svc.client.post("/select", json={**body, "run_id": "gap", "round": 1}).status_code == 200
    redis.Redis.from_url(redis_server.url).flushall()  # Redis lost its data
    r = svc.client.post("/select", json={**body, "run_id": "gap", "round": 2})
    assert r.status_code == 409 and "0, 1" in r.json()["error"]["message"], r.text
    too_far = svc.client.post("/select", json={**body, "run_id": "gap", "round": 100_001})
    assert too_far.status_code == 422


def test_damaged_ledger_entry_is_409_not_500(inprocess: InProcessFactory, redis_server: RedisServer) -> None:
    svc = inprocess(redis_url=redis_server.url)
    body = {"queries": ["apples"], "max_k": 3, "run_id": "dmg", "round": 0}
    assert svc.client.post("/select", json=body).status_code == 200
    client = redis.Redis.from_url(redis_server.url)
    (meta_key,) = client.scan_iter("near:run:*:dmg:meta")
    client.hset(meta_key, "0", b"\xff not json")
    for r in (svc.client.post("/select", json=body), svc.client.get("/runs/dmg")):
        assert r.status_code == 409 and r.json()["error"]["code"] == "ledger_damaged", r.text
    assert (
        svc.client.post("/select", json={**body, "round": 1, "budget": 2, "exclude_previous": True}).status_code == 409
    )
    assert svc.client.post("/select", json={"queries": ["apples"], "max_k": 3}).status_code == 200


class _StoppingBackend(HashingBackend):
    """Small batches; asks its embedder to stop after ``after`` of them (as a SIGTERM would)."""

    max_batch_texts = 10

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after
        self.embedder: FakeEmbedder | None = None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if len(self.calls) + 1 == self.after and self.embedder is not None:
            self.embedder.stop()
        return super().encode(texts)


def test_stop_flushes_pending_vectors(tmp_path: Path) -> None:
    emb = FakeEmbedder()
    backend = _StoppingBackend(after=7)
    backend.embedder, emb.backend, emb._backend = emb, backend, backend
    disk = DiskCache(tmp_path)
    texts = [f"text number {i}" for i in range(500)]
    with pytest.raises(EmbeddingStopped):
        emb.embed(texts, "document", [disk])
    assert len(disk) == 70  # 7 batches of 10: every one stored, the last at the stop
    again = FakeEmbedder()
    again.embed(texts, "document", [disk])
    assert sum(again.backend.calls) == 430  # only the rest is embedded after the restart


def test_content_revision_sees_same_size_new_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * (3 * 1024 * 1024))
    small = tmp_path / "tokenizer.json"
    small.write_text('{"v": 1}')
    seen = {_content_revision(tmp_path)}
    small.write_text('{"v": 2}')  # same size, new content
    seen.add(_content_revision(tmp_path))
    weights.write_bytes(b"b" * (3 * 1024 * 1024))
    seen.add(_content_revision(tmp_path))
    assert len(seen) == 3
    assert _content_revision(tmp_path) in seen  # stable while nothing changes


def test_a_full_redis_fails_only_the_ledger_and_logs_printable_text(
    inprocess: InProcessFactory, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis at maxmemory (noeviction) refuses writes: vector blobs quoted in its error reached the log."""
    svc = inprocess(redis_url=redis_server.url)
    r = redis.Redis.from_url(redis_server.url)
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)
    try:
        with caplog.at_level("WARNING", logger="near_service.stores.breaker"):
            ok = svc.client.post("/select", json={"queries": ["apples when redis is full"], "max_k": 3})
            ledger = svc.client.post("/select", json={"queries": ["x"], "max_k": 2, "run_id": "full", "round": 0})
    finally:
        r.config_set("maxmemory", 0)
    assert ok.status_code == 200, ok.text
    assert ledger.status_code == 503 and "retry later" in ledger.json()["error"]["message"], ledger.text
    said = [rec.getMessage() for rec in caplog.records if "Redis unavailable" in rec.getMessage()]
    assert said and all(m.isprintable() for m in said), said
