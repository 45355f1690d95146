"""docker-compose.yml and its CPU override, checked without a Docker engine.

The Compose specification's JSON schema comes vendored in check-jsonschema (no network); merging and
interpolation follow compose's rules for what our files use (see composefile.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from near_service.core.settings import DEFAULT_MODEL, Settings

from .composefile import (
    COMPOSE,
    COMPOSE_CPU,
    DOCKERFILE_CPU,
    DOCKERFILE_GPU,
    ROOT,
    MissingVariable,
    all_variables,
    container_env,
    dockerfile_env,
    dockerfile_instructions,
    effective_env,
    interpolate,
    load,
    load_merged,
)

FIELDS = {f"NEAR_{name.upper()}" for name in Settings.model_fields}
HOST_ENV = {"NEAR_API_KEY": "test-key"}


def _check_jsonschema(*paths: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    return subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", *map(str, paths)], capture_output=True, text=True, timeout=120
    )


def _gpu() -> dict[str, Any]:
    return load(COMPOSE)


def _cpu() -> dict[str, Any]:
    return load_merged(COMPOSE, COMPOSE_CPU)


def test_compose_files_match_the_compose_schema(tmp_path: Path) -> None:
    # As written (the GPU file), merged with the CPU override, and both after interpolation.
    instances = {
        "cpu-merged.json": _cpu(),
        "gpu-interpolated.json": interpolate(_gpu(), HOST_ENV),
        "cpu-interpolated.json": interpolate(_cpu(), HOST_ENV),
    }
    for name, config in instances.items():
        (tmp_path / name).write_text(json.dumps(config))
    result = _check_jsonschema(COMPOSE, *(tmp_path / name for name in instances))
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_file(tmp_path: Path) -> None:
    # Proves the check above can fail: a misspelt key under the GPU reservation.
    config = _gpu()
    config["services"]["near-select"]["deploy"]["resources"]["reservations"]["device"] = [{"driver": "nvidia"}]
    (tmp_path / "bad.json").write_text(json.dumps(config))
    assert _check_jsonschema(tmp_path / "bad.json").returncode != 0


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_every_setting_is_set_or_passed_through(variant: str) -> None:
    config = _gpu() if variant == "gpu" else _cpu()
    env = config["services"]["near-select"]["environment"]
    assert set(env) == FIELDS, f"missing: {FIELDS - set(env)}, unknown: {set(env) - FIELDS}"


def test_near_variables_in_compose_files_are_settings() -> None:
    for path in (COMPOSE, COMPOSE_CPU):
        names = {v for v in all_variables(load(path)) if v.startswith("NEAR_")}
        assert names <= FIELDS, f"{path.name}: {names - FIELDS} are not settings"


@pytest.mark.parametrize(("variant", "dockerfile"), [("gpu", DOCKERFILE_GPU), ("cpu", DOCKERFILE_CPU)])
def test_container_environment_is_valid_settings(
    variant: str, dockerfile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = interpolate(_gpu() if variant == "gpu" else _cpu(), HOST_ENV)
    service = config["services"]["near-select"]
    assert service["build"]["dockerfile"] == str(dockerfile.relative_to(ROOT))
    env = effective_env(dockerfile_env(dockerfile), service, HOST_ENV)
    for key in list(Settings.model_fields):
        monkeypatch.delenv(f"NEAR_{key.upper()}", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # type: ignore[call-arg]  # fields come from the environment
    assert settings.host == "0.0.0.0"
    assert settings.port == 8000
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.candidates == [Path("/data/candidates.jsonl")]
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "test-key"
    assert settings.model == ("Qwen/Qwen3-Embedding-0.6B" if variant == "gpu" else DEFAULT_MODEL)
    # The volumes the container writes to are where the settings point.
    targets = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
    assert targets[str(settings.cache_dir)] == "near-cache"
    assert targets[env["HF_HOME"]] == "hf-cache"


@pytest.mark.parametrize(("variant", "dockerfile"), [("gpu", DOCKERFILE_GPU), ("cpu", DOCKERFILE_CPU)])
def test_image_defaults_survive_compose(variant: str, dockerfile: Path) -> None:
    # A passed-through name unset on the host removes the image's value: every NEAR_* default an image
    # sets must reach the container when the host sets nothing (the CPU image's NEAR_DEVICE=cpu).
    service = interpolate(_gpu() if variant == "gpu" else _cpu(), HOST_ENV)["services"]["near-select"]
    image = dockerfile_env(dockerfile)
    env = effective_env(image, service, HOST_ENV)
    assert {k: v for k, v in image.items() if k not in env} == {}
    if variant == "cpu":
        assert env["NEAR_DEVICE"] == "cpu"
        host = {**HOST_ENV, "NEAR_DEVICE": "auto"}  # the shell's value still wins
        assert effective_env(image, interpolate(_cpu(), host)["services"]["near-select"], host)["NEAR_DEVICE"] == "auto"


def test_bare_names_remove_image_values() -> None:
    # The engine's rule that effective_env models (and tests/compose checks on a real container).
    service = {"environment": {"A": None, "B": None, "C": "set"}}
    image = {"A": "image", "B": "image", "C": "image", "D": "image"}
    assert effective_env(image, service, {"B": "host"}) == {"B": "host", "C": "set", "D": "image"}


def test_settings_pass_through_from_the_host() -> None:
    host = {
        **HOST_ENV,
        "NEAR_MAX_LENGTH": "256",
        "NEAR_INDEX": "hnsw",
        "NEAR_MODEL": "/models/local/e5",
        "POOL_FILE": "pool.parquet",
    }
    service = interpolate(_cpu(), host)["services"]["near-select"]
    env = container_env(service, host)
    assert env["NEAR_MAX_LENGTH"] == "256"
    assert env["NEAR_INDEX"] == "hnsw"
    assert env["NEAR_MODEL"] == "/models/local/e5"
    assert json.loads(env["NEAR_CANDIDATES"]) == ["/data/pool.parquet"]
    # Unset on the host: unset in the container, so the service's own default applies.
    assert "NEAR_DTYPE" not in env and "NEAR_LOG_LEVEL" not in env


@pytest.mark.parametrize("value", [None, ""])
def test_api_key_is_required(value: str | None) -> None:
    host = {} if value is None else {"NEAR_API_KEY": value}
    for config in (_gpu(), _cpu()):
        with pytest.raises(MissingVariable, match="NEAR_API_KEY"):
            interpolate(config, host)


def test_gpu_reservation_and_cpu_override() -> None:
    gpu = _gpu()["services"]["near-select"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["image"] == "near-select:gpu"
    cpu = _cpu()["services"]["near-select"]
    assert "deploy" not in cpu, "the CPU override must drop the GPU reservation"
    assert cpu["image"] == "near-select:cpu"
    assert cpu["build"] == {
        "context": ".",
        "dockerfile": "docker/Dockerfile.cpu",
        "args": {"TORCH_INDEX_URL": "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"},
    }
    # Everything else is shared.
    for key in ("ports", "volumes", "healthcheck", "depends_on", "restart"):
        assert cpu[key] == gpu[key], key
    assert _cpu()["services"]["redis"] == _gpu()["services"]["redis"]


def test_torch_index_is_a_build_argument() -> None:
    # The compose default is the Dockerfile's ARG default; a mirror set in the shell reaches the build.
    arg = next(rest for word, rest in dockerfile_instructions(DOCKERFILE_CPU) if word == "ARG")
    name, _, default = arg.partition("=")
    build = interpolate(_cpu(), HOST_ENV)["services"]["near-select"]["build"]
    assert build["args"] == {name: default}
    mirror = interpolate(_cpu(), {**HOST_ENV, name: "https://mirror.example/whl/cpu"})
    assert mirror["services"]["near-select"]["build"]["args"][name] == "https://mirror.example/whl/cpu"


def _healthcheck_flags(dockerfile: Path) -> dict[str, str]:
    rest = next(rest for word, rest in dockerfile_instructions(dockerfile) if word == "HEALTHCHECK")
    flags = rest.split("CMD", 1)[0].split()
    return dict(f.removeprefix("--").replace("-", "_").split("=", 1) for f in flags)


@pytest.mark.parametrize("dockerfile", [DOCKERFILE_GPU, DOCKERFILE_CPU], ids=lambda p: p.name)
def test_healthcheck_timings_agree(dockerfile: Path) -> None:
    # `docker run` (the image's HEALTHCHECK) and compose check alike; a short interval so that
    # healthy follows ready closely (start_interval needs Docker 25+, which we do not require).
    compose = _gpu()["services"]["near-select"]["healthcheck"]
    flags = _healthcheck_flags(dockerfile)
    assert flags == {k: str(compose[k]) for k in ("interval", "timeout", "start_period", "retries")}
    assert "start_interval" not in compose
    assert compose["interval"] == "5s"


def test_service_health_and_dependencies() -> None:
    config = _gpu()
    svc, redis = config["services"]["near-select"], config["services"]["redis"]
    assert svc["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert svc["healthcheck"]["test"] == ["CMD", "python", "/opt/near/healthcheck.py"]
    assert redis["image"] == "redis:7-alpine"
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "redis-data:/data" in redis["volumes"]
    named = {
        v.split(":")[0] for s in config["services"].values() for v in s["volumes"] if not v.startswith((".", "/", "$"))
    }
    assert named == set(config["volumes"]) == {"hf-cache", "near-cache", "redis-data"}


def test_default_pool_mount_exists() -> None:
    service = interpolate(_gpu(), HOST_ENV)["services"]["near-select"]
    pool = next(v for v in service["volumes"] if v.split(":")[1] == "/data")
    source, _, mode = pool.split(":")
    assert mode == "ro"
    assert (ROOT / source / "candidates.jsonl").is_file()
