"""Selection quality of every strategy, through our code path, and /select latency by strategy.

    python bench/quality.py [--data ../shared/data] [--templates default dataflex] [--cache DIR]

- **t0dev**: pool = t0dev/candidates.jsonl (3506 rows of 26 sources), for each of the 8 targets the
  queries file; budget B = the target's rows in the pool; precision = share of the B selected that
  carry the target's label (labels.json).
- **GSM8K mix**: pool = GSM8K train + the DataFlex demo sets (alpaca en/zh, c4, wiki); queries = the
  first N GSM8K test questions; budgets 1000 and the GSM8K train size; precision = share of the
  selected rows that come from GSM8K train.

Everything goes through the service's parts: records -> texts (both templates; text-shaped records,
which the ``dataflex`` template refuses, are rendered with ``default``), the packaged MiniLM at dtype
``auto`` through :class:`Embedder` with a disk cache (a rerun embeds nothing), :class:`Pool` (exact
search), ``fill_budget``. ``density (whole pool)`` ranks every pool row instead of the rows the
queries' top-``max_k`` lists reach (what the service does): the difference is the price of the
restriction. ``random`` is the mean of 3 seeds. Latency: the t0dev pool served in-process (the real
app, TestClient, the same model), the 8 targets' queries, each strategy 5 times: median wall time of
/select end to end, and of search + selection alone. Results go to the ``bench:quality`` section of
docs/benchmarks.md.

``--density-method approx`` computes the pool statistics by the large-pool approximate method (for
comparing with ``exact``; prints only); ``--t0-only`` runs the t0dev part alone (no mix, no latency).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from report import cpu_name, write_section

from near_service.core.density import PoolStats, compute_pool_stats
from near_service.core.embedder import Embedder
from near_service.core.errors import InputError
from near_service.core.pool import Pool
from near_service.core.records import load_texts
from near_service.core.selection import density, fill_budget
from near_service.core.settings import load_settings
from near_service.stores.cache import DiskCache

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["amazon_polarity", "gigaword", "paws", "quartz", "sciq", "social_i_qa", "wiki_qa", "xsum"]
STRATEGIES = ["random", "round_robin", "max_score", "importance", "density", "density (whole pool)"]


def texts_of(path: Path, template: str) -> list[str]:
    try:
        return load_texts([path], template, "candidate")
    except InputError:  # text-shaped records: the dataflex template has no field for them
        return load_texts([path], "default", "candidate")


DENSITY_METHOD = "auto"  # --density-method: how the pool statistics are computed (approx forces the large-pool path)


def pool_stats(pool: Pool) -> PoolStats:
    if pool.density_stats is None:
        pool.density_stats = compute_pool_stats(pool.vectors, method=DENSITY_METHOD)
    return pool.density_stats


def choose(name: str, pool: Pool, qv: np.ndarray, idx: np.ndarray, sc: np.ndarray, budget: int) -> list[np.ndarray]:
    if name == "random":
        return [np.random.default_rng(s).choice(pool.size, budget, replace=False) for s in range(3)]
    stats = pool_stats(pool)
    if name == "density (whole pool)":
        return [density(idx, qv, pool.vectors, stats, budget, candidates=np.arange(pool.size))]
    return [fill_budget(idx, sc, budget, name, queries=qv, pool_vectors=pool.vectors, stats=stats)]


def precision(picks: list[np.ndarray], positive: np.ndarray) -> float:
    return float(np.mean([positive[p].mean() for p in picks]))


def t0dev(data: Path, template: str, embedder: Embedder, stores: list[Any], max_k: int) -> dict[str, dict[str, float]]:
    t0 = data / "t0dev"
    pool = Pool.build(texts_of(t0 / "candidates.jsonl", template), embedder, stores)
    labels = np.array(json.loads((t0 / "labels.json").read_text()))
    out: dict[str, dict[str, float]] = {s: {} for s in STRATEGIES}
    for target in TARGETS:
        qv = embedder.embed(load_texts([t0 / "queries" / f"{target}.jsonl"], template, "query"), "query", stores)
        sc, idx = pool.index.search(qv, max_k)
        budget = int((labels == target).sum())
        for s in STRATEGIES:
            out[s][target] = precision(choose(s, pool, qv, idx, sc, budget), labels == target)
    return out


def mix(
    data: Path, template: str, embedder: Embedder, stores: list[Any], n_queries: int, max_k: int
) -> dict[str, dict[str, float]]:
    demo = data / "dataflex_demo"
    files = [data / "gsm8k" / "train.jsonl"] + [
        demo / f for f in ("alpaca_en_demo.json", "alpaca_zh_demo.json", "c4_demo.jsonl", "wiki_demo.jsonl")
    ]
    parts = [texts_of(f, template) for f in files]
    texts = [t for p in parts for t in p]
    is_gsm = np.arange(len(texts)) < len(parts[0])
    pool = Pool.build(texts, embedder, stores)
    queries = load_texts([data / "gsm8k" / "test.jsonl"], template, "query")[:n_queries]
    qv = embedder.embed(queries, "query", stores)
    sc, idx = pool.index.search(qv, max_k)
    out: dict[str, dict[str, float]] = {s: {} for s in STRATEGIES}
    for budget in (1000, len(parts[0])):
        for s in STRATEGIES:
            out[s][f"mix@{budget}"] = precision(choose(s, pool, qv, idx, sc, budget), is_gsm)
    return out


def latency(data: Path, cache: Path, template: str, repeats: int) -> dict[str, tuple[float, float]]:
    """Median (end-to-end /select, search + selection) seconds per strategy, the real app in-process."""
    from fastapi.testclient import TestClient

    from near_service.server.app import create_app

    settings = load_settings(candidates=[data / "t0dev" / "candidates.jsonl"], cache_dir=cache, template=template)
    app = create_app(settings)
    t0 = data / "t0dev"
    labels = np.array(json.loads((t0 / "labels.json").read_text()))
    bodies = [
        {
            "queries": load_texts([t0 / "queries" / f"{t}.jsonl"], template, "query"),
            "max_k": 200,
            "budget": int((labels == t).sum()),
        }
        for t in TARGETS
    ]
    out: dict[str, tuple[float, float]] = {}
    with TestClient(app) as client:
        while client.get("/ready").status_code != 200:
            time.sleep(0.2)
        for b in bodies:  # warm: query embeddings of the first pass are not what is compared
            client.post("/select", json={**b, "strategy": "density"})
        for strategy in ("round_robin", "density", "importance", "max_score"):
            wall, compute = [], []
            for _ in range(repeats):
                for b in bodies:
                    t = time.perf_counter()
                    r = client.post("/select", json={**b, "strategy": strategy})
                    wall.append(time.perf_counter() - t)
                    assert r.status_code == 200, r.text
                    timing = dict(p.split(";dur=") for p in r.headers["server-timing"].split(", ") if ";dur=" in p)
                    compute.append((float(timing.get("search", 0)) + float(timing.get("select", 0))) / 1000)
            out[strategy] = (statistics.median(wall), statistics.median(compute))
    return out


def table(results: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    mix_cols = sorted(
        {c for r in results.values() for c in r["density"] if c.startswith("mix")}, key=lambda c: int(c[4:])
    )
    head = ["template", "strategy", "t0 mean", "t0 min", *TARGETS, *mix_cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for template, res in results.items():
        for s in STRATEGIES:
            t0 = [res[s][t] for t in TARGETS]
            mark = "**" if s == "density" else ""
            row = [template, f"{mark}{s}{mark}", f"{mark}{np.mean(t0):.3f}{mark}", f"{min(t0):.3f}"]
            row += [f"{v:.2f}" for v in t0] + [f"{res[s][c]:.3f}" for c in mix_cols]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--templates", nargs="+", default=["default", "dataflex"])
    parser.add_argument("--cache", type=Path, default=ROOT / "out" / "bench-quality-cache", help="embedding cache")
    parser.add_argument("--queries", type=int, default=200, help="GSM8K test questions (mix)")
    parser.add_argument("--t0-max-k", type=int, default=200)
    parser.add_argument("--mix-max-k", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5, help="latency: passes over the 8 targets")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument(
        "--density-method",
        choices=["auto", "exact", "approx"],
        default="auto",
        help="how the pool statistics are computed; approx forces the large-pool method (implies --no-write)",
    )
    parser.add_argument("--t0-only", action="store_true", help="t0dev only: no GSM8K mix, no latency (--no-write)")
    args = parser.parse_args()
    global DENSITY_METHOD
    DENSITY_METHOD = args.density_method
    if args.t0_only or args.density_method == "approx":
        args.no_write = True

    settings = load_settings(cache_dir=args.cache, dtype="auto")
    embedder = Embedder.from_settings(settings)
    stores: list[Any] = [DiskCache(args.cache)]
    results: dict[str, dict[str, dict[str, float]]] = {}
    t_start = time.perf_counter()
    for template in args.templates:
        res = t0dev(args.data, template, embedder, stores, args.t0_max_k)
        if not args.t0_only:
            for s, cols in mix(args.data, template, embedder, stores, args.queries, args.mix_max_k).items():
                res[s].update(cols)
        results[template] = res
        print("\n".join(table({template: res})), flush=True)
        for s in ("density", "importance"):
            print(f"{template} {s} t0 mean ({DENSITY_METHOD}): {np.mean([res[s][t] for t in TARGETS]):.4f}")
    if args.t0_only:
        return
    lat = latency(args.data, args.cache, args.templates[0], args.repeats)
    rr_wall, rr_compute = lat["round_robin"]
    lat_lines = [
        f"| {s} | {w * 1000:.1f} | {w / rr_wall:.2f}x | {c * 1000:.1f} | {c / rr_compute:.2f}x |"
        for s, (w, c) in lat.items()
    ]
    text = "\n".join(
        [
            f"Selection quality, `bench/quality.py` ({time.strftime('%Y-%m-%d')}): {cpu_name()}, no GPU; "
            f"model all-MiniLM-L6-v2 ({embedder.describe().get('dtype')}, through `Embedder`/`Pool`/`fill_budget`); "
            f"t0dev: 8 targets, budget = the target's rows, max_k {args.t0_max_k}; GSM8K mix: pool 9798, "
            f"{args.queries} GSM8K test questions, max_k {args.mix_max_k}. Precision = share of the selected rows "
            "that belong to the target. `random`: mean of 3 seeds.",
            "",
            *table(results),
            "",
            f"/select latency by strategy (t0dev pool served in-process, template {args.templates[0]}, the 8 "
            f"targets' queries, max_k 200, median of {args.repeats} passes; compute = search + selection, "
            "from Server-Timing):",
            "",
            "| strategy | /select end to end (ms) | vs round_robin | compute (ms) | vs round_robin |",
            "|---|---|---|---|---|",
            *lat_lines,
            "",
            "- `density` is the default (README, 'Choosing a strategy'). Target: /select latency <= 1.5x round_robin.",
            "- `density` ranks the rows the queries' top-max_k lists reach; `density (whole pool)` ranks every row.",
            "- Pool statistics cost (once per pool and model, cached beside the pool file): see docs/scaling.md.",
            f"- Whole run: {time.perf_counter() - t_start:.0f}s.",
        ]
    )
    print(text)
    if not args.no_write:
        write_section("bench:quality", text)


if __name__ == "__main__":
    main()
