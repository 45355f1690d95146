"""Starting real service processes: uvicorn's factory and a bad record fail clearly; /ready reports
progress while the real model loads, and a killed service restarts; ``near-select serve`` serves.

Bad settings (``near-select serve`` exits 2 before the model loads) are tested in-process, and /ready
while loading is too, in test_api_inprocess_startup.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServiceFactory

from .api_data import free_port_here, qa_records, write_jsonl

pytestmark = pytest.mark.e2e


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def test_uvicorn_factory_with_missing_pool_fails(tmp_path: Path) -> None:
    r = run(
        ["-m", "uvicorn", "near_service.server.app:create_app", "--factory", "--port", str(free_port_here())],
        env={"NEAR_CANDIDATES": '["/nonexistent/pool.jsonl"]'},
    )
    assert r.returncode != 0
    assert "candidate file(s) not found: /nonexistent/pool.jsonl" in r.stderr


def test_bad_record_fails_at_startup(service_factory: ServiceFactory, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok", "answer": "ok"}\n{not json\n')
    svc = service_factory(start=False, candidates=[bad])
    with pytest.raises(RuntimeError, match="service exited"):
        svc.start(timeout=60)
    assert "bad.jsonl" in svc.log()


def test_ready_is_503_with_progress_while_loading(service_factory: ServiceFactory, tmp_path: Path) -> None:
    pool = write_jsonl(tmp_path / "pool.jsonl", qa_records(40))
    svc = service_factory(start=False, candidates=[pool])
    svc.start(wait_ready=False)  # returns once /health answers: the model is still loading
    first = httpx.get(f"{svc.url}/ready")
    if first.status_code == 503:
        body = first.json()
        assert body["status"] == "loading" and body["progress"]["total"] == 40
        r = httpx.post(f"{svc.url}/select", json={"queries": ["x"], "max_k": 1})
        assert r.status_code in (200, 503)
        if r.status_code == 503:
            assert r.json()["error"]["code"] in ("pool_not_ready", "unavailable")
    svc.stop()
    svc.start()  # waits for /ready == 200
    body = httpx.get(f"{svc.url}/ready").json()
    assert body == {
        "status": "ready",
        "progress": {"done": 40, "total": 40},
        "redis": "disabled",
        "message": None,
        "pool": "default",
    }


def test_serve_command_serves(tmp_path: Path) -> None:
    import os
    import time

    pool = write_jsonl(tmp_path / "pool.jsonl", qa_records(12))
    port = free_port_here()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "near_service.cli",
            "serve",
            "--candidates",
            str(pool),
            "--port",
            str(port),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None
            time.sleep(0.2)
        r = httpx.post(f"http://127.0.0.1:{port}/select", json={"queries": ["apples"], "max_k": 12})
        assert r.status_code == 200 and sorted(r.json()["indices"][0]) == list(range(12))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
