"""Just enough of Docker Compose to check our compose files without a Docker engine.

- ``load``: YAML with compose's ``!reset`` and ``!override`` tags.
- ``merge``: ``docker compose -f a.yml -f b.yml`` for what our files use: mappings merge key by key,
  scalars are replaced, ``!reset`` removes, ``!override`` replaces. Sequence merging (append, or by
  unique key for ports/volumes) is not modelled: an override that touches a sequence is refused.
- ``interpolate``: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?err}``,
  ``${VAR?err}``, ``${VAR:+alt}``, ``${VAR+alt}``, applied to values (not keys), as compose does.
- ``container_env``: the environment compose sets for a service (a key without a value passes the
  host's value through, or is sent to the engine as a bare name).
- ``effective_env``: what the container's process sees: the image's ENV, then compose's environment,
  where a bare name (passed through, unset on the host) *removes* the image's value, as the engine does.
- Dockerfile helpers: ``dockerfile_instructions`` and ``dockerfile_env``.
"""

from __future__ import annotations

import copy
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
DOCKERFILE_GPU = ROOT / "docker" / "Dockerfile"
DOCKERFILE_CPU = ROOT / "docker" / "Dockerfile.cpu"


class _Reset:
    def __repr__(self) -> str:
        return "!reset"


RESET = _Reset()


@dataclass
class Override:
    value: Any


class _Loader(yaml.SafeLoader):
    pass


def _construct_any(loader: Any, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_Loader.add_constructor("!reset", lambda loader, node: RESET)
_Loader.add_constructor("!override", lambda loader, node: Override(_construct_any(loader, node)))


def load(path: Path) -> dict[str, Any]:
    data = yaml.load(path.read_text(), Loader=_Loader)
    assert isinstance(data, dict), f"{path}: not a mapping"
    return data


def merge(base: dict[str, Any], override: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """``override`` merged into a copy of ``base``."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        at = f"{where}.{key}" if where else str(key)
        if value is RESET:
            out.pop(key, None)
        elif isinstance(value, Override):
            out[key] = copy.deepcopy(value.value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value, at)
        elif isinstance(value, list) and key in out:
            raise NotImplementedError(f"{at}: sequence merging is not modelled; use !override or a mapping")
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_merged(*paths: Path) -> dict[str, Any]:
    config = load(paths[0])
    for path in paths[1:]:
        config = merge(config, load(path))
    return config


_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(ValueError):
    pass


def variables(text: str) -> set[str]:
    """Names a string interpolates."""
    return {m["braced"] or m["bare"] for m in _VAR.finditer(text) if not m["escaped"]}


def _interpolate_str(text: str, env: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["bare"]
        op, arg = m["op"], m["arg"] or ""
        value = env.get(name)
        unset_or_empty = value is None or value == ""
        missing = unset_or_empty if op and op.startswith(":") else value is None
        if op in (":-", "-"):
            return arg if missing else str(value)
        if op in (":?", "?"):
            if missing:
                raise MissingVariable(f"{name}: {arg}")
            return str(value)
        if op in (":+", "+"):
            return "" if missing else arg
        return "" if value is None else value

    return _VAR.sub(sub, text)


def interpolate(obj: Any, env: Mapping[str, str]) -> Any:
    if isinstance(obj, str):
        return _interpolate_str(obj, env)
    if isinstance(obj, dict):
        return {k: interpolate(v, env) for k, v in obj.items()}
    if isinstance(obj, list):
        return [interpolate(v, env) for v in obj]
    return obj


def all_variables(obj: Any) -> set[str]:
    if isinstance(obj, str):
        return variables(obj)
    if isinstance(obj, dict):
        return set().union(*(all_variables(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(all_variables(v) for v in obj)) if obj else set()
    return set()


def container_env(service: Mapping[str, Any], host_env: Mapping[str, str]) -> dict[str, str]:
    """The service's (already interpolated) environment inside the container."""
    environment = service.get("environment", {})
    assert isinstance(environment, dict), "keep environment as a mapping"
    out: dict[str, str] = {}
    for key, value in environment.items():
        if value is None:
            if key in host_env:
                out[key] = host_env[key]
        else:
            out[key] = str(value)
    return out


def effective_env(
    image_env: Mapping[str, str], service: Mapping[str, Any], host_env: Mapping[str, str]
) -> dict[str, str]:
    """The container's environment: ``image_env`` overlaid by the service's (already interpolated) one.

    A name listed without a value and unset on the host reaches the engine as a bare ``NAME``, which
    unsets it in the container: an image default for that name is lost (checked against a real
    container in tests/compose).
    """
    out = dict(image_env)
    for key, value in service.get("environment", {}).items():
        if value is None and key not in host_env:
            out.pop(key, None)
    out.update(container_env(service, host_env))
    return out


# --- Dockerfiles -----------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def dockerfile_env(path: Path) -> dict[str, str]:
    """Every ``ENV key=value`` the image sets (later ones win)."""
    env: dict[str, str] = {}
    for word, rest in dockerfile_instructions(path):
        if word == "ENV":
            for item in shlex.split(rest):
                key, sep, value = item.partition("=")
                assert sep, f"{path}: use ENV key=value, not the legacy form ({item})"
                env[key] = value
    return env
