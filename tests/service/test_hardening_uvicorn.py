"""Issue 9 (part A) faults that need real sockets: a real uvicorn (in a thread, with the fake model).

Before: an unauthenticated 300 MiB body was read in full before its 401; a client trickling a body
held its request open forever; a client that hung up still had all its queries embedded.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from near_service.core.settings import load_settings
from near_service.server.app import create_app
from near_service.server.http import uvicorn_config
from tests.conftest import free_port
from tests.fakes import FakeEmbedder
from tests.service.api_data import qa_records, write_jsonl


@dataclass
class Served:
    url: str
    port: int
    app: Any
    embedder: FakeEmbedder


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(**settings: object) -> Served:
        pool = write_jsonl(tmp_path / f"pool{len(servers)}.jsonl", qa_records(40))
        settings.setdefault("cache_dir", "")
        port = free_port()
        config = load_settings(candidates=[pool], host="127.0.0.1", port=port, log_level="warning", **settings)
        app = create_app(config, embedder=FakeEmbedder())
        server = uvicorn.Server(uvicorn_config(app, config))  # what `near-select serve` runs
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {settings['api_key']}"} if "api_key" in settings else {}
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/ready", headers=headers, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "in-thread uvicorn did not get ready"
            time.sleep(0.05)
        return Served(url, port, app, app.state.embedder)

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=15)


def _slow_down(svc: Served, seconds: float) -> Any:
    """Make each of the fake model's embedding calls take ``seconds`` longer; its backend."""
    backend = svc.embedder.backend
    encode = backend.encode

    def slow(texts: Any) -> Any:
        time.sleep(seconds)
        return encode(texts)

    backend.encode = slow
    return backend


def _raw(port: int, head: bytes, body: bytes = b"", read_timeout: float = 10.0) -> tuple[bytes, float]:
    """Send ``head`` (and ``body``) on a raw socket; the status line and how long it took to come."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(head + body)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0], time.monotonic() - t0


def test_auth_refuses_a_huge_body_without_reading_it(serve: Any) -> None:
    svc = serve(api_key="k3y")
    head = (
        b"POST /select HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 314572800\r\n\r\n"  # 300 MiB announced, 2 bytes sent
    )
    status, took = _raw(svc.port, head, b'{"', read_timeout=5)
    assert status.startswith(b"HTTP/1.1 401"), status
    assert took < 2.0


def test_a_body_that_trickles_in_gets_408(serve: Any) -> None:
    svc = serve(body_timeout=1.0)
    head = b"POST /select HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    status, took = _raw(svc.port, head, b'{"queries":', read_timeout=10)
    assert status.startswith(b"HTTP/1.1 408"), status
    assert 0.9 < took < 5.0
    assert httpx.post(f"{svc.url}/select", json={"queries": ["apples"], "max_k": 1}).status_code == 200


def test_a_body_over_the_limit_is_refused_before_parsing(serve: Any) -> None:
    svc = serve(max_queries=8, max_query_chars=100)  # body limit 8 x 4 KiB + 600
    r = httpx.post(f"{svc.url}/select", content=b"[" + b'"a",' * 20000 + b'"a"]')
    assert r.status_code == 413 and "NEAR_MAX_BODY_BYTES" in r.json()["error"]["message"]


def test_a_client_that_hangs_up_stops_its_embedding(serve: Any) -> None:
    svc = serve(embed_chunk_texts=64)
    backend = _slow_down(svc, 0.05)
    queries = [f"question number {i} about apples" for i in range(4096)]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{svc.url}/select", json={"queries": queries, "max_k": 1}, timeout=httpx.Timeout(0.5, connect=5))
    time.sleep(1.0)
    embedded_then = sum(backend.calls)
    time.sleep(0.5)
    assert sum(backend.calls) == embedded_then  # nothing more after the hang-up
    assert embedded_then < 4096 / 2, embedded_then  # 64 texts per 50 ms call: about 1,000 at most
    assert httpx.post(f"{svc.url}/select", json={"queries": ["apples"], "max_k": 1}).status_code == 200


def _recv_all(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def test_headers_that_never_arrive_get_408_and_free_their_connection_slots(serve: Any) -> None:
    """Slowloris: connections that never finish their headers held uvicorn's slots forever, and with
    NEAR_MAX_CONNECTIONS of them every other client got 503."""
    svc = serve(max_connections=5, header_timeout=1.0)  # uvicorn answers 503 from the 5th connection on
    with contextlib.ExitStack() as stack:

        def connect() -> socket.socket:
            return stack.enter_context(socket.create_connection(("127.0.0.1", svc.port), timeout=10))

        idle = [connect(), connect()]  # send nothing
        partial = connect()
        partial.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        kept = connect()  # a whole request, then the next one's first line only
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept.recv(65536).startswith(b"HTTP/1.1 200")
        kept.sendall(b"GET /ready HTTP/1.1\r\n")
        t0 = time.monotonic()
        assert httpx.get(f"{svc.url}/health").status_code == 503  # the slots are held: the attack works...
        for s in idle:
            assert _recv_all(s) == b""  # ...for header_timeout: then closed, with nothing to answer
        for s in [partial, kept]:
            answer = _recv_all(s)  # ...or 408 and closed
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert b'"code":"request_timeout"' in answer and b"NEAR_HEADER_TIMEOUT" in answer
        assert 0.9 < time.monotonic() - t0 < 5.0
    assert httpx.get(f"{svc.url}/health").status_code == 200


def test_headers_over_the_limit_are_cut_off(serve: Any) -> None:
    """httptools (uvicorn's choice wherever it is installed) took 190 MB of header lines into memory."""
    svc = serve(max_header_bytes=4096)
    line = b"X-Big: " + b"a" * 1000 + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as s:
        s.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\n")
        with contextlib.suppress(OSError):  # the service hangs up while we are still sending
            for _ in range(20_000):  # 20 MB
                s.sendall(line)
                sent += len(line)
        with contextlib.suppress(OSError):
            answer = _recv_all(s)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer
    assert sent < 20_000 * len(line)
    assert httpx.get(f"{svc.url}/health").status_code == 200


def test_a_slow_pipelined_request_is_not_cut_by_the_header_deadline(serve: Any) -> None:
    """The deadline is for headers: a pipelined request that takes longer to answer is not a 408."""
    svc = serve(header_timeout=0.5)
    _slow_down(svc, 1.5)
    body = b'{"queries":["slow apples"],"max_k":1}'
    select = (
        b"POST /select HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
    )
    with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + select)  # two requests in one write
        answer = _recv_all(s)
    assert answer.count(b"HTTP/1.1 200") == 2 and b"HTTP/1.1 408" not in answer, answer
