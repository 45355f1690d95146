"""NearClient against the real service (packaged MiniLM, real Redis): typed answers, the error tree,
the API key. The retry logic is tested on a scripted transport in test_client_retries.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from near_client import (
    AsyncNearClient,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    EmbeddingsResponse,
    InfoResponse,
    NearClient,
    NotFoundError,
    RetryPolicy,
    fingerprint,
)
from tests.conftest import ServiceFactory, ServiceProcess

from .kit import MATH_QUERIES, POOL_SIZE, pool_texts

FAST = RetryPolicy(attempts=4, backoff=0.05, max_backoff=0.2)


def test_typed_answers_from_the_real_service(near: ServiceProcess) -> None:
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


def test_run_round_reads_one_stored_round(near: ServiceProcess) -> None:
    """``run_round`` (and its async twin): a stored round's selection without asking its queries again."""
    with NearClient(near.url, retry=FAST) as client:
        asked = client.select(MATH_QUERIES, 6, budget=5, run_id="round/read", round=0)
        stored = client.run_round("round/read", 0)
        assert stored.selected == asked.selected and (stored.budget, stored.max_k) == (5, 6)
        assert stored.query_count == len(MATH_QUERIES) and stored.pool == asked.pool
        assert client.info().max_k_limit is not None
        for run_id, rnd in (("round/read", 1), ("never-stored", 0)):
            with pytest.raises(NotFoundError):
                client.run_round(run_id, rnd)

    async def read() -> list[int] | None:
        async with AsyncNearClient(near.url, retry=FAST) as client:
            return (await client.run_round("round/read", 0)).selected

    assert asyncio.run(read()) == asked.selected


def test_real_service_errors_then_a_good_request(near: ServiceProcess) -> None:
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


def test_real_service_with_api_key(module_service_factory: ServiceFactory, pool_file: Path) -> None:
    svc = module_service_factory(candidates=[pool_file], api_key="k3y")
    with NearClient(svc.url) as anonymous:
        assert anonymous.health().status == "ok"  # liveness needs no key
        with pytest.raises(AuthenticationError):
            anonymous.info()
    with NearClient(svc.url, api_key="k3y") as client:
        assert client.info().pool.size == POOL_SIZE
