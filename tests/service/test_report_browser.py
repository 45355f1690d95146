"""Reports in a real browser: headless Chromium (Debian's package) opens each report kind from disk
with networking disabled and takes a screenshot; no console errors, no request beyond the file
itself, a page that is not blank, the sections' headings in the DOM, and a pool row holding
``<script>`` shown as text, never run.

Chromium runs in its own network namespace where ``unshare --net`` works (root), else with a dead
proxy and host resolver; the page is also set offline through the DevTools protocol, which this
test speaks over ``--remote-debugging-pipe`` (no port, no extra package). Skipped with the reason
where Chromium is not installed (``make setup`` installs it, best effort).

The demo run's screenshot is ``docs/report.png`` in the README: ``UPDATE_REPORT_SCREENSHOT=1 pytest
tests/service/test_report_browser.py`` writes it again.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from near_service.cli.main import main
from near_service.report import build_pool_report, build_run_report, render_html
from tests.conftest import InProcessFactory, RedisServer
from tests.service.api_data import qa_records
from tests.service.test_report import XSS, make_pool, make_round

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; make setup tries it)"
)
RUN_HEADINGS = [
    "Rounds",
    "Overlap between rounds",
    "Sources",
    "Similarity to the queries",
    "Nearest examples",
    "Map of the pool",
]
POOL_HEADINGS = ["Pool", "Sources", "Text length", "Near-duplicates", "Map of the pool"]


def _netns_works() -> bool:
    try:
        return subprocess.run(["unshare", "--net", "--", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (fd 3 in, fd 4 out, NUL-framed)."""

    def __init__(self, exe: str, profile: Path) -> None:
        cmd = [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-pipe",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-default-browser-check",
            "--proxy-server=http://127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "about:blank",
        ]
        self.isolated = _netns_works()
        if self.isolated:
            cmd = ["unshare", "--net", "--", *cmd]
        r_cmd, w_cmd = os.pipe()
        r_out, w_out = os.pipe()

        def child() -> None:  # the pipe ends become fds 3 and 4 (moved above 10 first: no clobbering)
            hi_in, hi_out = fcntl.fcntl(r_cmd, fcntl.F_DUPFD, 10), fcntl.fcntl(w_out, fcntl.F_DUPFD, 10)
            os.dup2(hi_in, 3)
            os.dup2(hi_out, 4)

        self.proc = subprocess.Popen(
            cmd, pass_fds=(3, 4), preexec_fn=child, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        os.close(r_cmd)
        os.close(w_out)
        self.w, self.r = w_cmd, r_out
        self.buf = b""
        self.last_id = 0
        self.events: list[dict[str, Any]] = []

    def _read(self, timeout: float) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while b"\0" not in self.buf:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if select.select([self.r], [], [], left)[0]:
                chunk = os.read(self.r, 1 << 20)
                if not chunk:
                    raise EOFError("chromium closed its DevTools pipe")
                self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        out: dict[str, Any] = json.loads(msg)
        return out

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self.last_id += 1
        msg: dict[str, Any] = {"id": self.last_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        while True:
            got = self._read(60)
            if got.get("id") == self.last_id:
                if "error" in got:
                    raise RuntimeError(f"{method}: {got['error']}")
                result: dict[str, Any] = got.get("result", {})
                return result
            self.events.append(got)

    def wait_for(self, pred: Any, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not any(pred(e) for e in self.events):
            try:
                self.events.append(self._read(max(end - time.monotonic(), 0.001)))
            except TimeoutError:
                return False
        return True

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.proc.wait(timeout=20)
        except (OSError, RuntimeError, EOFError, TimeoutError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self.w)
            os.close(self.r)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Any:
    assert CHROMIUM is not None
    b = Chromium(CHROMIUM, tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def open_page(b: Chromium, html_file: Path, shot: Path) -> dict[str, Any]:
    """Open ``html_file`` in a fresh tab, offline; its console errors, requests, headings, screenshot."""
    b.events.clear()
    target = b.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    s = b.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Network", "Log"):
        b.send(f"{domain}.enable", session=s)
    offline = {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
    b.send("Network.emulateNetworkConditions", offline, session=s)
    b.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1300, "height": 1000, "deviceScaleFactor": 1, "mobile": False},
        session=s,
    )
    url = html_file.resolve().as_uri()
    b.send("Page.navigate", {"url": url}, session=s)

    def idle(e: dict[str, Any]) -> bool:  # bokeh logs this once every figure is drawn
        args = e.get("params", {}).get("args", [])
        return e.get("method") == "Runtime.consoleAPICalled" and any(
            "document idle" in str(a.get("value")) for a in args
        )

    rendered = b.wait_for(idle, 30)
    height = b.send("Page.getLayoutMetrics", session=s)["cssContentSize"]["height"]
    b.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1300, "height": int(min(height, 9000)), "deviceScaleFactor": 1, "mobile": False},
        session=s,
    )
    b.wait_for(lambda e: False, 1.0)  # let the resized figures repaint
    png = b.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=s)["data"]
    shot.write_bytes(base64.b64decode(png))
    probe = (
        "({h2: Array.from(document.querySelectorAll('h2')).map(e => e.textContent), "
        "pwned: typeof window.__pwned, text: document.body.innerText, docs: window.Bokeh ? Bokeh.documents.length : 0})"
    )
    page = b.send("Runtime.evaluate", {"expression": probe, "returnByValue": True}, session=s)["result"]["value"]
    errors = [e for e in b.events if e.get("method") == "Runtime.exceptionThrown"]
    errors += [
        e
        for e in b.events
        if e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert")
    ]
    errors += [e for e in b.events if e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"]
    requests = [e["params"]["request"]["url"] for e in b.events if e.get("method") == "Network.requestWillBeSent"]
    b.send("Target.closeTarget", {"targetId": target})
    return {"rendered": rendered, "errors": errors, "requests": requests, "url": url, **page}


def check_page(page: dict[str, Any], headings: list[str], shot: Path) -> None:
    from PIL import Image

    assert page["rendered"], "bokeh never reported its figures drawn"
    assert page["errors"] == [], page["errors"]
    outside = [u for u in page["requests"] if u != page["url"] and not u.startswith("data:")]
    assert outside == [], f"the page asked for {outside}"
    assert page["h2"] == headings
    assert page["docs"] == 1
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape[0] > 1000 and pixels.var() > 200, "the page looks blank"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("reports")
    pool = make_pool(n=400, d=16)
    rounds = [make_round(pool, r, list(range(r * 30, r * 30 + 40)), seed=r) for r in range(5)]
    rounds[0].indices[0, 0] = 7  # row 7 holds the <script> text: now in the first example's neighbours
    files = {
        "run": build_run_report("browser-run", rounds, pool),
        "pool": build_pool_report(pool),
        "gone": build_run_report("browser-run", rounds, None, pool_name="deleted"),
    }
    paths = {}
    for name, rep in files.items():
        paths[name] = out / f"{name}.html"
        paths[name].write_text(render_html(rep), encoding="utf-8")
    return paths


@pytest.mark.parametrize(("kind", "headings"), [("run", RUN_HEADINGS), ("pool", POOL_HEADINGS), ("gone", RUN_HEADINGS)])
def test_report_opens_offline(
    browser: Chromium, synthetic: dict[str, Path], kind: str, headings: list[str], tmp_path: Path
) -> None:
    shot = tmp_path / f"{kind}.png"
    page = open_page(browser, synthetic[kind], shot)
    check_page(page, headings, shot)
    assert page["pwned"] == "undefined"
    if kind == "gone":
        assert "is gone" in page["text"]
    elif kind == "run":
        assert XSS in page["text"]  # the whole row, shown as text


def test_demo_run_report(browser: Chromium, tmp_path: Path) -> None:
    """The README's screenshot: ``near-select offline --report`` on the demo pool, with sources."""
    demo = ROOT / "examples" / "demo"
    out = tmp_path / "demo"
    args = [
        "offline",
        "--candidates",
        str(demo / "candidates.jsonl"),
        "--queries",
        str(demo / "queries.jsonl"),
        "--max-k",
        "5",
        "--budget",
        "8",
        "--out-dir",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
        "--report",
    ]
    assert main(args) == 0
    shot = tmp_path / "report.png"
    check_page(open_page(browser, out / "report.html", shot), RUN_HEADINGS, shot)
    if os.environ.get("UPDATE_REPORT_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "report.png")


def test_reports_served_by_the_service_open_offline(
    browser: Chromium, inprocess: InProcessFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    """What ``GET /runs/{run_id}/report`` and ``GET /pools/{name}/report`` send, saved and opened."""
    records = qa_records(40)
    records[3]["question"] = XSS  # a pool row holding a script: shown as text, never run
    svc = inprocess(records, redis_url=redis_server.url)
    queries = [r["question"] for r in records[:3]]
    for r in (0, 1, 2):
        body = {"queries": queries, "max_k": 8, "budget": 6, "run_id": "served", "round": r, "exclude_previous": True}
        assert svc.client.post("/select", json=body).status_code == 200
    for kind, path, headings in (
        ("run", "/runs/served/report", RUN_HEADINGS),
        ("pool", "/pools/default/report", POOL_HEADINGS),
    ):
        answer = svc.client.get(path)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
        html = tmp_path / f"{kind}.html"
        html.write_bytes(answer.content)
        shot = tmp_path / f"{kind}.png"
        page = open_page(browser, html, shot)
        check_page(page, headings, shot)
        assert page["pwned"] == "undefined"
