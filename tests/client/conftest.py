"""Client test fixtures: the tiny pool file, a real service over it, and the scripted fake service
(an ``httpx.MockTransport``: no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import RedisServer, ServiceFactory, ServiceProcess

from .fake_service import FakeNearService
from .kit import pool_texts, write_pool


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pool(tmp_path_factory.mktemp("pool") / "pool.jsonl", pool_texts())


@pytest.fixture(scope="module")
def near(module_service_factory: ServiceFactory, module_redis_server: RedisServer, pool_file: Path) -> ServiceProcess:
    """A real service (packaged MiniLM, real Redis) over the 48-sample pool, shared by a module."""
    return module_service_factory(candidates=[pool_file], redis_url=module_redis_server.url)


@pytest.fixture
def fake() -> FakeNearService:
    return FakeNearService()
