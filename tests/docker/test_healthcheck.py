"""docker/healthcheck.py: against a stub /ready for each answer it handles, and against the real service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from .composefile import ROOT

SCRIPT = ROOT / "docker" / "healthcheck.py"


class _Stub(ThreadingHTTPServer):
    status = 200
    seen: list[tuple[str, str | None]]


class _Handler(BaseHTTPRequestHandler):
    server: _Stub

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        body = b'{"status": "loading", "progress": {"done": 3, "total": 10}, "redis": "ok"}'
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[_Stub]:
    server = _Stub(("127.0.0.1", 0), _Handler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _run(port: int, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NEAR_")}
    return subprocess.run(
        [sys.executable, str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "NEAR_HOST": "0.0.0.0", "NEAR_PORT": str(port), **env},
    )


def test_ready_is_healthy_and_sends_the_api_key(stub: _Stub) -> None:
    result = _run(stub.server_port, NEAR_API_KEY="s3cret")
    assert result.returncode == 0, result.stdout + result.stderr
    assert stub.seen == [("/ready", "Bearer s3cret")]


def test_no_key_no_header(stub: _Stub) -> None:
    assert _run(stub.server_port).returncode == 0
    assert stub.seen == [("/ready", None)]


def test_loading_is_unhealthy_and_shows_progress(stub: _Stub) -> None:
    stub.status = 503
    result = _run(stub.server_port)
    assert result.returncode == 1
    assert "503" in result.stdout and '"done": 3' in result.stdout


def test_nothing_listening_is_unhealthy(tmp_path: Path) -> None:
    from socket import socket

    with socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = _run(port)
    assert result.returncode == 1 and "/ready" in result.stdout


def test_real_service_with_auth(service_factory: Any, tmp_path: Path) -> None:
    # The real service (packaged model, a pool this test writes): healthy with the key, not without it.
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"text": f"sample {i}: {i} + {i} = {2 * i}"}) + "\n" for i in range(6)))
    svc = service_factory(candidates=[pool], api_key="s3cret")
    env = {"NEAR_HOST": "127.0.0.1", "NEAR_CANDIDATES": json.dumps([str(pool)])}
    assert _run(svc.port, NEAR_API_KEY="s3cret", **env).returncode == 0
    wrong = _run(svc.port, NEAR_API_KEY="wrong", **env)
    assert wrong.returncode == 1 and "401" in wrong.stdout
