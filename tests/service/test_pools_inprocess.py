"""Pools registered at run time (``PUT/GET/DELETE /pools``), in-process: every bad input and fault
of issue 17 is one test, each error is the one body ``{"error": {"code", "message"}}`` with a code
listed in ``near_schema.ERROR_CODES``, and the service still answers after it.

The model is :class:`tests.fakes.FakeEmbedder`; a disk that is full is :class:`FullDiskSave` or
:class:`tests.fakes.FakeFullDisk` (fakes, named as such). Real uvicorn processes (a client hanging
up mid-upload, kill -9 during registration, the packaged model) are in test_pools_e2e.py.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from near_client.errors import ERROR_CLASSES
from near_schema import ERROR_CODES, fingerprint
from near_service.core import errors as core_errors
from near_service.core.settings import load_settings
from near_service.engine import registry as registry_module
from near_service.server.app import create_app
from near_service.stores.vectors import PoolVectorStore
from tests.conftest import InProcessFactory, InProcessService, RedisServer
from tests.fakes import FakeEmbedder, FakeFullDisk

pytestmark = pytest.mark.inprocess

NDJSON = {"Content-Type": "application/x-ndjson"}
QUERIES = ["How many apples after buying more?", "A train travels between two cities."]


def pool_texts(n: int, tag: str = "p") -> list[str]:
    topics = ["apples", "trains", "clocks", "bicycles", "recipes", "marbles"]
    return [f"{tag} row {i}: a question about {topics[i % len(topics)]} number {i * 7 % 31}" for i in range(n)]


def assert_error(r: Any, status: int, code: str, client: TestClient | None = None) -> str:
    """The one error body with ``code`` (listed in the schema); the service still answers after it."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert code in ERROR_CODES
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if client is not None:
        assert_serving(client)
    message: str = body["error"]["message"]
    return message


def assert_serving(client: TestClient, headers: dict[str, str] | None = None) -> None:
    assert client.get("/health").status_code == 200
    r = client.post("/select", json={"queries": QUERIES, "max_k": 3}, headers=headers or {})
    assert r.status_code == 200, r.text


def wait_state(
    client: TestClient, name: str, states: tuple[str, ...] = ("ready",), headers: dict[str, str] | None = None
) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        r = client.get(f"/pools/{name}", headers=headers or {})
        assert r.status_code == 200, r.text
        status: dict[str, Any] = r.json()
        if status["state"] in states:
            return status
        assert status["state"] != "failed", status
        assert time.monotonic() < deadline, status
        time.sleep(0.01)


def register(client: TestClient, name: str, texts: list[str], **body: Any) -> dict[str, Any]:
    r = client.put(f"/pools/{name}", json={"texts": texts, **body})
    assert r.status_code == 202, r.text
    return wait_state(client, name)


def document_embedded(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('near_embedded_texts_total{kind="document"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def selected(client: TestClient, pool: str | None, strategy: str = "round_robin") -> dict[str, Any]:
    body: dict[str, Any] = {"queries": QUERIES, "max_k": 3, "budget": 4, "strategy": strategy}
    if pool is not None:
        body["pool"] = pool
    r = client.post("/select", json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


@pytest.fixture
def svc(inprocess: InProcessFactory) -> InProcessService:
    return inprocess()


# --- the happy path -------------------------------------------------------------------------------


def test_put_then_select_searches_that_pool(svc: InProcessService) -> None:
    texts = pool_texts(30)
    r = svc.client.put("/pools/x", json={"texts": texts})
    assert r.status_code == 202, r.text
    assert r.json()["name"] == "x" and r.json()["rows"] == 30 and r.json()["source"] == "texts"
    status = wait_state(svc.client, "x")
    assert status["fingerprint"] == fingerprint(texts) and status["progress"]["done"] == 30
    out = selected(svc.client, "x")
    assert out["pool"]["name"] == "x" and out["pool"]["size"] == 30
    assert out["pool"]["fingerprint"] == fingerprint(texts)
    assert all(0 <= i < 30 for i in out["selected"])
    listing = svc.client.get("/pools").json()
    assert {p["name"] for p in listing["pools"]} == {"default", "x"} and listing["default"] == "default"
    assert selected(svc.client, None)["pool"]["name"] == "default"  # absent: the default pool


# --- bad bodies -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ('{"texts": []}', "texts"),
        ('{"texts": [1, "a"]}', "texts.0"),
        ('{"texts": ["a", null]}', "texts.1"),
        ('{"texts": [""]}', "empty"),
        ('{"texts": ["ok", "   "]}', "texts[1] is empty"),
        ('{"texts": "one string"}', "texts"),
        ("{}", "exactly one of texts or files"),
        ('{"texts": ["a"], "files": ["b.jsonl"]}', "exactly one of texts or files"),
        ('{"texts": ["a"], "extra": 1}', "extra"),
        ('{"texts": ["a"], "density_stats": "sometimes"}', "density_stats"),
        ('{"texts": ["ok", "\\ud800 lone"]}', "surrogate"),
        ('{"texts": ["ok", "\\udfff"]}', "surrogate"),
        ("not json", "not JSON"),
        ("[1, 2]", "invalid request"),
        ("", "not JSON"),
    ],
    ids=lambda v: v[:24] if isinstance(v, str) else v,
)
def test_bad_json_body_is_422(svc: InProcessService, raw: str, needle: str) -> None:
    r = svc.client.put("/pools/bad", content=raw.encode(), headers={"Content-Type": "application/json"})
    message = assert_error(r, 422, "invalid_input", svc.client)
    assert needle in message, message
    assert svc.client.get("/pools/bad").status_code == 404  # nothing registered


def test_invalid_utf8_body_is_422(svc: InProcessService) -> None:
    r = svc.client.put("/pools/bad", content=b'{"texts": ["\xff\xfe"]}', headers={"Content-Type": "application/json"})
    assert_error(r, 422, "invalid_input", svc.client)


def test_a_10_mb_single_text_is_refused_clearly(svc: InProcessService) -> None:
    """The model reads only its first max_length tokens, but the tokenizer would tokenize all 10 MB
    first, for minutes, on the model thread that queries wait for: such a text is refused (413)."""
    from near_service.engine.engine import MAX_TEXT_CHARS

    big = "apples and trains " + "x" * (10 * 2**20)
    r = svc.client.put("/pools/big", json={"texts": [*pool_texts(4, "short"), big]})
    message = assert_error(r, 413, "too_large", svc.client)
    assert "text 4" in message and f"{MAX_TEXT_CHARS:,}" in message, message
    assert svc.client.get("/pools/big").status_code == 404
    r = svc.client.put("/pools/big", content=(json.dumps(big) + "\n").encode(), headers=NDJSON)
    assert_error(r, 413, "too_large", svc.client)
    edge = "apples " * (MAX_TEXT_CHARS // 7)  # at the limit: accepted
    r = svc.client.put("/pools/edge", json={"texts": [edge, *pool_texts(4, "short")]})
    assert r.status_code == 202, r.text
    assert wait_state(svc.client, "edge")["rows"] == 5
    assert_serving(svc.client)


def test_body_over_the_pool_limit_is_413(inprocess: InProcessFactory) -> None:
    svc = inprocess(max_pool_body_bytes=4096)
    texts = pool_texts(200)
    r = svc.client.put("/pools/big", json={"texts": texts})  # Content-Length over the limit
    assert "NEAR_MAX_POOL_BODY_BYTES" in assert_error(r, 413, "too_large", svc.client)

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while it streams in
        for t in texts:
            yield (json.dumps(t) + "\n").encode()

    r = svc.client.put("/pools/big", content=chunks(), headers=NDJSON)
    assert_error(r, 413, "too_large", svc.client)
    assert svc.client.get("/pools/big").status_code == 404
    small = svc.client.put("/pools/small", json={"texts": pool_texts(3)})  # under it: fine
    assert small.status_code == 202, small.text


# --- NDJSON ---------------------------------------------------------------------------------------


def test_ndjson_stream_registers_the_same_pool_as_json(svc: InProcessService) -> None:
    texts = pool_texts(50)
    body = "".join(json.dumps(t) + "\n" for t in texts)

    def chunks(size: int = 37) -> Iterator[bytes]:  # chunk edges fall inside lines
        raw = body.encode()
        for i in range(0, len(raw), size):
            yield raw[i : i + size]

    r = svc.client.put("/pools/nd", content=chunks(), headers=NDJSON)
    assert r.status_code == 202, r.text
    status = wait_state(svc.client, "nd")
    assert status["rows"] == 50 and status["fingerprint"] == fingerprint(texts)
    # the same texts as JSON under that name: the same content, nothing to do
    again = svc.client.put("/pools/nd", json={"texts": texts})
    assert again.status_code == 200 and again.json()["fingerprint"] == fingerprint(texts)
    # a last line without its newline is a line; blank lines are skipped
    r = svc.client.put("/pools/nd2", content=b'"a"\n\n"b"', headers=NDJSON)
    assert r.status_code == 202 and r.json()["rows"] == 2
    # the density option of an NDJSON body is a query parameter
    r = svc.client.put("/pools/nd3?density_stats=off", content=b'"a"\n"b"\n', headers=NDJSON)
    assert r.status_code == 202, r.text
    assert wait_state(svc.client, "nd3")["stats"]["state"] == "off"


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b'"one"\n"two"\n"thr', "line 3 is not JSON"),  # truncated: a partial last line
        (b'"one"\n7\n', "line 2 is int"),
        (b'"one"\n{"text": "x"}\n', "line 2 is dict"),
        (b'"one"\n["x"]\n', "line 2 is list"),
        (b'"one"\nnull\n', "line 2 is NoneType"),
        (b'"one"\n""\n', "line 2 is an empty text"),
        (b'"one"\n"\\ud800"\n', "line 2"),
        (b"\n\n", "no texts"),
        (b"", "no texts"),
        (b'"one"\n\xff\n', "line 2"),
    ],
)
def test_bad_ndjson_is_422_and_registers_nothing(svc: InProcessService, raw: bytes, needle: str) -> None:
    r = svc.client.put("/pools/nd", content=raw, headers=NDJSON)
    message = assert_error(r, 422, "invalid_input", svc.client)
    assert needle in message, message
    assert svc.client.get("/pools/nd").status_code == 404


# --- files under NEAR_POOL_DIR --------------------------------------------------------------------


def _pool_dir(tmp_path: Path) -> Path:
    root = tmp_path / "pools"
    (root / "sub").mkdir(parents=True)
    rows = [{"question": f"How many clocks in room {i}?", "answer": f"{i} clocks."} for i in range(12)]
    (root / "sub" / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    outside = tmp_path / "secret.jsonl"
    outside.write_text(json.dumps({"text": "not yours"}) + "\n", encoding="utf-8")
    (root / "link.jsonl").symlink_to(outside)
    (root / "linkdir").symlink_to(tmp_path)
    return root


def test_files_under_pool_dir(inprocess: InProcessFactory, tmp_path: Path) -> None:
    from near_schema.templates import render_records

    root = _pool_dir(tmp_path)
    svc = inprocess(pool_dir=str(root))
    r = svc.client.put("/pools/f", json={"files": ["sub/pool.jsonl"], "template": "default"})
    assert r.status_code == 202, r.text
    status = wait_state(svc.client, "f")
    rows = [json.loads(line) for line in (root / "sub" / "pool.jsonl").read_text().splitlines()]
    assert status["rows"] == 12 and status["source"] == "files"
    assert status["fingerprint"] == fingerprint(render_records(rows, "default"))
    assert selected(svc.client, "f")["pool"]["size"] == 12


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "../secret.jsonl", "sub/../../secret.jsonl", "link.jsonl", "linkdir/secret.jsonl", "~/x.jsonl"],
)
def test_pool_paths_out_of_pool_dir_are_422(inprocess: InProcessFactory, tmp_path: Path, path: str) -> None:
    svc = inprocess(pool_dir=str(_pool_dir(tmp_path)))
    r = svc.client.put("/pools/f", json={"files": [path]})
    assert "NEAR_POOL_DIR" in assert_error(r, 422, "invalid_pool_path", svc.client)
    assert svc.client.get("/pools/f").status_code == 404


def test_missing_pool_file_and_bad_records_are_422(inprocess: InProcessFactory, tmp_path: Path) -> None:
    root = _pool_dir(tmp_path)
    (root / "bad.jsonl").write_text('{"question": "q"\n', encoding="utf-8")
    svc = inprocess(pool_dir=str(root))
    assert_error(svc.client.put("/pools/f", json={"files": ["nope.jsonl"]}), 422, "invalid_pool_path", svc.client)
    r = svc.client.put("/pools/f", json={"files": ["bad.jsonl"]})
    assert r.status_code == 422 and r.json()["error"]["code"] in ("invalid_record", "invalid_input"), r.text
    assert_serving(svc.client)


def test_files_without_pool_dir_are_422(svc: InProcessService) -> None:
    r = svc.client.put("/pools/f", json={"files": ["sub/pool.jsonl"]})
    assert "NEAR_POOL_DIR" in assert_error(r, 422, "invalid_pool_path", svc.client)


# --- faults ---------------------------------------------------------------------------------------


class FullDiskSave:
    """A fake full disk: ``PoolVectorStore.save`` raises ENOSPC (for every pool but the allowed ones)."""

    def __init__(self, real: Any) -> None:
        self.real, self.refused = real, 0

    def __call__(self, store: PoolVectorStore, namespace: str, fp: str, *args: Any, **kwargs: Any) -> Any:
        self.refused += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_writing_a_vector_file(
    inprocess: InProcessFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = inprocess(cache_dir=str(tmp_path / "cache"))
    register(svc.client, "good", pool_texts(20, "good"))
    before = selected(svc.client, "good")
    full = FullDiskSave(PoolVectorStore.save)
    monkeypatch.setattr(PoolVectorStore, "save", full)
    r = svc.client.put("/pools/full", json={"texts": pool_texts(20, "full")})
    assert r.status_code == 202, r.text
    status = wait_state(svc.client, "full", ("failed",))
    assert full.refused == 1
    assert "No space left on device" in status["message"] and "vector file" in status["message"], status
    r = svc.client.post("/select", json={"queries": QUERIES, "max_k": 3, "pool": "full"})
    assert "failed" in assert_error(r, 503, "unavailable", svc.client)
    assert selected(svc.client, "good") == before  # others unaffected
    assert svc.client.get("/pools/good").json()["state"] == "ready"
    monkeypatch.undo()  # the disk has room again: the same PUT registers it
    r = svc.client.put("/pools/full", json={"texts": pool_texts(20, "full")})
    assert r.status_code == 202, r.text
    wait_state(svc.client, "full")


def test_concurrent_puts_of_one_name(svc: InProcessService) -> None:
    same, other = pool_texts(40, "same"), pool_texts(40, "other")
    for second, expected in ((same, {200, 202}), (other, {202, 409})):
        name = "c" + str(len(expected) + len(second[0]))
        results: list[Any] = []
        barrier = threading.Barrier(2)

        def put(
            texts: list[str], name: str = name, barrier: threading.Barrier = barrier, results: list[Any] = results
        ) -> None:
            barrier.wait()
            results.append(svc.client.put(f"/pools/{name}", json={"texts": texts}))

        threads = [threading.Thread(target=put, args=(t,)) for t in (same, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        codes = sorted(r.status_code for r in results)
        assert set(codes) == expected and len(codes) == 2, [r.text for r in results]
        for r in results:
            if r.status_code == 409:
                assert_error(r, 409, "pool_conflict")
        winner = next(r for r in results if r.status_code == 202).json()["fingerprint"]
        assert wait_state(svc.client, name)["fingerprint"] == winner
    assert_serving(svc.client)


def test_delete_while_select_in_flight(svc: InProcessService) -> None:
    register(svc.client, "d", pool_texts(30, "d"))
    svc.embedder.backend.delay = 0.3  # the select's query embedding: the DELETE lands meanwhile
    results: list[Any] = []
    started = threading.Event()

    def select(i: int) -> None:
        started.set()
        body = {"queries": [f"fresh query {i} about clocks"], "max_k": 3, "budget": 2, "pool": "d"}
        results.append(svc.client.post("/select", json=body))

    threads = [threading.Thread(target=select, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    started.wait(5)
    time.sleep(0.05)
    assert svc.client.delete("/pools/d").status_code == 200
    for t in threads:
        t.join(30)
    svc.embedder.backend.delay = 0.0
    assert len(results) == 4
    for r in results:
        assert r.status_code in (200, 404), r.text
        if r.status_code == 404:
            assert_error(r, 404, "pool_not_found")
        else:
            assert r.json()["pool"]["name"] == "d"
    after = svc.client.post("/select", json={"queries": QUERIES, "max_k": 3, "pool": "d"})
    assert_error(after, 404, "pool_not_found", svc.client)


def test_hundred_pools(inprocess: InProcessFactory, tmp_path: Path) -> None:
    svc = inprocess(cache_dir=str(tmp_path / "cache"))
    for i in range(100):
        r = svc.client.put(f"/pools/p{i:03d}", json={"texts": pool_texts(5, f"pool{i}")})
        assert r.status_code == 202, r.text
    for i in range(100):
        wait_state(svc.client, f"p{i:03d}")
    calls = len(svc.embedder.backend.calls)
    listing = svc.client.get("/pools").json()
    assert len(svc.embedder.backend.calls) == calls  # listing runs no model
    assert len(listing["pools"]) == 101
    held = sum(p["memory_bytes"] for p in listing["pools"])
    assert listing["memory_bytes"] == held <= listing["max_memory_bytes"]
    assert all(0 < p["memory_bytes"] < 64 * 1024 for p in listing["pools"])  # a few rows: a few KiB each
    assert selected(svc.client, "p057")["pool"]["size"] == 5
    for i in range(0, 100, 2):
        assert svc.client.delete(f"/pools/p{i:03d}").status_code == 200
    listing = svc.client.get("/pools").json()
    assert len(listing["pools"]) == 51 and listing["memory_bytes"] == sum(p["memory_bytes"] for p in listing["pools"])


def test_pool_limit_is_413(inprocess: InProcessFactory) -> None:
    svc = inprocess(max_pools=2)
    assert svc.client.put("/pools/a", json={"texts": ["a row"]}).status_code == 202
    r = svc.client.put("/pools/b", json={"texts": ["b row"]})
    assert "NEAR_MAX_POOLS" in assert_error(r, 413, "too_large", svc.client)


# --- same content, delete, restart ----------------------------------------------------------------


def test_reregistering_the_same_texts_embeds_nothing(inprocess: InProcessFactory, tmp_path: Path) -> None:
    svc = inprocess(cache_dir=str(tmp_path / "cache"))
    texts = pool_texts(25, "same")
    before = document_embedded(svc.client)
    register(svc.client, "s", texts)
    assert document_embedded(svc.client) == before + 25
    again = svc.client.put("/pools/s", json={"texts": texts})
    assert again.status_code == 200 and again.json()["state"] == "ready"
    assert document_embedded(svc.client) == before + 25
    register(svc.client, "s2", texts)  # another name, the same content: from the pool store
    assert document_embedded(svc.client) == before + 25
    r = svc.client.put("/pools/s", json={"texts": pool_texts(25, "other")})
    assert "replace=true" in assert_error(r, 409, "pool_conflict", svc.client)
    r = svc.client.put("/pools/s?replace=true", json={"texts": pool_texts(25, "other")})
    assert r.status_code == 202, r.text
    assert wait_state(svc.client, "s")["fingerprint"] == fingerprint(pool_texts(25, "other"))
    assert selected(svc.client, "s2")["pool"]["fingerprint"] == fingerprint(texts)  # the copy still serves


def test_startup_pool_cannot_be_replaced(svc: InProcessService) -> None:
    r = svc.client.put("/pools/default?replace=true", json={"texts": ["x"]})
    assert "startup pool" in assert_error(r, 409, "pool_conflict", svc.client)


def test_delete_then_select_is_404(svc: InProcessService) -> None:
    register(svc.client, "x", pool_texts(10))
    r = svc.client.delete("/pools/x")
    assert r.status_code == 200 and r.json()["name"] == "x"
    r = svc.client.post("/select", json={"queries": QUERIES, "max_k": 3, "pool": "x"})
    assert "PUT /pools/x" in assert_error(r, 404, "pool_not_found", svc.client)
    assert_error(svc.client.get("/pools/x"), 404, "pool_not_found")
    assert_error(svc.client.delete("/pools/x"), 404, "pool_not_found")
    register(svc.client, "x", pool_texts(10))  # the name is free again


def test_restart_keeps_registered_pools_without_reembedding(tmp_path: Path) -> None:
    from tests.service.api_data import qa_records, write_jsonl

    pool = write_jsonl(tmp_path / "pool.jsonl", qa_records(20))
    settings = load_settings(candidates=[pool], cache_dir=str(tmp_path / "cache"))
    texts = pool_texts(30, "kept")
    with TestClient(create_app(settings, embedder=FakeEmbedder())) as client:
        wait_state(client, "default")
        register(client, "kept", texts)
        before = selected(client, "kept", "density")
        assert client.delete("/pools/kept").status_code == 200
        register(client, "kept", texts)  # deleted and registered again: the file is written again
    embedder = FakeEmbedder()
    with TestClient(create_app(settings, embedder=embedder)) as client:
        status = wait_state(client, "kept")
        assert status["fingerprint"] == fingerprint(texts) and status["source"] == "texts"
        assert document_embedded(client) == 0
        assert selected(client, "kept", "density") == before
        assert client.delete("/pools/kept").status_code == 200
    with TestClient(create_app(settings, embedder=FakeEmbedder())) as client:  # deleted stays deleted
        wait_state(client, "default")
        assert client.get("/pools/kept").status_code == 404


# --- memory ---------------------------------------------------------------------------------------


def test_pool_over_the_memory_budget_is_507(inprocess: InProcessFactory, tmp_path: Path) -> None:
    svc = inprocess(cache_dir=str(tmp_path / "cache"), max_pool_memory=1 << 20)
    register(svc.client, "small", pool_texts(200, "small"))
    before = (selected(svc.client, "small"), selected(svc.client, None))
    calls = len(svc.embedder.backend.calls)
    r = svc.client.put("/pools/huge", json={"texts": pool_texts(5000, "huge")})
    message = assert_error(r, 507, "insufficient_memory", svc.client)
    assert "needs" in message and "free" in message and "NEAR_MAX_POOL_MEMORY" in message, message
    assert svc.client.get("/pools/huge").status_code == 404
    assert len(svc.embedder.backend.calls) == calls + 1  # nothing embedded for it (+ the check's query)
    assert (selected(svc.client, "small"), selected(svc.client, None)) == before
    assert svc.client.get("/pools/small").json()["state"] == "ready"


def test_idle_pool_is_evicted_and_reloads_on_select(inprocess: InProcessFactory, tmp_path: Path) -> None:
    svc = inprocess(cache_dir=str(tmp_path / "cache"), max_pool_memory=1 << 20)
    a, b = pool_texts(1500, "a"), pool_texts(1500, "b")  # ~0.6 MiB each: one fits beside the default
    register(svc.client, "a", a)
    first = {s: selected(svc.client, "a", s) for s in ("density", "round_robin", "max_score", "importance")}
    register(svc.client, "b", b)  # a and b do not both fit: a (the least recently used) goes to disk
    listing = {p["name"]: p for p in svc.client.get("/pools").json()["pools"]}
    assert listing["a"]["state"] == "evicted" and listing["a"]["memory_bytes"] == 0, listing["a"]
    assert listing["b"]["state"] == "ready"
    calls, embedded = len(svc.embedder.backend.calls), document_embedded(svc.client)
    again = {s: selected(svc.client, "a", s) for s in first}
    assert again == first
    assert svc.client.get("/pools/a").json()["state"] == "ready"
    assert svc.client.get("/pools/b").json()["state"] == "evicted"
    assert document_embedded(svc.client) == embedded  # the reload embeds nothing
    assert len(svc.embedder.backend.calls) - calls <= len(first)  # the queries only (cached after the first)


# --- keys and names -------------------------------------------------------------------------------


def test_admin_key_guards_put_and_delete(inprocess: InProcessFactory) -> None:
    svc = inprocess(api_key="api-key", admin_key="admin-key")
    api, admin = {"Authorization": "Bearer api-key"}, {"Authorization": "Bearer admin-key"}
    body = {"texts": pool_texts(5)}
    for headers in ({}, api, {"Authorization": "Bearer wrong"}, {"Authorization": "admin-key"}):
        assert "admin key" in assert_error(svc.client.put("/pools/x", json=body, headers=headers), 401, "unauthorized")
    assert svc.client.put("/pools/x", json=body, headers=admin).status_code == 202
    wait_state(svc.client, "x", headers=api)
    assert_error(svc.client.delete("/pools/x", headers=api), 401, "unauthorized")
    assert svc.client.get("/pools", headers=api).status_code == 200
    r = svc.client.post("/select", json={"queries": QUERIES, "max_k": 2, "pool": "x"}, headers=api)
    assert r.status_code == 200, r.text
    r = svc.client.post("/select", json={"queries": QUERIES, "max_k": 2, "pool": "x"}, headers=admin)
    assert "API key" in assert_error(r, 401, "unauthorized")  # the admin key is not the API key
    assert svc.client.delete("/pools/x", headers=admin).status_code == 200
    assert_serving(svc.client, api)


def test_without_admin_key_the_api_key_allows_registration(inprocess: InProcessFactory) -> None:
    svc = inprocess(api_key="api-key")
    api = {"Authorization": "Bearer api-key"}
    assert_error(svc.client.put("/pools/x", json={"texts": ["a"]}), 401, "unauthorized")
    assert svc.client.put("/pools/x", json={"texts": ["a"]}, headers=api).status_code == 202
    wait_state(svc.client, "x", headers=api)
    assert svc.client.delete("/pools/x", headers=api).status_code == 200


@pytest.mark.parametrize("name", ["x" * 65, "a b", "a$b", "caf\u00e9", "a:b", "*"])
def test_bad_pool_names_are_422(svc: InProcessService, name: str) -> None:
    r = svc.client.put(f"/pools/{name}", json={"texts": ["a"]})
    assert_error(r, 422, "invalid_input", svc.client)
    assert_error(svc.client.get(f"/pools/{name}"), 422, "invalid_input")
    r = svc.client.post("/select", json={"queries": QUERIES, "max_k": 2, "pool": name})
    assert_error(r, 422, "invalid_input", svc.client)


@pytest.mark.parametrize("name", ["x" * 64, "a", "A.b_c-9", "..", "-"])
def test_good_pool_names(svc: InProcessService, name: str) -> None:
    r = svc.client.put(f"/pools/{name}", json={"texts": ["a row about apples"]})
    if name == "..":  # the HTTP client normalises /pools/.. to / before it is sent
        assert r.status_code in (202, 404, 405), r.text
        return
    assert r.status_code == 202, r.text
    assert wait_state(svc.client, name)["name"] == name


def test_run_id_on_another_pool_is_409(inprocess: InProcessFactory, redis_server: RedisServer) -> None:
    svc = inprocess(redis_url=redis_server.url)
    a, b = register(svc.client, "a", pool_texts(20, "a")), register(svc.client, "b", pool_texts(20, "b"))
    body = {"queries": QUERIES, "max_k": 3, "budget": 4, "strategy": "round_robin", "run_id": "run-1"}
    r = svc.client.post("/select", json={**body, "round": 0, "pool": "a"})
    assert r.status_code == 200, r.text
    r = svc.client.post("/select", json={**body, "round": 1, "pool": "b"})
    message = assert_error(r, 409, "run_pool_mismatch", svc.client)
    assert a["fingerprint"] in message and b["fingerprint"] in message, message
    r = svc.client.post("/select", json={**body, "round": 1, "pool": "a"})
    assert r.status_code == 200, r.text
    run = svc.client.get("/runs/run-1").json()
    assert run["pool"]["name"] == "a" and run["pool"]["fingerprint"] == a["fingerprint"]


def test_ready_without_any_pool_then_put_works(tmp_path: Path) -> None:
    settings = load_settings(candidates=[], cache_dir="")
    with TestClient(create_app(settings, embedder=FakeEmbedder()), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 30
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/ready").text
            time.sleep(0.01)
        listing = client.get("/pools").json()
        assert listing["pools"] == [] and listing["default"] is None
        r = client.post("/select", json={"queries": QUERIES, "max_k": 2})
        assert_error(r, 404, "pool_not_found")
        register(client, "x", pool_texts(10))
        assert selected(client, "x")["pool"]["name"] == "x"
        assert client.get("/ready").status_code == 200
        info = client.get("/info").json()
        assert "x" in json.dumps(info)


def test_select_on_a_pool_still_embedding_is_503_with_progress(svc: InProcessService) -> None:
    svc.embedder.backend.delay = 0.2
    r = svc.client.put("/pools/slow", json={"texts": pool_texts(600, "slow")})
    assert r.status_code == 202
    r = svc.client.post("/select", json={"queries": QUERIES, "max_k": 2, "pool": "slow"})
    svc.embedder.backend.delay = 0.0
    message = assert_error(r, 503, "pool_not_ready")
    assert "rows" in message and int(r.headers["Retry-After"]) >= 1
    wait_state(svc.client, "slow")
    assert_serving(svc.client)


# --- every code is mapped -------------------------------------------------------------------------


def test_every_error_code_is_mapped_by_the_client() -> None:
    from near_service.server.api import errors as api_errors

    classes = [
        c
        for _, c in inspect.getmembers(core_errors, inspect.isclass)
        if issubclass(c, core_errors.NearError) and c.__module__ == core_errors.__name__
    ]
    sent = {c.code for c in classes} | set(api_errors._HTTP_CODES.values()) | {"invalid_input", "internal"}
    assert sent <= set(ERROR_CODES), sent - set(ERROR_CODES)
    assert set(ERROR_CLASSES) == set(ERROR_CODES), set(ERROR_CODES) ^ set(ERROR_CLASSES)
    for code in ("request_timeout", "too_large", "insufficient_memory", "pool_not_found", "run_pool_mismatch"):
        assert ERROR_CLASSES[code].__name__ != "APIError", code
    # and no other code is written anywhere in the service
    import re

    root = Path(core_errors.__file__).parents[1]
    literal = re.compile(r"""(?:error_body|code\s*[:=])\s*\(?\s*["']([a-z_]+)["']""")
    found = {m for p in root.rglob("*.py") for m in literal.findall(p.read_text(encoding="utf-8"))}
    assert found <= set(ERROR_CODES), found - set(ERROR_CODES)


# --- faults the audit of issue 17 added ------------------------------------------------------------


def registry_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("room", [0, 6000], ids=["full-at-once", "full-part-way"])
def test_disk_full_while_registering_a_pools_texts_is_507(
    inprocess: InProcessFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, room: int
) -> None:
    svc = inprocess(cache_dir=str(tmp_path / "cache"))
    good = pool_texts(20, "good")
    register(svc.client, "good", good)
    before, embedded = selected(svc.client, "good"), document_embedded(svc.client)
    on_disk = registry_files(tmp_path / "cache" / "registry")
    disk = FakeFullDisk(room=room)  # the registry's writes run out of disk after `room` bytes
    monkeypatch.setattr(registry_module, "open", disk, raising=False)
    r = svc.client.put("/pools/full", json={"texts": pool_texts(400, "full")})
    message = assert_error(r, 507, "insufficient_storage", svc.client)
    assert "No space left on device" in message and "'full'" in message and "NEAR_CACHE_DIR" in message, message
    r = svc.client.put("/pools/good?replace=true", json={"texts": pool_texts(400, "other")})
    assert_error(r, 507, "insufficient_storage", svc.client)  # a replacement too: the old pool stays
    assert disk.refused == 2
    # nothing half-registered: not listed, no file, nothing embedded; the other pools serve as before
    assert_error(svc.client.get("/pools/full"), 404, "pool_not_found")
    assert {p["name"] for p in svc.client.get("/pools").json()["pools"]} == {"default", "good"}
    assert registry_files(tmp_path / "cache" / "registry") == on_disk
    assert document_embedded(svc.client) == embedded
    assert svc.client.get("/pools/good").json()["fingerprint"] == fingerprint(good)
    assert selected(svc.client, "good") == before
    monkeypatch.undo()  # room on the disk again: the same PUT registers it
    r = svc.client.put("/pools/full", json={"texts": pool_texts(400, "full")})
    assert r.status_code == 202, r.text
    wait_state(svc.client, "full")


@pytest.mark.parametrize("window", ["after-the-lookup", "inside-the-lookup"])
def test_delete_landing_between_lookup_and_search_is_404(
    svc: InProcessService, monkeypatch: pytest.MonkeyPatch, window: str
) -> None:
    """The DELETE of test_delete_while_select_in_flight, forced into the one window where the request
    has looked the pool up but holds no reference to its search structure yet."""
    register(svc.client, "d", pool_texts(30, "d"))
    engine = svc.state.engine
    real_searchable, real_get = engine.searchable, engine.get
    landed: list[str] = []

    def delete_once() -> None:
        if not landed:
            landed.append(window)
            engine.delete_pool("d")  # what DELETE /pools/d runs, on another thread, right now

    def searchable_then_deleted(*args: Any) -> Any:
        entry = real_searchable(*args)
        delete_once()
        return entry

    def get_then_deleted(name: str) -> Any:
        entry = real_get(name)
        if name == "d":
            delete_once()
        return entry

    if window == "after-the-lookup":
        monkeypatch.setattr(engine, "searchable", searchable_then_deleted)
    else:
        monkeypatch.setattr(engine, "get", get_then_deleted)
    r = svc.client.post("/select", json={"queries": QUERIES, "max_k": 3, "budget": 2, "pool": "d"})
    assert landed == [window]
    assert "PUT /pools/d" in assert_error(r, 404, "pool_not_found", svc.client)


def test_replace_landing_between_lookup_and_search_is_503_retry(
    svc: InProcessService, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(svc.client, "r", pool_texts(30, "r"))
    engine = svc.state.engine
    real = engine.searchable

    def searchable_then_replaced(*args: Any) -> Any:
        entry = real(*args)
        engine.put_pool("r", pool_texts(30, "r2"), replace=True)
        return entry

    monkeypatch.setattr(engine, "searchable", searchable_then_replaced)
    r = svc.client.post("/select", json={"queries": QUERIES, "max_k": 3, "pool": "r"})
    assert "replaced" in assert_error(r, 503, "unavailable") and r.headers["Retry-After"] == "1"
    monkeypatch.undo()
    wait_state(svc.client, "r")
    assert selected(svc.client, "r")["pool"]["fingerprint"] == fingerprint(pool_texts(30, "r2"))
