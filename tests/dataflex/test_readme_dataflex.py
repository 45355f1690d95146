"""README.md's "Training with DataFlex" commands run as written, with real DataFlex, against a
service started the way ``make serve`` starts it (the demo pool, a real Redis) on the port the
README's files name (8000: ``examples/dataflex/components.yaml``).

Both bash blocks of that section run in a scratch folder that holds the repository's
``examples/``, ``Makefile`` and venvs (links), so their ``out/`` is the test's own and nothing
is left in the checkout.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import RedisServer, ServiceProcess

from .kit import DATAFLEX_VENV, ROOT, dataflex_updates, round_lines, run_env

pytestmark = [pytest.mark.dataflex, pytest.mark.slow]

README = ROOT / "README.md"
PORT = 8000  # what examples/dataflex/components.yaml and the README name


def dataflex_blocks() -> list[str]:
    """The bash blocks of the README's "Training with DataFlex" section, in order."""
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Training with DataFlex")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```bash\n(.*?)```", text[start:end], flags=re.S)


def test_the_section_has_both_ways() -> None:
    blocks = dataflex_blocks()
    assert len(blocks) == 2
    assert "python -m near_client.dataflex train examples/dataflex/near_service.yaml" in blocks[0]
    assert "near-select offline" in blocks[1] and "component_name=near" in blocks[1]


@pytest.fixture
def demo_service(dataflex_python: Path, redis_server: RedisServer, tmp_path: Path) -> Iterator[ServiceProcess]:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", PORT))
        except OSError:
            pytest.skip(f"port {PORT} is in use here, and the README's DataFlex files name it")
    svc = ServiceProcess(
        port=PORT,
        env={
            "NEAR_CANDIDATES": f'["{ROOT / "examples/demo/candidates.jsonl"}"]',
            "NEAR_REDIS_URL": redis_server.url,
            "NEAR_CACHE_DIR": str(tmp_path / "cache"),
        },
        log_path=tmp_path / "service.log",
    )
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


def run_block(block: str, cwd: Path, report: Callable[[str], None], name: str) -> str:
    env = run_env(cwd)
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    report(f"[dataflex] README {name}: {time.monotonic() - start:.1f} s (exit {proc.returncode})")
    log = proc.stdout + proc.stderr
    (cwd / f"{name}.log").write_text(log, encoding="utf-8")
    assert proc.returncode == 0, log[-6000:]
    return log


def test_readme_dataflex_commands_run_as_written(
    demo_service: ServiceProcess, tmp_path: Path, report: Callable[[str], None]
) -> None:
    work = tmp_path / "checkout"
    work.mkdir()
    for name in ("examples", "Makefile", ".venv", DATAFLEX_VENV.name):
        (work / name).symlink_to(ROOT / name)
    online, offline = dataflex_blocks()

    log = run_block(online, work, report, "near_service selector")
    rounds = round_lines(log)
    # the demo YAML: warmup 10, an update every 10 steps, 2 updates; budget = 1 x 1 x 10
    assert [(rank, rnd, n, distinct) for rank, rnd, _, n, distinct in rounds] == [(0, 0, 10, 10), (0, 1, 10, 10)]
    assert dataflex_updates(log) == [(10, 10), (20, 10)]

    log = run_block(offline, work, report, "offline + built-in near")
    assert (work / "out/dataflex/offline/top_indices.npy").is_file()
    assert "Col-wise selection reached num_samples=10" in log
    assert dataflex_updates(log) == [(10, 10), (20, 10)]
