"""DataFlex test fixtures: the DataFlex venv (skip with its install's reason), the data, a tiny
model built in that venv, and a real service (packaged MiniLM, real Redis) shared by a module."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import RedisServer, ServiceFactory, ServiceProcess

from .kit import DATAFLEX_PY, DATAFLEX_VENV, ROOT, Fixture, write_data


@pytest.fixture(scope="session")
def dataflex_python() -> Path:
    failed = DATAFLEX_VENV / ".failed"
    if failed.is_file():
        pytest.skip(failed.read_text(encoding="utf-8").strip())
    if not DATAFLEX_PY.exists() or not list(DATAFLEX_VENV.glob(".dataflex-*-stamp")):
        pytest.skip("the DataFlex venv is not installed: run `make dataflex-venv` (make test does)")
    return DATAFLEX_PY


@pytest.fixture(scope="module")
def fx(dataflex_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    root = tmp_path_factory.mktemp("dataflex")
    pool, evals = write_data(root / "data")
    model = root / "tiny-llama"
    subprocess.run(
        [
            str(dataflex_python),
            str(ROOT / "examples/dataflex/make_tiny_model.py"),
            str(model),
            "--data",
            str(pool),
            str(evals),
        ],
        check=True,
        capture_output=True,
    )
    return Fixture(data_dir=root / "data", model_dir=model, pool_file=pool, eval_file=evals)


@pytest.fixture(scope="module")
def near(module_service_factory: ServiceFactory, module_redis_server: RedisServer, fx: Fixture) -> ServiceProcess:
    """A real service with Redis; its default pool is the train file (near_service registers its own)."""
    return module_service_factory(candidates=[fx.pool_file], redis_url=module_redis_server.url)
