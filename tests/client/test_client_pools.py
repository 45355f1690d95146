"""The clients' pool methods (``put_pool``, ``pools``, ``pool``, ``delete_pool``, ``wait_pool`` and
``select(pool=...)``) on an ``httpx.MockTransport`` (no server): what each sends, what it returns,
and which error each failure ends in, for :class:`NearClient` and :class:`AsyncNearClient` alike.
The real service behind these routes is tested in tests/service/test_pools_*.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from near_client import AsyncNearClient, NearClient, RetryPolicy
from near_client.errors import (
    APIError,
    InsufficientMemoryError,
    InsufficientStorageError,
    PoolConflictError,
    PoolFailedError,
    PoolNotFoundError,
    PoolNotReadyError,
    ServerError,
)
from near_schema import PoolStatus, fingerprint

pytestmark = pytest.mark.inprocess

URL = "http://near.test"
TEXTS = ["What is 2 + 2?", "A train leaves at noon.", "Apples in a basket."]
FAST = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.02)


def status(
    name: str, state: str = "queued", done: int = 0, rows: int = 3, message: str | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "state": state,
        "rows": rows,
        "fingerprint": fingerprint(TEXTS),
        "source": "texts",
        "default": False,
        "progress": {"done": done, "total": rows},
        "message": message,
    }


@dataclass
class Seen:
    method: str
    path: str
    query: str
    body: Any


class FakePoolRoutes:
    """A fake service's ``/pools`` and ``/select`` routes: each ``GET /pools/{name}`` answers the next
    of the statuses scripted for it (the last one repeats); ``errors`` answers a (method, path) once."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.polls: dict[str, list[dict[str, Any]]] = {}
        self.errors: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = {}
        self.transport = httpx.MockTransport(self._handle)

    def error(self, method: str, path: str, status_code: int, code: str, message: str) -> None:
        self.errors.setdefault((method, path), []).append((status_code, {"error": {"code": code, "message": message}}))

    def _handle(self, request: httpx.Request) -> httpx.Response:
        raw = request.read()
        body: Any
        if request.headers.get("content-type") == "application/x-ndjson":
            body = {"ndjson": [json.loads(line) for line in raw.splitlines()]}
        else:
            body = json.loads(raw) if raw else None
        method, path = request.method, request.url.path
        self.seen.append(Seen(method, path, request.url.query.decode(), body))
        if self.errors.get((method, path)):
            code, payload = self.errors[(method, path)].pop(0)
            return httpx.Response(code, json=payload)
        if path == "/pools" and method == "GET":
            pools = [status("a", "ready"), status("b", "embedding", done=1)]
            return httpx.Response(
                200, json={"pools": pools, "default": None, "memory_bytes": 9, "max_memory_bytes": 99}
            )
        if path.startswith("/pools/"):
            name = path.removeprefix("/pools/")
            if method == "PUT":
                return httpx.Response(202, json=status(name))
            if method == "DELETE":
                return httpx.Response(200, json=status(name, "ready"))
            polls = self.polls.get(name)
            if not polls:
                return httpx.Response(404, json={"error": {"code": "pool_not_found", "message": f"no pool {name!r}"}})
            return httpx.Response(200, json=polls.pop(0) if len(polls) > 1 else polls[0])
        if path == "/select":
            k = body["max_k"]
            pool = {"size": 3, "fingerprint": fingerprint(TEXTS), "model": "fake", "name": body.get("pool", "default")}
            return httpx.Response(200, json={"indices": [[0] * k], "scores": [[1.0] * k], "pool": pool})
        return httpx.Response(404, json={"error": {"code": "not_found", "message": path}})

    def sync(self) -> NearClient:
        return NearClient(URL, transport=self.transport, retry=FAST)

    def async_(self) -> AsyncNearClient:
        return AsyncNearClient(URL, transport=self.transport, retry=FAST)


class Both:
    """Runs one call on NearClient and on AsyncNearClient (each against its own fresh fake), and
    gives back both results: ``both.call(lambda c: c.put_pool("x", TEXTS))``."""

    def __init__(self, setup: Callable[[FakePoolRoutes], None] = lambda f: None) -> None:
        self.fakes = {"sync": FakePoolRoutes(), "async": FakePoolRoutes()}
        for fake in self.fakes.values():
            setup(fake)

    def call(self, fn: Callable[[Any], Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with self.fakes["sync"].sync() as client:
            out["sync"] = _outcome(lambda: fn(client))

        async def run() -> Any:
            async with self.fakes["async"].async_() as client:
                return await fn(client)

        out["async"] = _outcome(lambda: asyncio.run(run()))
        return out


def _outcome(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # compared by the tests
        return exc


# --- put_pool ------------------------------------------------------------------------------------


def test_put_pool_streams_the_texts_as_ndjson() -> None:
    both = Both()
    for kind, answer in both.call(lambda c: c.put_pool("x", TEXTS)).items():
        assert isinstance(answer, PoolStatus) and answer.state == "queued" and answer.name == "x", kind
        (seen,) = both.fakes[kind].seen
        assert (seen.method, seen.path, seen.query) == ("PUT", "/pools/x", ""), kind
        assert seen.body == {"ndjson": TEXTS}, kind  # one JSON string a line, not one JSON body


def test_put_pool_ndjson_carries_its_options_and_odd_texts_in_query_and_lines() -> None:
    odd = ["line\nbreak", 'quote " and \\ backslash', "ünïcødé ✓", "x" * 300_000]  # > one 256 KiB chunk
    both = Both()
    for kind, answer in both.call(lambda c: c.put_pool("x", odd, replace=True, density_stats="off")).items():
        assert isinstance(answer, PoolStatus), kind
        (seen,) = both.fakes[kind].seen
        assert seen.query == "replace=true&density_stats=off" and seen.body == {"ndjson": odd}, kind


def test_a_retried_put_sends_the_whole_stream_again() -> None:
    def setup(f: FakePoolRoutes) -> None:
        f.error("PUT", "/pools/x", 503, "unavailable", "busy")

    both = Both(setup)
    for kind, answer in both.call(lambda c: c.put_pool("x", TEXTS)).items():
        assert isinstance(answer, PoolStatus), kind
        assert [s.body for s in both.fakes[kind].seen] == [{"ndjson": TEXTS}] * 2, kind


def test_put_pool_sends_files_template_options_and_replace() -> None:
    both = Both()
    answers = both.call(
        lambda c: c.put_pool(
            "gsm8k.v2", files=["sub/a.jsonl", "b.jsonl"], template="alpaca", replace=True, density_stats="load"
        )
    )
    for kind, answer in answers.items():
        assert isinstance(answer, PoolStatus) and answer.name == "gsm8k.v2", kind
        (seen,) = both.fakes[kind].seen
        assert (seen.method, seen.path, seen.query) == ("PUT", "/pools/gsm8k.v2", "replace=true"), kind
        assert seen.body == {"files": ["sub/a.jsonl", "b.jsonl"], "template": "alpaca", "density_stats": "load"}


def test_put_pool_checks_the_body_before_sending() -> None:
    both = Both()
    for kind, answer in both.call(lambda c: c.put_pool("x")).items():  # neither texts nor files
        assert "exactly one of texts or files" in str(answer), kind
        assert both.fakes[kind].seen == [], kind
    for kind, answer in both.call(lambda c: c.put_pool("x", ["ok", "  "])).items():
        assert "texts[1] is empty" in str(answer) and both.fakes[kind].seen == [], kind


@pytest.mark.parametrize(
    ("status_code", "code", "cls"),
    [
        (409, "pool_conflict", PoolConflictError),
        (507, "insufficient_memory", InsufficientMemoryError),
        (507, "insufficient_storage", InsufficientStorageError),
        (507, "http_507", ServerError),  # a proxy's 507 without our body: the status decides
    ],
)
def test_put_pool_errors_are_raised_and_not_retried(status_code: int, code: str, cls: type[APIError]) -> None:
    both = Both(lambda f: f.error("PUT", "/pools/x", status_code, code, "no room for pool 'x'"))
    for kind, answer in both.call(lambda c: c.put_pool("x", TEXTS)).items():
        assert type(answer) is cls and answer.status_code == status_code and answer.code == code, (kind, answer)
        assert "no room for pool 'x'" in str(answer)
        assert len(both.fakes[kind].seen) == 1, kind  # the same PUT would fail the same way


# --- pools, pool, delete_pool --------------------------------------------------------------------


def test_pools_lists_every_pool() -> None:
    both = Both()
    for kind, answer in both.call(lambda c: c.pools()).items():
        assert [(p.name, p.state) for p in answer] == [("a", "ready"), ("b", "embedding")], kind
        assert all(isinstance(p, PoolStatus) for p in answer)
        assert both.fakes[kind].seen[0].method == "GET" and both.fakes[kind].seen[0].path == "/pools"


def test_pool_shows_one_and_unknown_is_pool_not_found() -> None:
    both = Both(lambda f: f.polls.update({"x": [status("x", "embedding", done=2)]}))
    for kind, answer in both.call(lambda c: c.pool("x")).items():
        assert answer.state == "embedding" and answer.progress.done == 2 and answer.progress.total == 3, kind
    for kind, answer in both.call(lambda c: c.pool("nope")).items():
        assert isinstance(answer, PoolNotFoundError) and answer.code == "pool_not_found", kind
        assert len([s for s in both.fakes[kind].seen if s.path == "/pools/nope"]) == 1  # a 404 is not retried


def test_delete_pool() -> None:
    both = Both()
    for kind, answer in both.call(lambda c: c.delete_pool("x")).items():
        assert isinstance(answer, PoolStatus) and answer.name == "x", kind
        assert [(s.method, s.path) for s in both.fakes[kind].seen] == [("DELETE", "/pools/x")]
    both = Both(lambda f: f.error("DELETE", "/pools/x", 404, "pool_not_found", "no pool 'x'"))
    for kind, answer in both.call(lambda c: c.delete_pool("x")).items():
        assert isinstance(answer, PoolNotFoundError), kind


# --- wait_pool -----------------------------------------------------------------------------------


def progress_script(f: FakePoolRoutes) -> None:
    f.polls["x"] = [
        status("x", "queued"),
        status("x", "embedding", done=1),
        status("x", "stats", done=3),
        status("x", "ready", done=3),
    ]


def test_wait_pool_polls_until_ready() -> None:
    both = Both(progress_script)
    for kind, answer in both.call(lambda c: c.wait_pool("x", timeout=30, interval=0.001)).items():
        assert isinstance(answer, PoolStatus) and answer.state == "ready", (kind, answer)
        assert len(both.fakes[kind].seen) == 4, kind


def test_wait_pool_searchable_returns_while_the_statistics_compute() -> None:
    both = Both(progress_script)
    for kind, answer in both.call(lambda c: c.wait_pool("x", 30, interval=0.001, searchable=True)).items():
        assert answer.state == "stats" and len(both.fakes[kind].seen) == 3, (kind, answer)


def test_wait_pool_on_a_failed_pool_raises_with_the_reason() -> None:
    reason = "OSError: could not write the pool vector file: No space left on device"
    both = Both(lambda f: f.polls.update({"x": [status("x", "embedding"), status("x", "failed", message=reason)]}))
    for kind, answer in both.call(lambda c: c.wait_pool("x", timeout=30, interval=0.001)).items():
        assert isinstance(answer, PoolFailedError) and reason in str(answer) and "'x'" in str(answer), (kind, answer)


def test_wait_pool_times_out_with_the_progress() -> None:
    both = Both(lambda f: f.polls.update({"x": [status("x", "embedding", done=1)]}))
    for kind, answer in both.call(lambda c: c.wait_pool("x", timeout=0.02, interval=0.005)).items():
        assert isinstance(answer, PoolNotReadyError) and answer.code == "pool_not_ready", (kind, answer)
        assert "still embedding" in str(answer) and "(1/3)" in str(answer), answer


def test_wait_pool_on_an_unknown_pool_raises_pool_not_found() -> None:
    both = Both()
    for kind, answer in both.call(lambda c: c.wait_pool("nope", timeout=30, interval=0.001)).items():
        assert isinstance(answer, PoolNotFoundError), (kind, answer)


class FakeTerminal(io.StringIO):
    """A fake stderr that says it is a terminal (a test cannot give pytest's own one a tty)."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [False, True], ids=["not-a-terminal", "terminal"])
def test_wait_pool_progress_bar(monkeypatch: pytest.MonkeyPatch, terminal: bool) -> None:
    err = FakeTerminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    both = Both(progress_script)
    for kind, answer in both.call(lambda c: c.wait_pool("x", timeout=30, interval=0.001, progress=True)).items():
        assert isinstance(answer, PoolStatus) and answer.state == "ready", (kind, answer)
    drawn = err.getvalue()
    if terminal:  # one bar per client: the pool's name, its rows, and the state it ended in
        assert drawn.count("pool x") >= 2 and "3/3" in drawn and "ready" in drawn, drawn
    else:
        assert drawn == ""  # no bar off a terminal (a log file stays clean), and no error


# --- select(pool=...) ----------------------------------------------------------------------------


def test_select_sends_the_pool() -> None:
    both = Both()
    for kind, answer in both.call(lambda c: c.select(["q"], 2, pool="x")).items():
        assert answer.pool.name == "x", kind
        assert both.fakes[kind].seen[0].body == {
            "queries": ["q"],
            "max_k": 2,
            "strategy": "density",
            "exclude_previous": False,
            "pool": "x",
        }
    both = Both()
    for kind, answer in both.call(lambda c: c.select(["q"], 2)).items():
        assert answer.pool.name == "default" and "pool" not in both.fakes[kind].seen[0].body, kind
