"""Store faults against a real service (real MiniLM, real redis-server); prints what held and what was lost.

    .venv/bin/python bench/faults.py                  # every fault, ~3 min on 2 CPU cores
    .venv/bin/python bench/faults.py --faults hung_redis,kill9 --pool-size 20000

Faults (each a function in ``FAULTS``): ``hung_redis`` (SIGSTOP redis-server while plain and ledger
requests run), ``wiped_redis`` (FLUSHALL between rounds of an exclude_previous run), ``corrupt_sqlite``
and ``bad_blob`` (damage the caches, restart), ``kill9`` (kill -9 half way through embedding the pool,
restart on the same caches: how many vectors were lost). The rows of docs/reliability.md come from here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

TOPICS = ["apples", "trains", "rectangles", "savings", "marbles", "recipes", "clocks", "bicycles"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Env:
    """A workdir with a pool file, a redis-server, and services started on them."""

    def __init__(self, workdir: Path, pool_size: int) -> None:
        self.dir, self.pool = workdir, workdir / "pool.jsonl"
        with self.pool.open("w") as f:
            for i in range(pool_size):
                t = TOPICS[i % 8]
                f.write(json.dumps({"question": f"A shop has {i} {t}; it sells {i % 7}. How many {t}?"}) + "\n")
        self.redis_port = free_port()
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--save", "", "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        self.services: list[subprocess.Popen[bytes]] = []

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def serve(self, cache: str = "cache", wait: bool = True, redis: bool = True) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env["NEAR_CACHE_DIR"] = str(self.dir / cache)
        if redis:
            env["NEAR_REDIS_URL"] = self.redis_url
        cmd = [sys.executable, "-m", "near_service.cli", "serve", "--candidates", str(self.pool), "--port", str(port)]
        log = (self.dir / f"service{len(self.services)}.log").open("wb")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.services.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"service exited {proc.returncode}")
            try:
                r = httpx.get(f"{url}/ready", timeout=2)
                if r.status_code == 200 or (not wait and r.status_code == 503):
                    return proc, url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("service not ready")

    def close(self) -> None:
        for p in [*self.services, self.redis]:
            with_suppress(lambda p=p: os.kill(p.pid, signal.SIGCONT))
            p.kill()
            p.wait()


def with_suppress(fn: Callable[[], object]) -> None:
    with contextlib.suppress(OSError):
        fn()


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith((name + "{", name + " ")))


def timed(url: str, body: dict[str, Any]) -> tuple[int, float]:
    t = time.perf_counter()
    r = httpx.post(f"{url}/select", json=body, timeout=60)
    return r.status_code, time.perf_counter() - t


def fault_hung_redis(env: Env) -> dict[str, Any]:
    _, url = env.serve()
    plain = [{"queries": [f"how many {TOPICS[i % 8]} now {i}"], "max_k": 5} for i in range(16)]
    ledger = [{"queries": ["apples"], "max_k": 5, "run_id": f"r{i}", "round": 0} for i in range(40)]
    with ThreadPoolExecutor(56) as ex:
        base = list(ex.map(lambda b: timed(url, b), plain))
        os.kill(env.redis.pid, signal.SIGSTOP)
        t0 = time.perf_counter()
        led = [ex.submit(timed, url, b) for b in ledger]
        time.sleep(0.2)
        hung = list(ex.map(lambda b: timed(url, {**b, "queries": [b["queries"][0] + " hung"]}), plain))
        led_out = [f.result() for f in led]
        wall = time.perf_counter() - t0
    os.kill(env.redis.pid, signal.SIGCONT)
    t = time.perf_counter()
    while httpx.get(f"{url}/ready").json()["redis"] != "ok":
        time.sleep(0.05)
    back = time.perf_counter() - t
    after = timed(url, ledger[0])
    return {
        "plain_ok_p100_s": round(max(s for _, s in base), 2),
        "hung_plain_statuses": sorted({c for c, _ in hung}),
        "hung_plain_max_s": round(max(s for _, s in hung), 2),
        "hung_ledger_statuses": sorted({c for c, _ in led_out}),
        "hung_ledger_max_s": round(max(s for _, s in led_out), 2),
        "hung_wall_s": round(wall, 2),
        "rejected_429": metric(url, "near_rejected_total"),
        "redis_ok_after_sigcont_s": round(back, 2),
        "ledger_after": after[0],
    }


def fault_wiped_redis(env: Env) -> dict[str, Any]:
    _, url = env.serve()
    body = {"queries": ["apples", "clocks"], "max_k": 20, "budget": 5, "exclude_previous": True, "run_id": "w"}
    codes = [timed(url, {**body, "round": r})[0] for r in (0, 1)]
    subprocess.run(["redis-cli", "-p", str(env.redis_port), "FLUSHALL"], check=True, capture_output=True)
    r = httpx.post(f"{url}/select", json={**body, "round": 2}, timeout=60)
    gap = httpx.post(f"{url}/select", json={**body, "run_id": "g", "round": 3}, timeout=60)
    return {
        "rounds_0_1": codes,
        "round_2_after_flush": r.status_code,
        "code": r.json()["error"]["code"],
        "out_of_order_round_3": gap.status_code,
    }


def fault_corrupt_sqlite(env: Env) -> dict[str, Any]:
    proc, _ = env.serve(cache="c-sql", redis=False)
    proc.terminate()  # a clean stop: the WAL is checkpointed into the file we then damage
    proc.wait()
    db = env.dir / "c-sql" / "embeddings.sqlite3"
    data = db.read_bytes()
    db.write_bytes(data[:100] + os.urandom(4096) + data[4196 : len(data) // 2])
    shutil.rmtree(env.dir / "c-sql" / "pools", ignore_errors=True)
    t = time.perf_counter()
    _, url = env.serve(cache="c-sql", redis=False)
    return {
        "ready_s": round(time.perf_counter() - t, 1),
        "re_embedded": metric(url, "near_embedded_texts_total"),
        "moved_aside": len(list((env.dir / "c-sql").glob("*.corrupt-*"))),
    }


def fault_bad_blob(env: Env) -> dict[str, Any]:
    env.serve(cache="c-blob")
    import redis

    client = redis.Redis.from_url(env.redis_url)
    keys = sorted(client.scan_iter("near:emb:*"))[:10]
    for k in keys:
        client.set(k, b"\x00" * 100)
    _, url = env.serve(cache="c-blob2")  # a fresh disk cache: Redis is the only warm store
    return {
        "damaged": len(keys),
        "ready": httpx.get(f"{url}/ready").status_code,
        "re_embedded": metric(url, "near_embedded_texts_total"),
    }


def fault_kill9(env: Env) -> dict[str, Any]:
    proc, url = env.serve(cache="c-kill", wait=False, redis=False)
    done, total = 0, 1
    while True:
        r = httpx.get(f"{url}/ready", timeout=5).json()
        if r["progress"]:
            done, total = r["progress"]["done"], r["progress"]["total"]
        if done >= total // 2:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    _, url = env.serve(cache="c-kill", redis=False)
    embedded = metric(url, "near_embedded_texts_total")
    return {
        "pool": total,
        "done_at_kill": done,
        "embedded_after_restart": embedded,
        "lost": max(0, int(embedded - (total - done))),
    }


FAULTS: dict[str, Callable[[Env], dict[str, Any]]] = {
    "hung_redis": fault_hung_redis,
    "wiped_redis": fault_wiped_redis,
    "corrupt_sqlite": fault_corrupt_sqlite,
    "bad_blob": fault_bad_blob,
    "kill9": fault_kill9,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--pool-size", type=int, default=2000)
    args = parser.parse_args()
    for name in args.faults.split(","):
        with tempfile.TemporaryDirectory(prefix="near-faults-") as tmp:
            env = Env(Path(tmp), args.pool_size)
            try:
                print(f"{name}: {json.dumps(FAULTS[name](env))}", flush=True)
            finally:
                env.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
