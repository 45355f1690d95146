"""Benchmark of the selection service; rewrites the ``bench:service`` section of docs/benchmarks.md.

    .venv/bin/python bench/service.py            # data from ../shared/data (never copied into the repo)

Pool: GSM8K train + the DataFlex demo sets; queries: GSM8K test. It starts its own redis-server and
uvicorn on loopback ports and measures, in one run:

- time to ready, cold (empty Redis, empty disk cache) vs warm (a new process with a fresh disk cache:
  only Redis is warm);
- ``/select`` latency p50/p99 for 64 and 1024 queries at max_k 1000, with one client and with 8
  concurrent clients (bounded loops; query embeddings cached by a warm-up request, so the loop
  measures lookup + search + selection + encoding + HTTP), and the errors seen;
- the search step (``VectorIndex.search``) against a numpy brute-force floor (matmul +
  argpartition + sorting the K) on the same vectors.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from report import cpu_name, write_section

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
MARK = "bench:service"
MAX_K = 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server is not installed (make setup installs it)")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.RedisError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def start_service(env: dict[str, str], log: Path, timeout: float = 1800) -> tuple[subprocess.Popen[bytes], str, float]:
    """Start uvicorn; return (process, url, seconds from spawn to /ready == 200)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "near_service.server.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env={**os.environ, **env, "HF_HUB_OFFLINE": "1"},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    wait_ready(proc, url, log, timeout)
    return proc, url, time.perf_counter() - t0


def wait_ready(
    proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float | None = 1800, poll: float = 0.05
) -> None:
    """Poll ``/ready`` until it answers 200; RuntimeError (with the log's tail) if the service exits
    first or is not ready within ``timeout`` seconds (None: wait as long as it runs)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll)
    raise RuntimeError("service not ready in time")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def latency_run(url: str, queries: list[str], clients: int, per_client: int) -> dict[str, Any]:
    """``clients`` threads, each sending ``per_client`` requests; latency = request sent -> body received."""
    body = json.dumps({"queries": queries, "max_k": MAX_K}).encode()
    headers = {"content-type": "application/json"}

    def client(_: int) -> tuple[list[float], list[float], int]:
        times, search, errors = [], [], 0
        with httpx.Client(timeout=300) as http:
            for _ in range(per_client):
                t = time.perf_counter()
                r = http.post(f"{url}/select", content=body, headers=headers)
                _ = r.content
                times.append(time.perf_counter() - t)
                if r.status_code != 200:
                    errors += 1
                    continue
                m = re.search(r"search;dur=([0-9.]+)", r.headers.get("server-timing", ""))
                if m:
                    search.append(float(m.group(1)) / 1000)
        return times, search, errors

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        parts = list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    times = [t for p in parts for t in p[0]]
    search = [s for p in parts for s in p[1]]
    return {
        "queries": len(queries),
        "clients": clients,
        "requests": len(times),
        "p50_ms": 1000 * float(np.percentile(times, 50)),
        "p99_ms": 1000 * float(np.percentile(times, 99)),
        "server_search_p50_ms": 1000 * statistics.median(search) if search else float("nan"),
        "queries_per_s": len(times) * len(queries) / wall,
        "errors": sum(p[2] for p in parts),
    }


def numpy_floor(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = queries @ base.T
    i = np.argpartition(-s, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(s, i, 1)
    order = np.argsort(-top, axis=1)
    return np.take_along_axis(top, order, 1), np.take_along_axis(i, order, 1)


def search_vs_floor(
    texts: list[str], query_sets: dict[int, list[str]], redis_url: str, repeats: int
) -> list[dict[str, Any]]:
    """Time VectorIndex.search and the numpy floor on the pool's cached vectors (no model run)."""
    import redis

    from near_service.core.embedder import Embedder
    from near_service.core.index import VectorIndex, first_occurrence
    from near_service.core.settings import load_settings
    from near_service.stores.cache import RedisCache

    embedder = Embedder.from_settings(load_settings(cache_dir=""))
    store = RedisCache(redis.Redis.from_url(redis_url))
    base = embedder.embed(texts, "document", [store])
    assert not embedder.loaded, "the pool vectors should all come from Redis"
    index = VectorIndex(base, first_of=first_occurrence(texts))
    rows = []
    for n, queries in query_sets.items():
        q = embedder.embed(queries, "query", [store])
        ours, floor = [], []
        for _ in range(repeats):  # interleaved, so both see the same machine state
            t = time.perf_counter()
            _, idx = index.search(q, MAX_K)
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            _, fidx = numpy_floor(base, q, MAX_K)
            floor.append(time.perf_counter() - t)
        same = float(np.mean([len(np.intersect1d(a, b)) / MAX_K for a, b in zip(idx, fidx, strict=True)]))
        rows.append(
            {
                "queries": n,
                "search_ms": 1000 * statistics.median(ours),
                "floor_ms": 1000 * statistics.median(floor),
                "ratio": statistics.median(ours) / statistics.median(floor),
                "overlap": same,
            }
        )
    return rows


def render(results: dict[str, Any]) -> str:
    c, w = results["cold_s"], results["warm_s"]
    lines = [
        f"Machine: {results['cpu']}, {results['cores']} cores, no GPU; model {results['model']} "
        f"({results['backend']}, {results['dtype']}); pool {results['pool']} candidates "
        f"(GSM8K train + DataFlex demo), queries from GSM8K test; max_k {MAX_K}. "
        f"Run {results['date']}, `python bench/service.py`; 1-minute load average {results['load'][0]:.1f} at the "
        f"start, {results['load'][1]:.1f} at the end"
        + (
            " (other work shared the CPU, which slows the cold start most)."
            if max(results["load"]) > (results["cores"] or 1)
            else "."
        ),
        "",
        "| start | time to ready |",
        "|---|---|",
        f"| cold (empty Redis, empty disk cache) | {c:.1f} s |",
        f"| warm (Redis warm, fresh disk cache) | {w:.1f} s |",
        f"| **cold / warm** | **{c / w:.1f}x** (target >= 10x) |",
        "",
        "`/select` latency (loopback; query embeddings cached by a warm-up request; latency = request sent "
        "to body received, client-side JSON parsing excluded):",
        "",
        "| queries | clients | requests | p50 | p99 | server search p50 | queries/s | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["latency"]:
        lines.append(
            f"| {r['queries']} | {r['clients']} | {r['requests']} | {r['p50_ms']:.0f} ms | "
            f"{r['p99_ms']:.0f} ms | {r['server_search_p50_ms']:.1f} ms | {r['queries_per_s']:.0f} | "
            f"{r['errors']} |"
        )
    lines += [
        "",
        "First request with new queries (the model embeds them): "
        + ", ".join(f"{n} queries {ms:.0f} ms" for n, ms in results["first_request_ms"].items())
        + ".",
        "",
        "Search step (`VectorIndex.search`, exact flat) vs numpy floor (matmul + argpartition + sort of the K), "
        "same vectors, median of repeats in one process:",
        "",
        "| queries | search | numpy floor | ratio (target <= 1.5) | top-K overlap |",
        "|---|---|---|---|---|",
    ]
    for r in results["search"]:
        lines.append(
            f"| {r['queries']} | {r['search_ms']:.1f} ms | {r['floor_ms']:.1f} ms | {r['ratio']:.2f} | "
            f"{r['overlap']:.4f} |"
        )
    errors = sum(r["errors"] for r in results["latency"])
    lines += ["", f"Errors under the concurrent runs: {errors} (target 0)."]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gsm8k-train", type=Path, default=DATA / "gsm8k" / "train.jsonl")
    ap.add_argument("--gsm8k-test", type=Path, default=DATA / "gsm8k" / "test.jsonl")
    ap.add_argument("--dataflex-dir", type=Path, default=DATA / "dataflex_demo")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--iterations", type=int, default=20, help="requests per client for 64 queries (1024: a quarter)")
    ap.add_argument("--no-write", action="store_true", help="print, do not rewrite docs/benchmarks.md")
    args = ap.parse_args()

    from near_service.core.records import load_texts

    candidates = [
        args.gsm8k_train,
        *sorted(args.dataflex_dir.glob("*.json")),
        *sorted(args.dataflex_dir.glob("*.jsonl")),
    ]
    texts = load_texts(candidates, "default", "candidate")
    tests = load_texts([args.gsm8k_test], "default", "query")
    query_sets = {64: tests[:64], 1024: tests[:1024]}
    results: dict[str, Any] = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "pool": len(texts),
        "date": time.strftime("%Y-%m-%d"),
        "load": [os.getloadavg()[0]],
    }
    work = Path(tempfile.mkdtemp(prefix="near-bench-"))
    redis_proc, redis_url = start_redis(work)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        env = {
            "NEAR_CANDIDATES": json.dumps([str(p) for p in candidates]),
            "NEAR_REDIS_URL": redis_url,
            "NEAR_CACHE_DIR": str(work / "cache-cold"),
            "NEAR_LOG_LEVEL": "warning",
        }
        print(f"cold start: embedding {len(texts)} candidates ...", flush=True)
        proc, url, results["cold_s"] = start_service(env, work / "cold.log")
        stop(proc)
        print(f"  ready in {results['cold_s']:.1f}s; warm start (Redis only) ...", flush=True)
        proc, url, results["warm_s"] = start_service(
            {**env, "NEAR_CACHE_DIR": str(work / "cache-warm")}, work / "warm.log"
        )
        procs.append(proc)
        print(f"  ready in {results['warm_s']:.1f}s", flush=True)
        info = httpx.get(f"{url}/info").json()
        results.update(model=info["model"], backend=info["backend"], dtype=info["dtype"])

        results["first_request_ms"] = {}
        for n, queries in query_sets.items():
            t = time.perf_counter()
            r = httpx.post(f"{url}/select", json={"queries": queries, "max_k": MAX_K}, timeout=600)
            results["first_request_ms"][n] = 1000 * (time.perf_counter() - t)
            assert r.status_code == 200, r.text
            assert np.asarray(r.json()["indices"]).shape == (n, MAX_K)
        results["latency"] = []
        for clients in (1, 8):
            for n, queries in query_sets.items():
                per = args.iterations if n == 64 else max(2, args.iterations // 4)
                per = max(2, per // 2) if clients > 1 else per
                row = latency_run(url, queries, clients, per)
                print(f"  {row}", flush=True)
                results["latency"].append(row)
        stop(procs.pop())
        print("search vs numpy floor ...", flush=True)
        results["search"] = search_vs_floor(texts, query_sets, redis_url, repeats=15)
        print(f"  {results['search']}", flush=True)
    finally:
        for p in procs:
            stop(p)
        stop(redis_proc)
        shutil.rmtree(work, ignore_errors=True)

    results["load"].append(os.getloadavg()[0])
    text = render(results)
    print(text)
    if not args.no_write:
        write_section(MARK, text, args.docs)
        print(f"wrote the {MARK} section of {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
