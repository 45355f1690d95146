"""Optional bearer API key: 401 on every route but /health, and the key never reaches the log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from .api_data import qa_records, write_jsonl

KEY = "sk-test-7f3a9c0e1b2d4f6a8c0e"
WRONG = "sk-wrong-0000000000000000000"


@pytest.fixture(scope="module")
def svc(module_service_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    pool = write_jsonl(tmp_path_factory.mktemp("data") / "pool.jsonl", qa_records(20))
    return module_service_factory(candidates=[pool], api_key=KEY, log_level="debug")


ROUTES = [
    ("GET", "/ready"),
    ("GET", "/info"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/runs/x"),
    ("POST", "/select"),
    ("POST", "/v1/embeddings"),
    ("GET", "/no-such-route"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": f"Bearer {WRONG}"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}],
    ids=["none", "wrong", "no-scheme", "basic"],
)
def test_401_without_the_key(svc: Any, method: str, path: str, headers: dict[str, str]) -> None:
    r = httpx.request(method, f"{svc.url}{path}", headers=headers, json={"queries": ["x"], "max_k": 1})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"


def test_health_is_open_and_the_key_works(svc: Any) -> None:
    assert httpx.get(f"{svc.url}/health").status_code == 200
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(f"{svc.url}/ready", headers=auth).status_code == 200
    r = httpx.post(f"{svc.url}/select", headers=auth, json={"queries": ["apples"], "max_k": 3})
    assert r.status_code == 200 and len(r.json()["indices"][0]) == 3
    assert httpx.post(f"{svc.url}/v1/embeddings", headers=auth, json={"input": "x"}).status_code == 200
    assert httpx.get(f"{svc.url}/metrics", headers=auth).status_code == 200


def test_the_key_is_not_logged(svc: Any) -> None:
    httpx.get(f"{svc.url}/info", headers={"Authorization": f"Bearer {WRONG}"})
    log = svc.log()
    assert "GET /info" in log  # the access log is on
    assert KEY not in log and WRONG not in log


def test_no_key_configured_means_no_auth(module_service_factory: Any, tmp_path: Path) -> None:
    pool = write_jsonl(tmp_path / "pool.jsonl", qa_records(12))
    open_svc = module_service_factory(candidates=[pool])
    try:
        assert httpx.post(f"{open_svc.url}/select", json={"queries": ["x"], "max_k": 2}).status_code == 200
        assert httpx.get(f"{open_svc.url}/metrics").status_code == 200
    finally:
        open_svc.stop()
