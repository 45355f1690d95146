"""A large imported pool serves at once and gets its density statistics in the background (issue 20).

    .venv/bin/python bench/import_density.py                   # 300,000 rows -> docs/scaling.md (bench:import_density)
    .venv/bin/python bench/import_density.py --rows 20000 --no-write

Builds a pool file of ``--rows`` seeded synthetic short texts and matching clustered float32 unit
vectors of 384 dims (the packaged MiniLM's size; manifest: model, dims, count, pool fingerprint), runs
``near-select import`` into a fresh cache folder, starts ``near-select serve`` on that pool (no Redis,
``NEAR_DENSITY_STATS=auto``) and measures:

- time from spawn to searchable (the first ``round_robin`` ``/select`` that answers 200) and to
  ``/ready`` 200 (which waits for the statistics);
- at the first searchable moment: ``round_robin`` and ``max_score`` answer 200, ``density`` and
  ``importance`` 503 ``stats_pending`` with ``Retry-After`` and the progress in the message;
- the statistics' progress on ``GET /pools/default`` and the time until ``density`` answers 200;
- the service's peak RSS (``VmHWM``), and a restart's time to ``/ready`` (statistics read back).

Exits 1 when ``density`` never answers 200 (``--timeout``, or an error other than ``stats_pending``)
or ``round_robin`` / ``max_score`` did not answer 200 as soon as the pool was searchable. Scratch files
go under ``out/`` (gitignored) and are deleted afterwards (``--keep`` keeps them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pool_stats_cost import clustered
from report import cpu_name, write_section
from scale import rss

from service import free_port, stop, wait_ready

ROOT = Path(__file__).resolve().parent.parent
SCALING = ROOT / "docs" / "scaling.md"
MARK = "bench:import_density"
DIMS = 384
THINGS = ["apple", "clock", "stone", "paper", "candle", "ladder", "mirror", "pencil", "violin", "kettle"]
PLACES = ["river", "garden", "window", "market", "bridge", "forest", "tunnel", "harbor", "island", "road"]
QUERIES = [
    "How many apples are left in the basket after the market?",
    "A train crosses the bridge to the island before the thunder.",
    "Which candle lights the window of the garden?",
    "The engine of the rocket needs a new cotton ribbon.",
    "A spider climbs the ladder next to the mirror.",
    "How long does the violin lesson at the harbor take?",
    "The kettle and the lemon are on the marble table.",
    "Count the silver needles in the velvet pillow.",
]
MAX_K, BUDGET = 100, 200


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def make_pool(path: Path, n: int, seed: int = 0) -> None:
    """``n`` unique short texts (a row number and four seeded words), one JSON object a line."""
    rng = np.random.default_rng(seed)
    things, places = np.array(THINGS), np.array(PLACES)
    with open(path, "w", encoding="utf-8") as fh:
        for r0 in range(0, n, 65536):
            m = min(65536, n - r0)
            a, b = things[rng.integers(0, len(THINGS), (m, 2))].T
            c, d = places[rng.integers(0, len(PLACES), (m, 2))].T
            for j in range(m):
                text = f"item {r0 + j}: the {a[j]} and the {b[j]} by the {c[j]} near the {d[j]}"
                fh.write(json.dumps({"text": text}) + "\n")


def make_vectors(path: Path, n: int, model: str, pool_fp: str) -> None:
    """Clustered float32 unit rows (``bench/pool_stats_cost.py``'s pool), written through a memmap,
    and the manifest ``near-select import`` checks (model, dims, count, pool fingerprint)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIMS))  # type: ignore[no-untyped-call]
    clustered(n, DIMS, seed=0, out=out)
    out.flush()
    del out
    manifest = {"model": model, "dims": DIMS, "count": n, "pool_fingerprint": pool_fp}
    path.with_name(path.name + ".json").write_text(json.dumps(manifest), encoding="utf-8")


def cli() -> list[str]:
    exe = Path(sys.executable).with_name("near-select")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "near_service.cli"]


def select(http: httpx.Client, url: str, strategy: str) -> tuple[httpx.Response, float]:
    body = {"queries": QUERIES, "max_k": MAX_K, "budget": BUDGET, "strategy": strategy}
    t = time.perf_counter()
    r = http.post(f"{url}/select", json=body)
    return r, time.perf_counter() - t


def code(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "-"


def serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [*cli(), "serve", "--port", str(port), "--host", "127.0.0.1"],
        env={**env, "NEAR_PORT": str(port)},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    return proc, f"http://127.0.0.1:{port}"


def alive(proc: subprocess.Popen[bytes], log: Path) -> None:
    if proc.poll() is not None:
        raise SystemExit(f"the service exited ({proc.returncode}):\n{log.read_text()[-3000:]}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from near_service.core.records import fingerprint, load_texts
    from near_service.core.settings import DEFAULT_MODEL

    n, work = args.rows, args.work
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    pool, vec, cache, log = work / "pool.jsonl", work / "vectors.npy", work / "cache", work / "serve.log"
    res: dict[str, Any] = {"rows": n, "load_start": load()}

    t = time.perf_counter()
    make_pool(pool, n)
    pool_fp = fingerprint(load_texts([pool], "default", "candidate"))
    make_vectors(vec, n, DEFAULT_MODEL, pool_fp)
    res["build_s"] = time.perf_counter() - t
    print(f"pool {pool_fp}: {n:,} texts and {n:,} x {DIMS} vectors in {res['build_s']:.1f}s", flush=True)

    env = {k: v for k, v in os.environ.items() if not k.startswith("NEAR_")}
    env |= {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    common = ["--candidates", str(pool), "--cache-dir", str(cache)]
    t = time.perf_counter()
    subprocess.run([*cli(), "import", str(vec), *common, "--log-level", "warning"], env=env, check=True)
    res["import_s"] = time.perf_counter() - t
    vec.unlink()  # the pool store holds its own copy now
    print(f"near-select import: {res['import_s']:.1f}s", flush=True)

    senv = {
        **env,
        "NEAR_CANDIDATES": json.dumps([str(pool)]),
        "NEAR_CACHE_DIR": str(cache),
        "NEAR_DENSITY_STATS": "auto",
        "NEAR_LOG_LEVEL": "info",
    }
    t0 = time.perf_counter()
    proc, url = serve(senv, log)
    progress: list[tuple[float, int, int, str]] = []  # (s since spawn, done, total, state)
    try:
        with httpx.Client(timeout=600) as http:
            while True:  # searchable: the first round_robin that answers 200
                alive(proc, log)
                try:
                    r, _ = select(http, url, "round_robin")
                    if r.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.25)
            res["searchable_s"] = time.perf_counter() - t0
            res["rss_searchable"] = rss(proc.pid)[0]
            first: dict[str, Any] = {}
            for strategy in ("round_robin", "max_score", "density", "importance"):
                r, secs = select(http, url, strategy)
                first[strategy] = {
                    "status": r.status_code,
                    "code": code(r),
                    "ms": 1000 * secs,
                    "retry_after": r.headers.get("retry-after"),
                    "message": r.json().get("error", {}).get("message") if r.status_code != 200 else None,
                }
                print(strategy, first[strategy], flush=True)
            res["first"] = first
            res["pending_seen"] = first["density"]["code"] == "stats_pending"
            ready_s = None
            deadline = time.monotonic() + args.timeout
            while True:
                alive(proc, log)
                st = http.get(f"{url}/pools/default").json()
                now = time.perf_counter() - t0
                progress.append((now, st["stats"]["done"], st["stats"]["total"], st["stats"]["state"]))
                if ready_s is None and http.get(f"{url}/ready").status_code == 200:
                    ready_s = now
                r, secs = select(http, url, "density")
                if r.status_code == 200:
                    res["density_s"], res["density_ms"] = time.perf_counter() - t0, 1000 * secs
                    break
                if code(r) != "stats_pending" or time.monotonic() > deadline:
                    res["density_fail"] = f"{r.status_code} {code(r)} after {now:.0f}s: {r.text[:300]}"
                    break
                time.sleep(args.poll)
            if "density_s" in res:
                while ready_s is None and time.monotonic() < deadline:
                    if http.get(f"{url}/ready").status_code == 200:
                        ready_s = time.perf_counter() - t0
                    time.sleep(0.2)
                st = http.get(f"{url}/pools/default").json()
                res["method"] = st["stats"]["method"]
                r, _ = select(http, url, "importance")
                res["importance_after"] = r.status_code
            res["ready_s"] = ready_s
            res["rss_now"], res["rss_peak"] = rss(proc.pid)
    finally:
        stop(proc)
    res["progress"] = progress
    text = log.read_text()
    m = re.search(r"density statistics in ([0-9.]+)s", text)
    res["stats_log_s"] = float(m.group(1)) if m else None
    files = list(cache.glob(f"pools/*/{pool_fp}.npy"))
    res["vector_bytes"] = files[0].stat().st_size if files else n * DIMS * 4
    stats = list(cache.glob(f"pools/*/{pool_fp}.density.npz"))
    res["stats_bytes"] = stats[0].stat().st_size if stats else None

    if "density_s" in res:  # a restart reads the statistics back: ready without computing them
        t0 = time.perf_counter()
        proc, url = serve(senv, work / "serve-restart.log")
        try:
            wait_ready(proc, url, work / "serve-restart.log", timeout=None, poll=0.25)
            res["restart_ready_s"] = time.perf_counter() - t0
            with httpx.Client(timeout=600) as http:
                res["restart_density"] = select(http, url, "density")[0].status_code
        finally:
            stop(proc)
    res["load_end"] = load()
    return res


def _mib(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB"


def render(r: dict[str, Any]) -> str:
    n, f = r["rows"], r["first"]
    samples = [p for p in r["progress"] if p[3] == "computing"]
    if len(samples) > 4:
        samples = [samples[i] for i in np.unique(np.linspace(0, len(samples) - 1, 4).astype(int))]
    seen = ", ".join(f"{done:,}/{total:,} at {t:.0f} s" for t, done, total, _ in samples) or "none polled"
    d = f["density"]
    pending = (
        f"{d['status']} `{d['code']}`, Retry-After {d['retry_after']}: \u201c{d['message']}\u201d"
        if d["status"] != 200
        else "200 (the statistics were there before the first request)"
    )
    imp = f["importance"]
    stats_s = r["density_s"] - r["searchable_s"] if "density_s" in r else None
    rows = [
        ("build the pool file and the vectors (bench process)", f"{r['build_s']:.1f} s"),
        ("`near-select import`", f"{r['import_s']:.1f} s"),
        ("`near-select serve` spawn -> searchable (first `round_robin` 200)", f"{r['searchable_s']:.1f} s"),
        (
            "at that moment: `round_robin` / `max_score`",
            f"{f['round_robin']['status']} ({f['round_robin']['ms']:.0f} ms) / "
            f"{f['max_score']['status']} ({f['max_score']['ms']:.0f} ms)",
        ),
        ("at that moment: `density`", pending),
        ("at that moment: `importance`", f"{imp['status']} `{imp['code']}`"),
        ("statistics' progress on `GET /pools/default` (rows done, seconds since spawn)", seen),
        (
            "spawn -> `density` 200",
            f"{r['density_s']:.1f} s ({r['density_ms']:.0f} ms), `importance` {r['importance_after']}"
            if "density_s" in r
            else f"**never**: {r.get('density_fail')}",
        ),
        (
            f"statistics ({r.get('method') or '?'}), searchable -> `density` 200",
            f"{stats_s:.1f} s (service log: {r['stats_log_s']} s)" if stats_s is not None else "-",
        ),
        ("spawn -> `/ready` 200 (waits for the statistics)", f"{r['ready_s']:.1f} s" if r["ready_s"] else "-"),
        (
            "service RSS: when searchable / peak (VmHWM)",
            f"{_mib(r['rss_searchable'])} / {_mib(r['rss_peak'])} "
            f"(pool vectors {_mib(r['vector_bytes'])}"
            + (f", statistics file {_mib(r['stats_bytes'])})" if r["stats_bytes"] else ")"),
        ),
        (
            "restart (statistics read from the cache folder): spawn -> `/ready` 200",
            f"{r['restart_ready_s']:.1f} s, `density` {r['restart_density']}" if "restart_ready_s" in r else "-",
        ),
    ]
    return "\n".join(
        [
            f"Import and background density statistics, `bench/import_density.py --rows {n}` "
            f"({time.strftime('%Y-%m-%d %H:%M')}): {cpu_name()}, {os.cpu_count()} cores shared with other work "
            f"(load average {r['load_start']} at the start, {r['load_end']} at the end); {n:,} synthetic short "
            f"texts, clustered float32 unit vectors of {DIMS} dims imported for the packaged all-MiniLM-L6-v2, "
            f"`near-select serve` without Redis, `NEAR_DENSITY_STATS=auto`; requests of {len(QUERIES)} queries, "
            f"max_k {MAX_K}, budget {BUDGET}.",
            "",
            "| step | measured |",
            "|---|---|",
            *[f"| {a} | {b} |" for a, b in rows],
        ]
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "bench-import-density")
    ap.add_argument("--timeout", type=float, default=7200, help="seconds to wait for density to answer 200")
    ap.add_argument("--poll", type=float, default=2.0, help="seconds between density requests while pending")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (pool, store, logs)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    try:
        r = run(args)
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    text = render(r)
    print(text)
    (ROOT / "out").mkdir(exist_ok=True)
    (ROOT / "out" / f"import_density-{args.rows}.json").write_text(json.dumps(r, indent=2))
    served = all(r["first"][s]["status"] == 200 for s in ("round_robin", "max_score"))
    ok = "density_s" in r and served
    if not served:
        print("round_robin / max_score did not answer 200 as soon as the pool was searchable", file=sys.stderr)
    if not r["pending_seen"]:
        print("density never answered stats_pending: the statistics were there first", file=sys.stderr)
    if "density_s" not in r:
        print(f"density never answered 200: {r.get('density_fail')}", file=sys.stderr)
    if not args.no_write and "density_s" in r:
        write_section(MARK, text, SCALING)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
