"""Shared fixtures, and the test tiers.

Tiers (pytest markers, registered in pyproject.toml; run one with ``pytest -m inprocess``):

* ``inprocess``: the real app in this process (Starlette TestClient, :class:`tests.fakes.FakeEmbedder`
  as its model) for validation, errors, auth and ledger logic, and the client's retries against
  ``FakeNearService`` (an ``httpx.MockTransport``). Fast: no subprocess, no model weights.
* ``e2e``: a real uvicorn subprocess with the real packaged model (and a real Redis where the test
  needs one): what only real HTTP, real processes and the real model can show.
* ``slow``: long runs (vLLM on CPU, Trainer runs); ``-m "not slow"`` leaves them out.
* ``dataflex``: the trainings of issue 18 (real DataFlex runs in .venv-dataflex, the callback under
  TRL); each prints its time through the ``report`` fixture.

A test that uses the ``inprocess`` fixtures is marked ``inprocess`` and one that starts a real
service (``service_factory``, ``module_service_factory``) is marked ``e2e`` here, at collection, so
a new test lands in its tier by the fixtures it asks for.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pytest

if TYPE_CHECKING:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from near_service.server.state import ServiceState
    from tests.fakes import FakeEmbedder


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & {"inprocess", "module_inprocess"}:
            item.add_marker(pytest.mark.inprocess)
        if fixtures & {"service_factory", "module_service_factory"}:
            item.add_marker(pytest.mark.e2e)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    """A real redis-server process; ``stop()``/``start()`` let tests kill and revive it on the same port."""

    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server not installed"
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


def _redis(dir: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make setup installs it)")
    server = RedisServer(port=free_port(), dir=dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    yield from _redis(tmp_path)


@pytest.fixture(scope="module")
def module_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Like ``redis_server``, shared by the tests of one module."""
    yield from _redis(tmp_path_factory.mktemp("redis"))


@dataclass
class ServiceProcess:
    """A real ``uvicorn near_service.server.app:create_app --factory`` subprocess, configured by NEAR_* env.

    ``start()`` waits until ``GET /ready`` answers 200 (or ``wait_ready=False``); ``stop()`` kills it;
    ``start()`` again restarts it on the same port (same settings, so the same caches).
    """

    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, timeout: float = 180.0) -> None:
        import os
        import sys

        import httpx

        env = {**os.environ, **self.env, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        log = open(self.log_path, "ab")  # noqa: SIM115 - the process owns it
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "near_service.server.app:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()  # the child holds its own copy of the descriptor
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Bearer {self.env['NEAR_API_KEY']}"} if "NEAR_API_KEY" in self.env else {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.log_path.read_text()[-4000:]}")
            try:
                r = httpx.get(f"{self.url}/ready" if wait_ready else f"{self.url}/health", headers=headers, timeout=2)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"service not ready in {timeout}s:\n{self.log_path.read_text()[-4000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
            self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _service_factory(tmp_path: Path) -> Iterator[ServiceFactory]:
    import json

    started: list[ServiceProcess] = []

    def make(start: bool = True, **settings: object) -> ServiceProcess:
        env = {}
        for key, value in settings.items():
            if isinstance(value, (list, tuple)):
                value = json.dumps([str(v) for v in value])
            env[f"NEAR_{key.upper()}"] = str(value)
        env.setdefault("NEAR_CACHE_DIR", str(tmp_path / f"cache{len(started)}"))
        svc = ServiceProcess(port=free_port(), env=env, log_path=tmp_path / f"service{len(started)}.log")
        started.append(svc)
        if start:
            svc.start()
        return svc

    try:
        yield make
    finally:
        for svc in started:
            svc.stop()


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[ServiceFactory]:
    """``service_factory(**settings) -> ServiceProcess`` (started); every one is stopped at teardown.

    Settings are Settings field names, e.g. ``service_factory(candidates=[path], redis_url=url)``.
    """
    yield from _service_factory(tmp_path)


@pytest.fixture(scope="module")
def module_service_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceFactory]:
    """Like ``service_factory``, but its services live for the whole test module (start them once)."""
    yield from _service_factory(tmp_path_factory.mktemp("services"))


class ServiceFactory(Protocol):
    """``factory(start=True, **settings) -> ServiceProcess``: settings are Settings field names."""

    def __call__(self, start: bool = True, **settings: object) -> ServiceProcess: ...


@dataclass
class InProcessService:
    """The real app (routes, middleware, Selector, stores) in this process, through Starlette's
    TestClient, with :class:`tests.fakes.FakeEmbedder` as its model: no subprocess, no weights."""

    client: TestClient
    app: FastAPI
    embedder: FakeEmbedder

    @property
    def state(self) -> ServiceState:
        state: ServiceState = self.app.state.near
        return state


class InProcessFactory(Protocol):
    """``factory(pool_records=None, **settings) -> InProcessService``, ready (the pool is indexed)
    unless ``wait_ready=False``; ``embedder`` replaces the default :class:`tests.fakes.FakeEmbedder`."""

    def __call__(
        self,
        pool_records: list[dict[str, str]] | None = None,
        *,
        embedder: FakeEmbedder | None = None,
        wait_ready: bool = True,
        **settings: object,
    ) -> InProcessService: ...


def _inprocess(tmp_path: Path) -> Iterator[InProcessFactory]:
    from fastapi.testclient import TestClient

    from near_service.core.settings import load_settings
    from near_service.server.app import create_app
    from tests.fakes import FakeEmbedder
    from tests.service.api_data import qa_records, write_jsonl

    opened: list[TestClient] = []

    def make(
        pool_records: list[dict[str, str]] | None = None,
        *,
        embedder: FakeEmbedder | None = None,
        wait_ready: bool = True,
        **settings: object,
    ) -> InProcessService:
        pool = write_jsonl(tmp_path / f"pool{len(opened)}.jsonl", pool_records or qa_records(40))
        settings.setdefault("cache_dir", "")
        app = create_app(load_settings(candidates=[pool], **settings), embedder=embedder or FakeEmbedder())
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()  # runs the lifespan
        opened.append(client)
        service = InProcessService(client, app, app.state.embedder)
        headers = {"Authorization": f"Bearer {settings['api_key']}"} if settings.get("api_key") else {}
        deadline = time.monotonic() + 30
        while wait_ready and client.get("/ready", headers=headers).status_code != 200:
            assert time.monotonic() < deadline, client.get("/ready", headers=headers).text
            time.sleep(0.01)
        return service

    try:
        yield make
    finally:
        for client in opened:
            client.__exit__(None, None, None)


@pytest.fixture
def inprocess(tmp_path: Path) -> Iterator[InProcessFactory]:
    """Build in-process services; each is shut down (lifespan exit) at teardown."""
    yield from _inprocess(tmp_path)


@pytest.fixture(scope="module")
def module_inprocess(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessFactory]:
    """Like ``inprocess``, but its services live for the whole test module (build them once)."""
    yield from _inprocess(tmp_path_factory.mktemp("inprocess"))


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Print a line on the terminal even while pytest captures output (the runs' times)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def write(line: str) -> None:
        print(line)  # in the test's captured output too
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(line)

    return write
