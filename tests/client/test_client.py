"""NearClient / AsyncNearClient: retries against FakeNearService, typed answers from the real service."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from near_client import (
    AsyncNearClient,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ConnectError,
    EmbeddingsResponse,
    InfoResponse,
    NearClient,
    NotFoundError,
    RateLimitedError,
    RetryPolicy,
    SelectResponse,
    ServiceUnavailableError,
    fingerprint,
)
from tests.conftest import free_port

from .fake_service import FakeNearService
from .kit import MATH_QUERIES, POOL_SIZE, pool_texts

FAST = RetryPolicy(attempts=4, backoff=0.05, max_backoff=0.2)
UNAVAILABLE = (503, {"error": {"code": "unavailable", "message": "loading"}})


def test_retries_503_then_succeeds(fake: FakeNearService) -> None:
    fake.script("/select", UNAVAILABLE, UNAVAILABLE)
    with NearClient(fake.url, retry=FAST) as client:
        answer = client.select(["q"], 3, budget=2)
    assert isinstance(answer, SelectResponse) and len(answer.selected or []) == 2
    assert len(fake.seen("/select")) == 3


def test_429_waits_for_retry_after(fake: FakeNearService) -> None:
    fake.script("/select", (429, {"error": {"code": "overloaded", "message": "queue full"}}, {"Retry-After": "1"}))
    with NearClient(fake.url, retry=FAST) as client:
        client.select(["q"], 3)
    first, second = fake.seen("/select")
    assert second.at - first.at >= 0.95  # honoured Retry-After, not the 0.05 s backoff


def test_gives_up_after_the_attempts(fake: FakeNearService) -> None:
    fake.script("/select", *[UNAVAILABLE] * 4)
    with NearClient(fake.url, retry=FAST) as client, pytest.raises(ServiceUnavailableError, match="loading"):
        client.select(["q"], 3)
    assert len(fake.seen("/select")) == 4


def test_4xx_is_not_retried(fake: FakeNearService) -> None:
    fake.script("/select", (422, {"error": {"code": "invalid_max_k", "message": "max_k 99 > pool"}}))
    with NearClient(fake.url, retry=FAST) as client, pytest.raises(BadRequestError, match="invalid_max_k"):
        client.select(["q"], 99)
    assert len(fake.seen("/select")) == 1


def test_connection_refused_is_retried_then_connect_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    with NearClient(url, retry=FAST) as client, pytest.raises(ConnectError, match=url):
        client.info()
    assert time.monotonic() - t0 >= 0.05 + 0.1 + 0.2  # three backoffs before giving up


def test_server_that_comes_up_during_retries() -> None:
    late = FakeNearService()
    with NearClient(late.url, retry=RetryPolicy(attempts=8, backoff=0.2, max_backoff=0.5)) as client:
        import threading

        threading.Timer(0.4, late.start).start()
        try:
            assert client.health().status == "ok"
        finally:
            time.sleep(0.1)
            late.stop()


def test_api_key_is_sent_and_never_shown(fake: FakeNearService) -> None:
    with NearClient(fake.url, api_key="s3cret") as client:
        client.info()
        assert "s3cret" not in repr(client)
    assert fake.seen("/info")[0].headers["authorization"] == "Bearer s3cret"


def test_wait_ready_polls_until_ready(fake: FakeNearService) -> None:
    loading = (503, {"status": "loading", "progress": {"done": 3, "total": 48}, "redis": "ok"})
    fake.script("/ready", loading, loading)
    with NearClient(fake.url) as client:
        assert client.ready().status == "loading"
        assert client.wait_ready(timeout=10, interval=0.05).status == "ready"
        fake.script("/ready", *[loading] * 100)
        with pytest.raises(ServiceUnavailableError, match="3/48 embedded"):
            client.wait_ready(timeout=0.3, interval=0.05)


def test_async_client_retries_like_the_sync_one(fake: FakeNearService) -> None:
    full = {"error": {"code": "overloaded", "message": "full"}}
    fake.script("/select", UNAVAILABLE, (429, full, {"Retry-After": "0"}))

    async def go() -> Any:
        async with AsyncNearClient(fake.url, retry=FAST) as client:
            answer = await client.select(["q"], 3, budget=2)
            await client.wait_ready(timeout=5)
            fake.script("/select", *[(429, full)] * 4)
            with pytest.raises(RateLimitedError):
                await client.select(["q"], 3)
            return answer

    assert asyncio.run(go()).selected is not None
    assert len(fake.seen("/select")) == 3 + 4


# --- the real service --------------------------------------------------------------------------------


def test_typed_answers_from_the_real_service(near: Any) -> None:
    with NearClient(near.url) as client:
        assert client.health().status == "ok"
        assert client.wait_ready(timeout=5).status == "ready"
        info = client.info()
        assert isinstance(info, InfoResponse) and info.pool.size == POOL_SIZE
        assert info.pool.fingerprint == fingerprint(pool_texts())  # the client-side fingerprint matches
        answer = client.select(MATH_QUERIES, 5, budget=4, run_id="client-test", round=0)
        assert len(answer.indices) == 2 and len(answer.indices[0]) == 5 and len(answer.selected or []) == 4
        again = client.select(MATH_QUERIES, 5, budget=4, run_id="client-test", round=0)
        assert (answer.source, again.source) == ("computed", "stored")
        assert again.model_copy(update={"source": "computed"}) == answer
        assert [r.round for r in client.runs("client-test").rounds] == [0]
        emb = client.embeddings(["hello", "world"])
        assert isinstance(emb, EmbeddingsResponse) and len(emb.data) == 2


def test_real_service_errors_then_a_good_request(near: Any) -> None:
    with NearClient(near.url, retry=FAST) as client:
        with pytest.raises(BadRequestError) as info:
            client.select(["q"], POOL_SIZE + 1)
        assert info.value.status_code == 422 and "max_k" in info.value.message
        with pytest.raises(NotFoundError):
            client.runs("no-such-run")
        client.select(["a"], 3, budget=2, run_id="conflict-test", round=0)
        with pytest.raises(ConflictError, match="different parameters"):
            client.select(["b"], 3, budget=2, run_id="conflict-test", round=0)
        assert client.select(["a"], 3).pool.size == POOL_SIZE  # still serving


def test_real_service_with_api_key(module_service_factory: Any, pool_file: Path) -> None:
    svc = module_service_factory(candidates=[pool_file], api_key="k3y")
    with NearClient(svc.url) as anonymous:
        assert anonymous.health().status == "ok"  # liveness needs no key
        with pytest.raises(AuthenticationError):
            anonymous.info()
    with NearClient(svc.url, api_key="k3y") as client:
        assert client.info().pool.size == POOL_SIZE
