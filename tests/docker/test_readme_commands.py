"""Every command in README.md's "HTTP API" block runs as written against a live service.

The service is started the way ``make serve`` starts it (``near-select serve --candidates
examples/demo/candidates.jsonl --redis-url ...``, with a real ``redis-server`` on a free port and a
private cache folder), plus an API key so that every command that needs ``$AUTH`` must send it. Each
command runs in ``bash`` exactly as the README writes it, with the README's ``URL=...`` line pointed
at this test's port. ``curl`` is a shell function there that adds one ``-w`` (written to stderr) so
the test sees each answer's status and content type; what the command prints is untouched.

A command's expected status is the number its comment starts with (``# 404 pool_not_found ...``),
else any 2xx; every answer but ``/metrics`` (Prometheus text) must be JSON.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import RedisServer, free_port

from .composefile import ROOT

README = ROOT / "README.md"
DEMO_POOL = ROOT / "examples" / "demo" / "candidates.jsonl"
README_URL = "http://localhost:8000"
API_KEY = "readme-commands-key"
MARK = "__readme_status__"
# Wraps curl: one line per answer on stderr (%{stderr} needs curl >= 7.63); stdout is left as is.
CURL_SHIM = f"curl() {{ command curl -w '%{{stderr}}{MARK} %{{http_code}} %{{content_type}}\\n' \"$@\"; }}\n"
COMMAND_TIMEOUT = 120.0


@dataclass(frozen=True)
class Command:
    text: str  # as written, possibly over several lines
    comment: str  # the trailing comment of its last line ("" if none)

    @property
    def is_curl(self) -> bool:
        return self.text.startswith("curl ")

    @property
    def expected_status(self) -> int | None:
        """The status its comment names first (``# 404 ...``), or None (any 2xx)."""
        m = re.match(r"(\d{3})\b", self.comment)
        return int(m.group(1)) if m else None

    @property
    def expects_json(self) -> bool:
        return not re.search(r"/metrics\b", self.text)


def http_api_block(readme: str) -> str:
    """The first ```bash block of the "## HTTP API" section."""
    section = readme.split("\n## HTTP API\n", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"^```bash\n(.*?)^```", section, re.S | re.M)
    assert m, 'README.md: no ```bash block under "## HTTP API"'
    return m.group(1)


def _complete(text: str) -> bool:
    if text.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(text, comments=True)
    except ValueError:  # an open quote: the command goes on on the next line
        return False
    return True


def _comment(last_line: str) -> str:
    """The comment ending ``last_line`` (after ``#`` outside quotes), or ""."""
    for m in re.finditer(r"\s#\s?", last_line):
        head = last_line[: m.start()]
        try:
            if shlex.split(head) == shlex.split(last_line, comments=True):
                return last_line[m.end() :].strip()
        except ValueError:
            continue
    return ""


def commands(block: str) -> list[Command]:
    """The shell commands of ``block``, in order (a command spans lines while a quote is open)."""
    out: list[Command] = []
    pending: list[str] = []
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending.append(line)
        text = "\n".join(pending)
        if _complete(text):
            out.append(Command(text=text, comment=_comment(pending[-1])))
            pending = []
    assert not pending, f"README.md: an unfinished command in the HTTP API block:\n{chr(10).join(pending)}"
    return out


BLOCK_COMMANDS = commands(http_api_block(README.read_text(encoding="utf-8")))


def test_block_parses_into_commands() -> None:
    curls = [c for c in BLOCK_COMMANDS if c.is_curl]
    assert len(curls) >= 15, [c.text for c in BLOCK_COMMANDS]
    assert BLOCK_COMMANDS[0].text.startswith("URL=http://localhost:8000;"), BLOCK_COMMANDS[0].text
    assert Command("curl -s $URL/x  # 404 gone", "404 gone").expected_status == 404
    assert _comment("""grep -q '"a # b"'; do sleep 1; done   # wait""") == "wait"
    assert _comment("curl -s $URL/health") == ""


def test_ledger_example_starts_at_round_0() -> None:
    """A new user's first ``exclude_previous`` round must find the earlier rounds stored (no 409)."""
    rounds: dict[str, list[tuple[int, bool]]] = {}
    for c in BLOCK_COMMANDS:
        m = re.search(r"-d '(\{.*\})'", c.text, re.S)
        if m and "run_id" in m.group(1):
            body = json.loads(m.group(1))
            rounds.setdefault(body["run_id"], []).append((body["round"], bool(body.get("exclude_previous"))))
    assert rounds, "no ledger example in the HTTP API block"
    for run_id, seen in rounds.items():
        stored: set[int] = set()
        for n, exclude in seen:
            if exclude:
                assert set(range(n)) <= stored, f"run {run_id}: round {n} excludes rounds not stored before it"
            stored.add(n)


def test_block_shows_the_pools_api() -> None:
    text = "\n".join(c.text for c in BLOCK_COMMANDS)
    for needle in [
        "-X PUT",
        "Content-Type: application/x-ndjson",
        "--data-binary @",
        "$URL/pools ",
        '"pool": ',
        "-X DELETE",
    ]:
        assert needle in text, f"the HTTP API block has no {needle!r} example"


@dataclass
class Served:
    url: str
    log: Path


@pytest.fixture(scope="module")
def make_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``near-select serve`` on the demo pool with a real Redis, as ``make serve`` runs it."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (make setup installs it: apt-get install curl)")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make setup installs it)")
    tmp = tmp_path_factory.mktemp("readme")
    redis = RedisServer(port=free_port(), dir=tmp)
    redis.start()
    port = free_port()
    exe = Path(sys.executable).with_name("near-select")
    argv = [str(exe), "serve", "--candidates", str(DEMO_POOL), "--redis-url", redis.url, "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEAR_")}
    env |= {
        "NEAR_API_KEY": API_KEY,
        "NEAR_CACHE_DIR": str(tmp / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    log = tmp / "serve.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"near-select serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/ready", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=2).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"service not ready in 180 s:\n{log.read_text()[-4000:]}"
            time.sleep(0.2)
        yield Served(url=url, log=log)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        redis.stop()


def _run(command: Command, served: Served, cwd: Path) -> tuple[list[str], str]:
    """Run one command as written; returns the problems found and what it printed."""
    script = command.text.replace(README_URL, served.url)
    prelude = [c.text.replace(README_URL, served.url) for c in BLOCK_COMMANDS if re.match(r"^[A-Z_]+=", c.text)]
    env = {**os.environ, "NEAR_API_KEY": API_KEY}
    try:
        done = subprocess.run(
            ["bash", "-c", CURL_SHIM + "\n".join(prelude) + "\n" + script],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return [f"did not finish in {COMMAND_TIMEOUT:.0f} s"], ""
    problems = [] if done.returncode == 0 else [f"exit status {done.returncode}: {done.stderr[-500:]}"]
    if not command.is_curl:
        return problems, done.stdout
    answers = [line.split(" ", 2)[1:] for line in done.stderr.splitlines() if line.startswith(MARK)]
    if len(answers) != 1:
        return [*problems, f"expected one HTTP answer, got {len(answers)}: {done.stderr[-500:]}"], done.stdout
    status, content_type = int(answers[0][0]), (answers[0][1:] or [""])[0]
    want = command.expected_status
    if (want is None and not 200 <= status < 300) or (want is not None and status != want):
        problems.append(f"status {status}, expected {want or '2xx'}: {done.stdout[:500]}")
    if command.expects_json:
        if not content_type.startswith("application/json"):
            problems.append(f"content type {content_type!r}, expected JSON")
        try:
            json.loads(done.stdout)
        except ValueError as exc:
            problems.append(f"not JSON ({exc}): {done.stdout[:500]!r}")
    return problems, done.stdout


def test_every_command_runs_as_written(make_serve: Served, tmp_path: Path) -> None:
    """In order, as a new user pastes them: each gets the status its comment names, or a 2xx."""
    failures = []
    for command in BLOCK_COMMANDS:
        problems, _ = _run(command, make_serve, tmp_path)
        if problems:
            failures.append(f"$ {command.text}\n  " + "\n  ".join(problems))
    assert not failures, "README HTTP API commands that fail:\n\n" + "\n\n".join(failures)
