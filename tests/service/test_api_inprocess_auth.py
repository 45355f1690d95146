"""Optional bearer API key, in-process: 401 on every route but /health, the key works, no key no auth.

That the key never reaches uvicorn's access log is checked over real HTTP in test_api_e2e.py.
"""

from __future__ import annotations

import pytest

from tests.conftest import InProcessFactory, InProcessService
from tests.service.api_data import qa_records

KEY = "sk-test-7f3a9c0e1b2d4f6a8c0e"
WRONG = "sk-wrong-0000000000000000000"


@pytest.fixture(scope="module")
def svc(module_inprocess: InProcessFactory) -> InProcessService:
    return module_inprocess(qa_records(20), api_key=KEY)


ROUTES = [
    ("GET", "/ready"),
    ("GET", "/info"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/runs/x"),
    ("GET", "/runs/x/rounds/0"),
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
def test_401_without_the_key(svc: InProcessService, method: str, path: str, headers: dict[str, str]) -> None:
    r = svc.client.request(method, path, headers=headers, json={"queries": ["x"], "max_k": 1})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"


def test_health_is_open_and_the_key_works(svc: InProcessService) -> None:
    assert svc.client.get("/health").status_code == 200
    auth = {"Authorization": f"Bearer {KEY}"}
    assert svc.client.get("/ready", headers=auth).status_code == 200
    r = svc.client.post("/select", headers=auth, json={"queries": ["apples"], "max_k": 3})
    assert r.status_code == 200 and len(r.json()["indices"][0]) == 3
    assert svc.client.post("/v1/embeddings", headers=auth, json={"input": "x"}).status_code == 200
    assert svc.client.get("/metrics", headers=auth).status_code == 200


def test_no_key_configured_means_no_auth(module_inprocess: InProcessFactory) -> None:
    open_svc = module_inprocess(qa_records(12))
    assert open_svc.client.post("/select", json={"queries": ["x"], "max_k": 2}).status_code == 200
    assert open_svc.client.get("/metrics").status_code == 200
