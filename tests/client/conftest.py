"""Client test fixtures: the tiny pool file, a real service over it, and the scripted fake service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .fake_service import FakeNearService
from .kit import pool_texts, write_pool


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pool(tmp_path_factory.mktemp("pool") / "pool.jsonl", pool_texts())


@pytest.fixture(scope="module")
def near(module_service_factory: Any, module_redis_server: Any, pool_file: Path) -> Any:
    """A real service (packaged MiniLM, real Redis) over the 48-sample pool, shared by a module."""
    return module_service_factory(candidates=[pool_file], redis_url=module_redis_server.url)


@pytest.fixture
def fake() -> Iterator[FakeNearService]:
    server = FakeNearService()
    server.start()
    try:
        yield server
    finally:
        server.stop()
