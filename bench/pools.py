"""Benchmark of pools registered at run time; rewrites the ``bench:pools`` section of docs/benchmarks.md.

    .venv/bin/python bench/pools.py --rows 100000      # issue 17's size (hours on 2 shared cores)
    .venv/bin/python bench/pools.py --rows 4000        # what fits a short run; the doc says which

Real texts from ../shared/data (GSM8K train, the t0dev candidates, the DataFlex demo sets, rendered
with the default template; repeated with a row number when ``--rows`` asks for more rows than
there are), the packaged MiniLM on CPU, no Redis (so every ``/select`` embeds its 64 queries on the
model thread, the work that competes with the pool's embedding). One uvicorn process (fresh cache):

1. quiet: ``/select`` (64 GSM8K test questions, K=100) on a ready 1,000-row pool, sequential;
2. busy: the same loop while ``PUT /pools/big`` (``--rows`` rows) embeds; goal p99 <= 2x quiet p99;
3. registration throughput: ``PUT /pools/big2`` (other texts of the same lengths) with no load;

then a second process started with ``--rows`` rows as ``--candidates`` (fresh cache): the startup
path's throughput. Both throughputs come from the engine's own log line ("pool ... searchable: N rows
... in S s", the same code for both paths); goal registration >= 90% of startup.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from report import cpu_name, write_section

from service import free_port, stop, wait_ready

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
MARK = "bench:pools"
MAX_K = 100
QUIET_ROWS = 1000


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def real_texts() -> list[str]:
    from near_schema.templates import render_records

    records: list[dict[str, Any]] = read_jsonl(DATA / "gsm8k" / "train.jsonl")
    records += read_jsonl(DATA / "t0dev" / "candidates.jsonl")
    for name in ("alpaca_en_demo.json", "alpaca_zh_demo.json"):
        records += json.loads((DATA / "dataflex_demo" / name).read_text(encoding="utf-8"))
    records += read_jsonl(DATA / "dataflex_demo" / "c4_demo.jsonl")
    return render_records(records, "default")


def pool_of(texts: list[str], rows: int, tag: str) -> list[str]:
    """``rows`` texts: the real ones in a seeded order, each marked (so no two pools share vectors)."""
    order = np.random.default_rng(len(tag)).permutation(len(texts))
    return [f"[{tag} {i}] {texts[order[i % len(texts)]]}" for i in range(rows)]


def start(env: dict[str, str], log: Path, timeout: float = 7200) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "uvicorn", "near_service.server.app:create_app", "--factory"]
    proc = subprocess.Popen(
        [*cmd, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env={**os.environ, **env, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    wait_ready(proc, url, log, timeout, poll=0.1)
    return proc, url


def searchable_rate(log: Path, name: str) -> tuple[int, float]:
    """(rows, seconds) of the engine's "pool 'name' searchable: N rows (...) in S s" line."""
    pattern = re.compile(rf"pool '{re.escape(name)}' searchable: (\d+) rows \((\d+) embedded.*?\) in ([0-9.]+)s")
    found = pattern.findall(log.read_text(errors="replace"))
    if not found:
        raise RuntimeError(f"no 'searchable' line for pool {name!r} in {log}")
    rows, embedded, seconds = found[-1]
    assert int(embedded) == int(rows), f"pool {name}: {embedded} of {rows} rows embedded (a cache was warm?)"
    return int(rows), float(seconds)


def wait_searchable(url: str, name: str, timeout: float = 7200) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = httpx.get(f"{url}/pools/{name}", timeout=30).json()["state"]
        if state in ("stats", "ready"):
            return
        if state == "failed":
            raise RuntimeError(f"pool {name} failed")
        time.sleep(0.2)
    raise RuntimeError(f"pool {name} not searchable in {timeout}s")


def latencies(url: str, queries: list[str], stop_when: threading.Event | None, count: int) -> list[float]:
    """Sequential ``/select`` requests (``count`` of them, or until ``stop_when`` is set)."""
    body = json.dumps({"queries": queries, "max_k": MAX_K, "pool": "quiet"}).encode()
    out = []
    with httpx.Client(timeout=600) as http:
        while (stop_when is None and len(out) < count) or (stop_when is not None and not stop_when.is_set()):
            t = time.perf_counter()
            r = http.post(f"{url}/select", content=body, headers={"content-type": "application/json"})
            out.append(time.perf_counter() - t)
            if r.status_code != 200:
                raise RuntimeError(f"/select answered {r.status_code}: {r.text[:300]}")
    return out


def pct(xs: list[float], q: float) -> float:
    return 1000 * float(np.percentile(xs, q))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4000, help="rows of the pool registered under load")
    ap.add_argument("--quiet-rows", type=int, default=QUIET_ROWS, help="rows of the ready pool /select searches")
    ap.add_argument("--quiet-requests", type=int, default=40)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()
    texts = real_texts()
    queries = [r["question"] for r in read_jsonl(DATA / "gsm8k" / "test.jsonl")[:64]]
    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="near-bench-pools-"))
    base_env = {"NEAR_DENSITY_STATS": "off", "NEAR_LOG_LEVEL": "info", "NEAR_MAX_QUEUE": "1000"}

    quiet_file = work / "quiet.jsonl"
    quiet_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in pool_of(texts, args.quiet_rows, "quiet")))
    log1 = work / "service.log"
    env1 = {**base_env, "NEAR_CACHE_DIR": str(work / "cache1"), "NEAR_CANDIDATES": "[]"}
    proc, url = start(env1, log1)
    result: dict[str, Any] = {
        "rows": args.rows,
        "quiet_rows": args.quiet_rows,
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
    }
    try:
        info = httpx.get(f"{url}/info", timeout=30).json()
        result["model"], result["dtype"] = info.get("model"), info.get("dtype")
        quiet = pool_of(texts, args.quiet_rows, "quiet")
        r = httpx.put(f"{url}/pools/quiet", json={"texts": quiet}, timeout=600)
        assert r.status_code == 202, r.text
        wait_searchable(url, "quiet")
        latencies(url, queries, None, 3)  # warm-up
        quiet_lat = latencies(url, queries, None, args.quiet_requests)
        print(f"quiet: p50 {pct(quiet_lat, 50):.0f} ms, p99 {pct(quiet_lat, 99):.0f} ms", flush=True)

        done = threading.Event()
        busy_lat: list[float] = []
        runner = threading.Thread(target=lambda: busy_lat.extend(latencies(url, queries, done, 0)))
        r = httpx.put(f"{url}/pools/big", json={"texts": pool_of(texts, args.rows, "big")}, timeout=600)
        assert r.status_code == 202, r.text
        runner.start()
        wait_searchable(url, "big")
        done.set()
        runner.join()
        big_rows, big_s = searchable_rate(log1, "big")
        print(f"busy: p50 {pct(busy_lat, 50):.0f} ms, p99 {pct(busy_lat, 99):.0f} ms ({len(busy_lat)} requests)")
        print(f"registration under load: {big_rows / big_s:.1f} rows/s", flush=True)

        r = httpx.put(f"{url}/pools/big2", json={"texts": pool_of(texts, args.rows, "big2")}, timeout=600)
        assert r.status_code == 202, r.text
        wait_searchable(url, "big2")
        reg_rows, reg_s = searchable_rate(log1, "big2")
        print(f"registration, quiet: {reg_rows / reg_s:.1f} rows/s", flush=True)
    finally:
        stop(proc)

    start_file = work / "startup.jsonl"
    start_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in pool_of(texts, args.rows, "start")))
    log2 = work / "startup.log"
    env2 = {**base_env, "NEAR_CACHE_DIR": str(work / "cache2"), "NEAR_CANDIDATES": json.dumps([str(start_file)])}
    proc, url = start(env2, log2)
    stop(proc)
    st_rows, st_s = searchable_rate(log2, "default")
    print(f"startup path: {st_rows / st_s:.1f} rows/s", flush=True)
    load_end = os.getloadavg()

    quiet_p99, busy_p99 = pct(quiet_lat, 99), pct(busy_lat, 99)
    reg_rate, st_rate, busy_rate = reg_rows / reg_s, st_rows / st_s, big_rows / big_s
    result |= {
        "quiet_p50_ms": pct(quiet_lat, 50),
        "quiet_p99_ms": quiet_p99,
        "busy_p50_ms": pct(busy_lat, 50),
        "busy_p99_ms": busy_p99,
        "busy_requests": len(busy_lat),
        "p99_ratio": busy_p99 / quiet_p99,
        "register_rows_per_s": reg_rate,
        "register_under_load_rows_per_s": busy_rate,
        "startup_rows_per_s": st_rate,
        "throughput_ratio": reg_rate / st_rate,
        "load_avg_start": load_start,
        "load_avg_end": load_end,
    }
    print(json.dumps(result, indent=1))
    if not args.no_write:
        write_section(MARK, render(result))
    return 0


def render(r: dict[str, Any]) -> str:
    la0, la1 = (", ".join(f"{x:.1f}" for x in r[k]) for k in ("load_avg_start", "load_avg_end"))
    ok_lat = "met" if r["p99_ratio"] <= 2 else "**missed**"
    ok_tp = "met" if r["throughput_ratio"] >= 0.9 else "**missed**"
    scale = (
        ""
        if r["rows"] >= 100_000
        else (
            f" Measured with a {r['rows']:,}-row pool, not the issue's 100k (2 shared cores): embedding is "
            f"linear in rows at a fixed rate, so 100k rows would take about "
            f"{100_000 / r['register_rows_per_s'] / 60:.0f} min to register at this rate; the latency ratio "
            "is a property of the model thread's priority order (a query waits for at most one pool batch), "
            "not of the pool's size."
        )
    )
    return f"""Pools registered at run time, `bench/pools.py` ({time.strftime("%Y-%m-%d")}): {r["cpu"]}, \
{r["cores"]} cores shared with other work (load average {la0} at the start, {la1} at the end), model \
{r["model"]} on CPU ({r["dtype"]}), no Redis (each `/select` embeds its 64 queries on the model thread), \
density statistics off. `/select` = 64 GSM8K test questions, K={MAX_K}, on a ready {r["quiet_rows"]:,}-row pool, \
one client, sequential. Pool texts: GSM8K train, t0dev candidates and the DataFlex demo sets (default \
template), each row marked so no pool shares vectors with another.{scale}

| measure | value | goal |
|---|---|---|
| `/select` quiet: p50 / p99 | {r["quiet_p50_ms"]:.0f} / {r["quiet_p99_ms"]:.0f} ms | |
| `/select` while a {r["rows"]:,}-row pool registers: p50 / p99 ({r["busy_requests"]} requests) | \
{r["busy_p50_ms"]:.0f} / {r["busy_p99_ms"]:.0f} ms | |
| p99 busy / quiet | {r["p99_ratio"]:.2f}x | <= 2x: {ok_lat} |
| registration (`PUT /pools`, no other load) | {r["register_rows_per_s"]:.1f} rows/s | |
| registration while `/select` runs | {r["register_under_load_rows_per_s"]:.1f} rows/s | |
| startup path (`--candidates`, fresh cache) | {r["startup_rows_per_s"]:.1f} rows/s | |
| registration / startup | {r["throughput_ratio"]:.2f} | >= 0.90: {ok_tp} |
"""


if __name__ == "__main__":
    sys.exit(main())
