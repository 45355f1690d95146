"""Starting the service, in-process: bad settings fail fast and clearly (``near-select serve`` exits
2 before the model loads); ``/ready`` is 503 with progress while the pool is embedded.

Real processes starting and failing (uvicorn's factory, a bad record, a restart) are in test_api_serve.py.
"""

from __future__ import annotations

import time

import pytest

from near_service.cli import main as cli_main
from near_service.core.errors import ConfigError
from near_service.core.settings import load_settings
from near_service.server.app import create_app
from tests.conftest import InProcessFactory, free_port
from tests.fakes import FakeEmbedder

pytestmark = pytest.mark.inprocess


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--candidates", "/nonexistent/pool.jsonl"], "candidate file(s) not found: /nonexistent/pool.jsonl"),
        (["--candidates", "x.jsonl", "--max-k-limit", "0"], "max_k_limit"),
        (["--candidates", "x.jsonl", "--template", "{unclosed"], "template"),
        (["--candidates", "x.jsonl", "--model", "/nonexistent/model"], "model '/nonexistent/model' is not a local"),
    ],
)
def test_serve_bad_settings_exit_2_before_the_model_loads(
    flags: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    def served(*args: object, **kwargs: object) -> None:
        raise AssertionError("bad settings reached uvicorn.run")

    monkeypatch.setattr(uvicorn, "run", served)
    monkeypatch.setattr(uvicorn.Server, "run", served)
    monkeypatch.setenv("NEAR_CANDIDATES", "[]")
    assert cli_main(["serve", "--port", str(free_port()), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1, err  # the reason alone, no traceback
    assert "Loading" not in err and "Uvicorn running" not in err


def test_create_app_with_missing_pool_fails() -> None:
    with pytest.raises(ConfigError, match=r"candidate file\(s\) not found: /nonexistent/pool.jsonl"):
        create_app(load_settings(candidates=["/nonexistent/pool.jsonl"]), embedder=FakeEmbedder())


def test_ready_is_503_with_progress_while_loading(inprocess: InProcessFactory) -> None:
    slow = FakeEmbedder()
    slow.backend.delay = 0.5  # the pool's one model call: /ready answers while it runs
    svc = inprocess(embedder=slow, wait_ready=False)
    first = svc.client.get("/ready")
    assert first.status_code == 503
    body = first.json()
    assert body["status"] == "loading" and body["progress"]["total"] == 40
    r = svc.client.post("/select", json={"queries": ["x"], "max_k": 1})
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "pool_not_ready" and "embedding" in r.json()["error"]["message"]
    assert int(r.headers["Retry-After"]) >= 1
    deadline = time.monotonic() + 30  # then it finishes loading and serves
    while svc.client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert svc.client.post("/select", json={"queries": ["x"], "max_k": 1}).status_code == 200
