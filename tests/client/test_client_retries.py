"""NearClient / AsyncNearClient retry logic against FakeNearService: scripted answers on an
``httpx.MockTransport`` (no server). Typed answers from the real service are in test_client.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from near_client import (
    BadRequestError,
    ConnectError,
    NearClient,
    RateLimitedError,
    RetryPolicy,
    SelectResponse,
    ServiceUnavailableError,
)
from tests.conftest import free_port

from .fake_service import FakeNearService

pytestmark = pytest.mark.inprocess

FAST = RetryPolicy(attempts=4, backoff=0.05, max_backoff=0.2)
UNAVAILABLE = (503, {"error": {"code": "unavailable", "message": "loading"}})


def test_retries_503_then_succeeds(fake: FakeNearService) -> None:
    fake.script("/select", UNAVAILABLE, UNAVAILABLE)
    with fake.client(retry=FAST) as client:
        answer = client.select(["q"], 3, budget=2)
    assert isinstance(answer, SelectResponse) and len(answer.selected or []) == 2
    assert len(fake.seen("/select")) == 3


def test_429_waits_for_retry_after(fake: FakeNearService) -> None:
    fake.script("/select", (429, {"error": {"code": "overloaded", "message": "queue full"}}, {"Retry-After": "1"}))
    with fake.client(retry=FAST) as client:
        client.select(["q"], 3)
    first, second = fake.seen("/select")
    assert second.at - first.at >= 0.95  # honoured Retry-After, not the 0.05 s backoff


def test_gives_up_after_the_attempts(fake: FakeNearService) -> None:
    fake.script("/select", *[UNAVAILABLE] * 4)
    with fake.client(retry=FAST) as client, pytest.raises(ServiceUnavailableError, match="loading"):
        client.select(["q"], 3)
    assert len(fake.seen("/select")) == 4


def test_4xx_is_not_retried(fake: FakeNearService) -> None:
    fake.script("/select", (422, {"error": {"code": "invalid_max_k", "message": "max_k 99 > pool"}}))
    with fake.client(retry=FAST) as client, pytest.raises(BadRequestError, match="invalid_max_k"):
        client.select(["q"], 99)
    assert len(fake.seen("/select")) == 1


def test_connection_refused_is_retried_then_connect_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there: a real refused connection
    t0 = time.monotonic()
    with NearClient(url, retry=FAST) as client, pytest.raises(ConnectError, match=url):
        client.info()
    assert time.monotonic() - t0 >= 0.05 + 0.1 + 0.2  # three backoffs before giving up


def test_server_that_comes_up_during_retries(fake: FakeNearService) -> None:
    fake.down_until = time.monotonic() + 0.4  # connections are refused for 0.4 s
    with fake.client(retry=RetryPolicy(attempts=8, backoff=0.2, max_backoff=0.5)) as client:
        assert client.health().status == "ok"
    assert time.monotonic() >= fake.down_until and len(fake.seen("/health")) == 1


def test_api_key_is_sent_and_never_shown(fake: FakeNearService) -> None:
    with fake.client(api_key="s3cret") as client:
        client.info()
        assert "s3cret" not in repr(client)
    assert fake.seen("/info")[0].headers["authorization"] == "Bearer s3cret"


def test_wait_ready_polls_until_ready(fake: FakeNearService) -> None:
    loading = (503, {"status": "loading", "progress": {"done": 3, "total": 48}, "redis": "ok"})
    fake.script("/ready", loading, loading)
    with fake.client() as client:
        assert client.ready().status == "loading"
        assert client.wait_ready(timeout=10, interval=0.05).status == "ready"
        fake.script("/ready", *[loading] * 100)
        with pytest.raises(ServiceUnavailableError, match="3/48 embedded"):
            client.wait_ready(timeout=0.3, interval=0.05)


def test_async_client_retries_like_the_sync_one(fake: FakeNearService) -> None:
    full = {"error": {"code": "overloaded", "message": "full"}}
    fake.script("/select", UNAVAILABLE, (429, full, {"Retry-After": "0"}))

    async def go() -> SelectResponse:
        async with fake.async_client(retry=FAST) as client:
            answer = await client.select(["q"], 3, budget=2)
            await client.wait_ready(timeout=5)
            fake.script("/select", *[(429, full)] * 4)
            with pytest.raises(RateLimitedError):
                await client.select(["q"], 3)
            return answer

    assert asyncio.run(go()).selected is not None
    assert len(fake.seen("/select")) == 3 + 4
