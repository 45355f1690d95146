"""Every setting is documented in README.md, and every NEAR_* name we ship is a setting."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from near_service.core.settings import Settings

from .composefile import ROOT

FIELDS = {f"NEAR_{name.upper()}" for name in Settings.model_fields}
SCRIPT = ROOT / "scripts" / "settings_table.py"


def _settings_table() -> ModuleType:
    spec = importlib.util.spec_from_file_location("settings_table", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_table_is_generated_from_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    assert _settings_table().render_readme(readme) == readme, (
        "README.md's configuration table is stale: run python scripts/settings_table.py --write"
    )


def test_table_has_one_row_per_setting_with_its_default() -> None:
    table = _settings_table().settings_table()
    rows = [line for line in table.splitlines() if line.startswith("| `NEAR_")]
    assert [r.split("`")[1] for r in rows] == [f"NEAR_{n.upper()}" for n in Settings.model_fields]
    port = next(r for r in rows if r.startswith("| `NEAR_PORT`"))
    assert f"`{Settings.model_fields['port'].default}`" in port


def test_check_mode_passes() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "name",
    [
        "README.md",
        "docker-compose.yml",
        "docker-compose.cpu.yml",
        "docker/Dockerfile",
        "docker/Dockerfile.cpu",
        "Makefile",
    ],
)
def test_every_near_name_is_a_setting(name: str) -> None:
    path: Path = ROOT / name
    names = set(re.findall(r"\bNEAR_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    assert names <= FIELDS, f"{name} mentions {sorted(names - FIELDS)}, which are not settings"
