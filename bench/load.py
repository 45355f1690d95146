"""Load and fault run against a real service on loopback; prints what held and what was lost.

    .venv/bin/python bench/load.py                 # starts `near-select serve` (real MiniLM), ~3 min
    .venv/bin/python bench/load.py --quick         # smaller phases (a smoke run, ~1 min)
    .venv/bin/python bench/load.py --json out.json # also write the results as JSON

It starts its own service (a generated pool, no Redis, empty caches) and runs *phases* in order;
each is a function ``(ctx) -> dict`` in ``PHASES``, so more (e.g. "Redis hung mid-run") slot in by
adding one function and one name. Innocent requests are checked for 200 and a full answer; bad
requests (a lone surrogate, loose types, queries x max_k over the cap, an oversized body, bytes that
are not JSON, made-up methods) are mixed in and must get a 4xx without touching anyone else.
Printed per phase: requests, 5xx (target 0), innocent failures (target 0), 429s retried (as
near_client does: back-pressure, not a failure), latency, server RSS.
The rows of docs/reliability.md come from this output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

TOPICS = ["apples", "trains", "rectangles", "savings", "marbles", "recipes", "clocks", "bicycles"]
BAD: list[tuple[str, dict[str, Any]]] = [  # (name, httpx request kwargs) that must get a 4xx
    ("lone surrogate", {"content": b'{"queries":["\\ud800"],"max_k":1}'}),
    ("max_k as a string", {"json": {"queries": ["x"], "max_k": "5"}}),
    ("queries x max_k over the cap", {"json": {"queries": ["same"] * 4096, "max_k": 500}}),
    ("not JSON", {"content": b"\xff\xfe{{{"}),
    ("body over the limit", {"content": b'{"queries":["' + b"a" * (17 << 20) + b'"],"max_k":1}'}),
]


@dataclass
class Ctx:
    url: str
    pid: int
    quick: bool
    soak: int = 1000
    results: dict[str, Any] = field(default_factory=dict)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def innocent_body(i: int) -> dict[str, Any]:
    n = 1 + i % 4
    return {"queries": [f"How many {TOPICS[(i + j) % 8]} are left after {i + j}?" for j in range(n)], "max_k": 10}


async def run_mix(ctx: Ctx, total: int, concurrency: int, bad_every: int) -> dict[str, Any]:
    """``total`` requests at ``concurrency``; every ``bad_every``-th is a bad one (cycling through BAD)."""
    codes_innocent: list[int] = []
    codes_bad: dict[str, list[int]] = {}
    latencies: list[float] = []
    throttled: list[int] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            if bad_every and i % bad_every == bad_every // 2:
                name, kwargs = BAD[(i // bad_every) % len(BAD)]
                headers = {"Content-Type": "application/json"}
                try:
                    r = await client.post("/select", headers=headers, **kwargs)
                    codes_bad.setdefault(name, []).append(r.status_code)
                except httpx.HTTPError:
                    codes_bad.setdefault(name, []).append(-1)  # connection closed on us: fine for a bad one
                continue
            t0 = time.perf_counter()
            body = innocent_body(i)
            try:
                for _ in range(20):  # like near_client: 429 is back-pressure, retried after Retry-After
                    r = await client.post("/select", json=body)
                    if r.status_code != 429:
                        break
                    throttled.append(1)
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                ok = r.status_code == 200 and len(r.json()["indices"]) == len(body["queries"])
                codes_innocent.append(r.status_code if ok else -r.status_code)
            except httpx.HTTPError:
                codes_innocent.append(-1)
            latencies.append(time.perf_counter() - t0)

    async with httpx.AsyncClient(base_url=ctx.url, timeout=120) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        # made-up methods: must not grow /metrics
        for i in range(50 if ctx.quick else 500):
            await client.request(f"BOGUS{i}", f"/made/up/{i}")
    all_codes = codes_innocent + [c for v in codes_bad.values() for c in v]
    return {
        "requests": len(all_codes),
        "5xx": sum(1 for c in all_codes if abs(c) >= 500),
        "innocent": len(codes_innocent),
        "innocent_failed": sum(1 for c in codes_innocent if c != 200),
        "429_retried": len(throttled),
        "bad": {k: sorted(set(v)) for k, v in codes_bad.items()},
        "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "p99_ms": round(sorted(latencies)[int(0.99 * (len(latencies) - 1))] * 1000, 1) if latencies else None,
    }


async def phase_burst(ctx: Ctx) -> dict[str, Any]:
    """200 concurrent requests, bad ones mixed in."""
    return await run_mix(ctx, 100 if ctx.quick else 200, 100 if ctx.quick else 200, bad_every=40)


async def phase_soak(ctx: Ctx) -> dict[str, Any]:
    """2 x ``--soak`` requests at concurrency 20, a bad one in every 50."""
    n = 300 if ctx.quick else ctx.soak
    rounds = [await run_mix(ctx, n, 20, bad_every=50) for _ in range(2)]
    out = {k: sum(r[k] for r in rounds) for k in ("requests", "5xx", "innocent", "innocent_failed", "429_retried")}
    out["bad"] = rounds[0]["bad"]
    out["p50_ms"], out["p99_ms"] = rounds[-1]["p50_ms"], max(r["p99_ms"] or 0 for r in rounds)
    return out


async def phase_head_of_line(ctx: Ctx) -> dict[str, Any]:
    """A 1-query request sent 0.5 s after a 4,096-query one: how long it waits."""
    async with httpx.AsyncClient(base_url=ctx.url, timeout=600) as client:
        alone_t0 = time.perf_counter()
        await client.post("/select", json={"queries": ["alone: a lonely question"], "max_k": 5})
        alone = time.perf_counter() - alone_t0
        n = 1024 if ctx.quick else 4096
        big = asyncio.ensure_future(
            client.post("/select", json={"queries": [f"big request question {i}" for i in range(n)], "max_k": 5})
        )
        await asyncio.sleep(0.5)
        t0 = time.perf_counter()
        small = await client.post("/select", json={"queries": ["small: how many apples?"], "max_k": 5})
        small_s = time.perf_counter() - t0
        big_r = await big
        big_s = time.perf_counter() - t0 + 0.5
    return {
        "requests": 3,
        "5xx": sum(r.status_code >= 500 for r in (small, big_r)),
        "innocent": 2,
        "innocent_failed": sum(r.status_code != 200 for r in (small, big_r)),
        "small_alone_s": round(alone, 2),
        "small_behind_big_s": round(small_s, 2),
        "big_s": round(big_s, 2),
        "big_queries": n,
    }


async def phase_hang_up(ctx: Ctx) -> dict[str, Any]:
    """A 4,096-query request whose client hangs up after 0.5 s: the service stops embedding it."""
    before = metric(ctx.url, "near_embedded_texts_total")
    n = 1024 if ctx.quick else 4096
    async with httpx.AsyncClient(base_url=ctx.url, timeout=httpx.Timeout(0.5, connect=5)) as client:
        with contextlib.suppress(httpx.ReadTimeout):
            await client.post("/select", json={"queries": [f"hang up question {i}" for i in range(n)], "max_k": 5})
    await asyncio.sleep(3)
    mid = metric(ctx.url, "near_embedded_texts_total")
    await asyncio.sleep(2)
    after = metric(ctx.url, "near_embedded_texts_total")
    r = httpx.post(f"{ctx.url}/select", json={"queries": ["after the hang-up"], "max_k": 3}, timeout=60)
    return {
        "requests": 2,
        "5xx": int(r.status_code >= 500),
        "innocent": 1,
        "innocent_failed": int(r.status_code != 200),
        "texts_sent": n,
        "texts_embedded": int(after - before),
        "still_embedding_after_3s": after > mid,
    }


async def phase_slowloris(ctx: Ctx) -> dict[str, Any]:
    """Slow clients (half of them silent, half trickling a header line) beside an innocent mix: each
    must be closed after NEAR_HEADER_TIMEOUT (10 s; the trickling ones with a 408), the innocent ones
    must not notice."""
    n = 50 if ctx.quick else 200  # under NEAR_MAX_CONNECTIONS (512): a bounded slot each, for 10 s
    host, port = ctx.url.removeprefix("http://").split(":")

    async def slow(i: int) -> tuple[bytes | None, float]:  # None: never cut off in 30 s
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            if i % 2:
                writer.write(b"GET /ready HTTP/1.1\r\nHost: x\r\n")
                for _ in range(30):  # a header byte every 0.5 s, never the blank line
                    await writer.drain()
                    if reader.at_eof():
                        break
                    writer.write(b"X")
                    try:
                        answer = await asyncio.wait_for(reader.read(65536), 0.5)
                        return answer, time.perf_counter() - t0
                    except asyncio.TimeoutError:
                        continue
            answer = await asyncio.wait_for(reader.read(65536), 30)
            return answer, time.perf_counter() - t0
        except asyncio.TimeoutError:
            return None, time.perf_counter() - t0
        except OSError:  # reset by the service: cut off too
            return b"", time.perf_counter() - t0
        finally:
            writer.close()

    slow_tasks = [asyncio.ensure_future(slow(i)) for i in range(n)]
    mix = await run_mix(ctx, 100 if ctx.quick else 300, 10, bad_every=0)
    answers = await asyncio.gather(*slow_tasks)

    def cut_off(i: int, answer: bytes | None) -> bool:  # silent ones: closed; trickling ones: a 408
        return answer == b"" if i % 2 == 0 else answer is not None and answer.startswith(b"HTTP/1.1 408")

    closed = [t for i, (a, t) in enumerate(answers) if cut_off(i, a)]
    return {
        **mix,
        "slow_clients": n,
        "slow_cut_off": len(closed),
        "slow_not_cut": n - len(closed),  # target 0
        "slow_closed_after_s": [round(min(closed), 1), round(max(closed), 1)] if closed else None,
    }


PHASES: dict[str, Callable[[Ctx], Awaitable[dict[str, Any]]]] = {
    "burst": phase_burst,
    "soak": phase_soak,
    "head_of_line": phase_head_of_line,
    "hang_up": phase_hang_up,
    "slowloris": phase_slowloris,
}


def start_service(workdir: Path, pool_size: int) -> tuple[subprocess.Popen[bytes], str]:
    pool = workdir / "pool.jsonl"
    with pool.open("w") as f:
        for i in range(pool_size):
            t = TOPICS[i % 8]
            f.write(
                json.dumps({"question": f"A shop has {i} {t}; it sells {i % 7}. How many {t}?", "answer": str(i)})
                + "\n"
            )
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "NEAR_CACHE_DIR": str(workdir / "cache"),
    }
    cmd = [sys.executable, "-m", "near_service.cli", "serve", "--candidates", str(pool), "--port", str(port)]
    log = (workdir / "service.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((workdir / "service.log").read_text()[-3000:])
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("service not ready in 600 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller phases")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    parser.add_argument("--pool-size", type=int, default=2000)
    parser.add_argument("--soak", type=int, default=1000, help="requests per soak round (2 rounds; 2000 takes ~5 min)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="near-load-") as tmp:
        proc, url = start_service(Path(tmp), args.pool_size)
        try:
            ctx = Ctx(url=url, pid=proc.pid, quick=args.quick, soak=args.soak)
            metrics_start = len(httpx.get(f"{url}/metrics").text)
            ctx.results["rss_start_mib"] = round(rss_mib(proc.pid), 1)
            for name in args.phases.split(","):
                t0 = time.perf_counter()
                result = asyncio.run(PHASES[name](ctx))
                result["seconds"] = round(time.perf_counter() - t0, 1)
                result["rss_mib"] = round(rss_mib(proc.pid), 1)
                ctx.results[name] = result
                print(f"{name}: {json.dumps(result)}", flush=True)
            ctx.results["rss_end_mib"] = round(rss_mib(proc.pid), 1)
            ctx.results["metrics_bytes"] = [metrics_start, len(httpx.get(f"{url}/metrics").text)]
        finally:
            proc.terminate()
            t0 = time.perf_counter()
            proc.wait(timeout=60)
            ctx.results["sigterm_exit_s"] = round(time.perf_counter() - t0, 2)
    total_5xx = sum(r.get("5xx", 0) for r in ctx.results.values() if isinstance(r, dict))
    lost = sum(r.get("innocent_failed", 0) for r in ctx.results.values() if isinstance(r, dict))
    uncut = sum(r.get("slow_not_cut", 0) for r in ctx.results.values() if isinstance(r, dict))
    print(
        f"5xx: {total_5xx} (target 0); innocent requests failed: {lost} (target 0); "
        f"slow clients not cut off: {uncut} (target 0); "
        f"RSS {ctx.results['rss_start_mib']} -> {ctx.results['rss_end_mib']} MiB; "
        f"/metrics {ctx.results['metrics_bytes'][0]} -> {ctx.results['metrics_bytes'][1]} bytes; "
        f"SIGTERM exit {ctx.results['sigterm_exit_s']} s"
    )
    if args.json:
        args.json.write_text(json.dumps(ctx.results, indent=2))
    return 0 if total_5xx == 0 and lost == 0 and uncut == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
