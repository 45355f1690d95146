"""`docker compose up` for real: the CPU stack built, started and checked from outside, as a user runs it.

    docker compose -f docker-compose.yml -f docker-compose.cpu.yml up -d --build

Runs wherever a Docker engine answers (a user's own machine included) and is skipped, with the reason,
where none does; `.ci/run` starts one on our machines. The stack gets its own compose project, a free
published port and an API key, and is removed with its volumes (`down -v`) at the end, failed or not.
Cold (first image build) this takes minutes; with the layers cached, about a minute and a half.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.docker.composefile import (
    COMPOSE,
    COMPOSE_CPU,
    DOCKERFILE_CPU,
    ROOT,
    dockerfile_env,
    effective_env,
    interpolate,
    load_merged,
)

DEMO = ROOT / "examples" / "demo"
MAX_K = 5
HEALTHY_WITHIN_S = 600.0  # first start: the demo pool (32 texts) is embedded on a CPU; ~20 s here
DOWN_WITHIN_S = 600.0  # the vfs storage driver (our CI's engine) deletes a 2 GB container copy file by file
# Settings of the host shell that would change the stack under test; a developer's .env is kept out too.
HOST_ONLY = ("NEAR_", "POOL_", "PUBLISH_PORT", "COMPOSE_")


def _run(cmd: list[str], timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def _engine_missing() -> str | None:
    """Why the test cannot run here, or None when a Docker engine and Compose v2.24+ answer."""
    if shutil.which("docker") is None:
        return "no docker CLI on PATH (install Docker; CI starts one with .ci/run)"
    try:
        info = _run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=20)
        version = _run(["docker", "compose", "version", "--short"], timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the Docker engine does not answer: {exc}"
    if info.returncode != 0 or not info.stdout.strip():
        return f"no Docker engine answers (docker info: {(info.stderr or info.stdout).strip()[:200]})"
    parts = version.stdout.strip().lstrip("v").split(".")
    if version.returncode != 0 or [int(p) for p in parts[:2] if p.isdigit()] < [2, 24]:
        return f"docker compose v2.24+ is needed for !reset (found: {version.stdout.strip() or version.stderr.strip()})"
    return None


SKIP = _engine_missing()
pytestmark = [pytest.mark.compose, pytest.mark.timeout(1800), pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    """One compose project of the CPU variant; ``compose(...)`` runs ``docker compose`` on it."""

    project: str
    env: dict[str, str]
    port: int
    api_key: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def compose(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [
            "docker",
            "compose",
            "-p",
            self.project,
            "--env-file",
            self.env["_ENV_FILE"],
            "-f",
            str(COMPOSE),
            "-f",
            str(COMPOSE_CPU),
            *args,
        ]
        env = {k: v for k, v in self.env.items() if not k.startswith("_")}
        result = _run(cmd, timeout=timeout, cwd=ROOT, env=env)
        if check:
            assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    def timed(self, name: str, *args: str, timeout: float = 120) -> None:
        start = time.monotonic()
        self.compose(*args, timeout=timeout)
        self.timings[name] = time.monotonic() - start

    def container(self) -> str:
        cid = self.compose("ps", "-q", "near-select").stdout.strip()
        assert cid, "no near-select container"
        return cid

    def logs(self) -> str:
        return (
            "\n--- docker compose logs ---\n" + self.compose("logs", "--no-color", "--tail", "60", check=False).stdout
        )

    def wait_healthy(self, name: str, timeout: float = HEALTHY_WITHIN_S) -> None:
        """Until docker reports the container healthy (its own healthcheck: /ready with the key)."""
        start = time.monotonic()
        cid, state = self.container(), {}
        while time.monotonic() - start < timeout:
            out = _run(["docker", "inspect", "--format", "{{json .State}}", cid], env=self.env)
            state = json.loads(out.stdout) if out.returncode == 0 else {}
            if state.get("Health", {}).get("Status") == "healthy":
                self.timings[name] = time.monotonic() - start
                return
            assert state.get("Status") in ("created", "running"), f"container is {state.get('Status')}:\n{self.logs()}"
            time.sleep(1)
        pytest.fail(f"not healthy within {timeout:.0f} s: {json.dumps(state.get('Health'))[-1500:]}\n{self.logs()}")

    def down_volumes(self) -> None:
        """``down -v`` until no container or volume of the project is left (or DOWN_WITHIN_S passes)."""
        deadline = time.monotonic() + DOWN_WITHIN_S
        label = f"label=com.docker.compose.project={self.project}"
        while True:
            try:  # removing a container can take minutes on vfs; a second down waits for it
                left_s = max(10.0, deadline - time.monotonic())
                self.compose("down", "-v", "--remove-orphans", "--timeout", "20", timeout=left_s, check=False)
            except subprocess.TimeoutExpired:
                pass
            containers = _run(["docker", "ps", "-aq", "--filter", label], env=self.env)
            volumes = _run(["docker", "volume", "ls", "-q", "--filter", label], env=self.env)
            left = containers.stdout.split() + volumes.stdout.split()
            if containers.returncode == volumes.returncode == 0 and not left:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"left behind: {left}; remove with: docker compose -p {self.project} down -v")
            time.sleep(5)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kwargs)

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=self.auth, timeout=60)

    def embedded_documents(self) -> float:
        """``near_embedded_texts_total{kind="document"}``: texts the model ran on since the process started."""
        metrics = self.get("/metrics", headers=self.auth)
        assert metrics.status_code == 200, metrics.text
        match = re.search(r'^near_embedded_texts_total\{kind="document"\} (\S+)$', metrics.text, re.M)
        return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("compose")
    env_file = tmp / "empty.env"
    env_file.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(HOST_ONLY)}
    port, key = _free_port(), secrets.token_hex(16)
    env.update({"NEAR_API_KEY": key, "PUBLISH_PORT": str(port), "_ENV_FILE": str(env_file)})
    stack = Stack(project=f"near-select-test-{os.getpid()}", env=env, port=port, api_key=key)
    try:
        stack.timed("build", "build", timeout=1500)
        stack.timed("up", "up", "-d", timeout=300)
        stack.wait_healthy("healthy")
        yield stack
    finally:
        print(f"\ncompose stack timings (s): {json.dumps({k: round(v, 1) for k, v in stack.timings.items()})}")
        stack.down_volumes()


def test_ready_needs_the_api_key(stack: Stack) -> None:
    assert stack.get("/health").status_code == 200  # liveness needs no key
    assert stack.get("/ready").status_code == 401
    assert stack.get("/ready", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ready = stack.get("/ready", headers=stack.auth)
    assert ready.status_code == 200, ready.text


def test_container_environment_is_the_modelled_one(stack: Stack) -> None:
    # What PID 1 really got, against composefile.py's model (image ENV, then compose's environment,
    # bare names unset on the host removing the image's value). The image's NEAR_DEVICE=cpu survives.
    environ = stack.compose("exec", "-T", "near-select", "cat", "/proc/1/environ").stdout
    real = dict(item.split("=", 1) for item in environ.split("\0") if "=" in item)
    host = {"NEAR_API_KEY": stack.api_key}
    service = interpolate(load_merged(COMPOSE, COMPOSE_CPU), host)["services"]["near-select"]
    model = effective_env(dockerfile_env(DOCKERFILE_CPU), service, host)
    assert {k: v for k, v in real.items() if k.startswith("NEAR_")} == {
        k: v for k, v in model.items() if k.startswith("NEAR_")
    }
    assert real["NEAR_DEVICE"] == "cpu"
    info = stack.get("/info", headers=stack.auth).json()
    assert info["device"] == "cpu" and info["backend"] == "sentence-transformers"
    assert info["redis"] == "ok"


def test_runs_as_non_root_and_writes_its_cache(stack: Stack) -> None:
    script = "id -u; find /cache -type f | wc -l; find /cache /models/hf ! -user 10001 | wc -l"
    uid, files, foreign = stack.compose("exec", "-T", "near-select", "sh", "-c", script).stdout.split()
    assert uid == "10001"
    assert int(files) > 0, "the embedding cache volume is empty"
    assert foreign == "0", "files in the volumes not owned by the service user"


def test_select_matches_offline_cli(stack: Stack, tmp_path: Path) -> None:
    from near_service.core.records import load_texts

    queries = load_texts(DEMO / "queries.jsonl", "default", what="query")
    online = stack.post("/select", {"queries": queries, "max_k": MAX_K})
    assert online.status_code == 200, online.text + stack.logs()

    exe = Path(sys.executable).parent / "near-select"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEAR_")}
    env.update({"NEAR_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "NEAR_DEVICE": "cpu"})
    cmd = [
        str(exe),
        "offline",
        "--candidates",
        str(DEMO / "candidates.jsonl"),
        "--queries",
        str(DEMO / "queries.jsonl"),
        "--max-k",
        str(MAX_K),
        "--out-dir",
        str(tmp_path / "out"),
        "--quiet",
    ]
    offline = _run(cmd, timeout=600, env=env)
    assert offline.returncode == 0, offline.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    info = stack.get("/info", headers=stack.auth).json()
    assert (manifest["model"], manifest["dtype"]) == (info["model"], info["dtype"]), "not the same settings"
    top = np.load(tmp_path / "out" / "top_indices.npy")
    assert online.json()["indices"] == top.tolist()


def test_restart_embeds_nothing(stack: Stack) -> None:
    assert stack.embedded_documents() > 0  # the first start embedded the pool
    stack.timed("restart", "restart", "near-select", timeout=180)
    stack.wait_healthy("healthy_after_restart")
    assert stack.get("/ready", headers=stack.auth).status_code == 200
    assert stack.embedded_documents() == 0, "the restart re-embedded pool texts"


def test_ledger_survives_down_and_up(stack: Stack) -> None:
    body = {
        "queries": ["How many pencils are in 6 packs of 10?"],
        "max_k": MAX_K,
        "budget": 4,
        "run_id": "compose-test",
        "round": 1,
    }
    first = stack.post("/select", body)
    assert first.status_code == 200, first.text + stack.logs()
    stored = stack.get("/runs/compose-test", headers=stack.auth)
    assert stored.status_code == 200, stored.text

    stack.timed("down", "down", "--timeout", "20", timeout=DOWN_WITHIN_S)  # volumes stay
    stack.timed("up_again", "up", "-d", timeout=300)
    stack.wait_healthy("healthy_after_down_up")
    assert stack.get("/runs/compose-test", headers=stack.auth).json() == stored.json()
    again = stack.post("/select", body)  # the stored round answers
    assert again.status_code == 200, again.text + stack.logs()
    assert first.json()["source"] == "computed" and again.json()["source"] == "stored"
    assert {**again.json(), "source": "computed"} == first.json()
    other = stack.post("/select", {**body, "queries": ["another question"]})
    assert other.status_code == 409, other.text  # the round is stored: other parameters are refused
    assert stack.embedded_documents() == 0, "the pool was re-embedded after down/up"
