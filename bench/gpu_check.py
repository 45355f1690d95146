"""GPU acceptance check, one prepared script for one H100/H200 (under 8 minutes end to end). Exit 1 on any miss.

    python bench/gpu_check.py [--write]      # a CUDA machine: --write puts the table in docs/benchmarks.md
    python bench/gpu_check.py --cpu-smoke    # tiny sizes, packaged MiniLM, CPU: checks this script itself

1. **Service** as in production: ``near-select serve`` loads the model first (vLLM Qwen3-Embedding-0.6B
   on CUDA), embeds a ``--pool-texts`` (100k) text pool itself, indexes it, then ``/ready``. Two clients
   ``POST /select`` at once (``--queries`` 1024 at ``max_k = --k`` 10000): both 200, same answer,
   recall@K 1.0 and the same order as a CPU float32 brute force over the pool file the service wrote.
   Qwen3-Embedding against its model card's scores (+-0.01); its tokenizer ends texts with <|endoftext|>.
2. **Exact torch search** (``VectorIndex`` on CUDA, the service's search) on ``--rows`` (1M) x 1024 random
   unit vectors, 1024 queries at K ``--search-k`` (1000) and ``--k``: recall 1.0 against a CPU brute force.
3. **FAISS GPU** (``faiss.knn_gpu``, the faiss-gpu extra) on the same vectors, in a child process: past
   its k limit faiss aborts the process, so our guard (core/gpu.py) must refuse first; the classic path
   at K ``--search-k``, the cuVS path (a cuVS build) at both K; recall against the torch search.
4. **Density statistics**: ``compute_pool_stats(vectors, "cuda")`` on the same rows: time, memory, finite.

Memory per part: vLLM's share and the pool plan (``/info``), GPU memory in use at ready (NVML), the torch
search's and the density statistics' peak (torch's allocator), FAISS's GPU memory (NVML, in its child).
Prints one table; ``--write`` puts it into docs/benchmarks.md's ``bench:gpu`` section.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from report import write_section

from service import free_port, stop

QWEN_TASK = "Given a web search query, retrieve relevant passages that answer the query"
CARD_QUERIES = ["What is the capital of China?", "Explain gravity"]
CARD_DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to physical objects and is "
    "responsible for the movement of planets around the sun.",
]
CARD_SCORES = np.array([[0.7646, 0.1414], [0.1355, 0.6000]])
BUDGET_S = 8 * 60  # the whole check on one H100/H200
Row = tuple[str, bool, str]  # check, passed, detail
GiB = 2**30


def gib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / GiB:.2f} GiB"


def gpu_used() -> int | None:
    """GPU memory in use on device 0, all processes (NVML), or None where NVML does not answer."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


# --- 1. the service -------------------------------------------------------------------------------
def pool_texts(n: int) -> list[dict[str, str]]:
    """GSM8K-like records of varied length (~30-90 tokens), all distinct."""
    rng = np.random.default_rng(0)
    names = ["Ann", "Bo", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo"]
    things = ["apples", "books", "coins", "marbles", "pencils", "stamps", "tickets", "shells"]
    out = []
    for i in range(n):
        a, b, c = (int(x) for x in rng.integers(2, 500, 3))
        who, what = names[i % len(names)], things[int(rng.integers(len(things)))]
        q = f"Problem {i}: {who} has {a} {what}, buys {b} more and gives {c} away."
        q += " How many are left?" + " Explain each step." * int(rng.integers(0, 4))
        out.append({"question": q, "answer": f"{a} + {b} - {c} = {a + b - c}"})
    return out


def start(
    env: dict[str, str], log: Path, n: int, timeout: float = 1800
) -> tuple[subprocess.Popen[bytes], str, dict[str, float]]:
    """``near-select serve``; waits for /ready: 200, or ``failed`` (RuntimeError with the service's message).
    Returns the process, its URL and the times to the first embedding progress and to ready."""
    port = free_port()
    url, t0 = f"http://127.0.0.1:{port}", time.perf_counter()
    cmd = [sys.executable, "-m", "near_service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    times: dict[str, float] = {}
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited: {log.read_text()[-600:]}")
        try:
            r = httpx.get(f"{url}/ready", timeout=5)
            if r.status_code == 200:
                times["ready"] = time.perf_counter() - t0
                return proc, url, times
            body = r.json()
            if body.get("status") == "failed":
                stop(proc)
                raise RuntimeError(f"service refused: {body.get('message')}")
            progress = body.get("progress") or {}
            if "embed_start" not in times and progress.get("total") == n and progress.get("done", 0) < n:
                times["embed_start"] = time.perf_counter() - t0
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.25)
    stop(proc)
    raise RuntimeError("service not ready in time")


def brute_force(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact float32 top-k on the CPU, rows sorted by score then index (what the service promises)."""
    out_s, out_i = np.empty((len(queries), k), np.float32), np.empty((len(queries), k), np.int64)
    for r, q in enumerate(queries):
        s = np.empty(len(base), np.float32)
        for c0 in range(0, len(base), 1 << 18):
            s[c0 : c0 + (1 << 18)] = base[c0 : c0 + (1 << 18)] @ q
        top = np.argpartition(-s, k - 1)[:k] if k < len(s) else np.arange(len(s))
        kth = s[top].min()
        top = np.concatenate([np.flatnonzero(s > kth), np.flatnonzero(s == kth)])[:k]  # ties: lower index
        order = np.lexsort((top, -s[top]))
        out_s[r], out_i[r] = s[top[order]], top[order]
    return out_s, out_i


def agreement(
    base: np.ndarray, queries: np.ndarray, got: np.ndarray, exact: np.ndarray, tol: float = 1e-5
) -> tuple[float, float, bool]:
    """Mean recall@k of ``got`` against ``exact``, the fraction of rows in exactly the same order, and
    whether every difference is a near-tie: two float32 GEMMs (or a bf16 query embedded in another
    batch) may order scores within ``tol`` differently, never more (scores recomputed in float64)."""
    k = exact.shape[1]
    recall = float(np.mean([len(np.intersect1d(g, e)) / k for g, e in zip(got, exact, strict=True)]))
    same = float(np.mean([np.array_equal(g, e) for g, e in zip(got, exact, strict=True)]))
    ok = True
    for q, g, e in zip(queries.astype(np.float64), got, exact, strict=True):
        order = np.argsort(g)
        sg = np.empty(len(g))
        sg[order] = np.asarray(base[g[order]], np.float64) @ q  # sorted rows: one pass over a memmap
        missing = np.setdiff1d(e, g)
        worst_missing = float((np.asarray(base[missing], np.float64) @ q).max()) if len(missing) else -np.inf
        ok &= bool(np.all(np.diff(sg) <= tol) and worst_missing <= sg.min() + tol)
    return recall, same, ok


def embed(url: str, texts: list[str]) -> np.ndarray:
    r = httpx.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=600)
    r.raise_for_status()
    return np.asarray([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


def service_pool_vectors(cache: Path, n: int, dim: int) -> np.ndarray | None:
    """The pool file the service wrote after embedding (``<cache>/pools/<model>/<fingerprint>.npy``)."""
    for path in sorted(cache.glob("pools/*/*.npy")):
        base = np.load(path, mmap_mode="r")
        if base.shape == (n, dim):
            return base  # type: ignore[no-any-return]
    return None


def search_checks(url: str, base: np.ndarray, queries: list[str], k: int, prompt: str, sample: int) -> list[Row]:
    def ask(_: int) -> tuple[httpx.Response, float]:
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/select", json={"queries": queries, "max_k": k}, timeout=1800)
        return r, time.perf_counter() - t0

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(ask, range(2)))
    codes = [r.status_code for r, _ in answers]
    rows: list[Row] = [
        (
            f"service: 2 clients at once, {len(queries)} queries, K {k}",
            codes == [200, 200],
            f"HTTP {codes}, " + ", ".join(f"{s:.1f} s" for _, s in answers),
        ),
    ]
    if codes != [200, 200]:
        return [*rows, ("service: error body", False, answers[0][0].text[:300])]
    a, b = (r.json() for r, _ in answers)
    rows.append(("service: both clients got the same answer", a["indices"] == b["indices"], ""))
    got = np.asarray(a["indices"], dtype=np.int64)
    rows.append(("service: no -1, no out-of-range index", bool(got.min() >= 0 and got.max() < len(base)), ""))
    picks = np.linspace(0, len(queries) - 1, min(sample, len(queries))).astype(int)
    qvecs = embed(url, [prompt + queries[i] for i in picks])
    exact_s, exact_i = brute_force(base, qvecs, k)
    recall, same, ok = agreement(base, qvecs, got[picks], exact_i)
    score_err = float(np.abs(np.asarray(a["scores"], np.float32)[picks] - exact_s).max())
    name = f"service: top-{k} and order vs CPU brute force ({len(picks)} queries; differences only near-ties)"
    rows.append((name, ok, f"recall {recall:.4f}, {same:.3f} of rows identical, max score diff {score_err:.1e}"))
    return rows


def model_checks(url: str, model_path: str, qwen: bool) -> list[Row]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    ids = tok(CARD_DOCUMENTS[0])["input_ids"]
    end_id = tok.convert_tokens_to_ids("<|endoftext|>") if qwen else tok.sep_token_id
    rows: list[Row] = [
        ("model: last token is the end-of-text id", ids[-1] == end_id, f"last {ids[-1]}, expected {end_id}")
    ]
    if qwen:
        q = embed(url, [f"Instruct: {QWEN_TASK}\nQuery:{t}" for t in CARD_QUERIES])
        scores = q @ embed(url, CARD_DOCUMENTS).T
        ok = bool(np.abs(scores - CARD_SCORES).max() <= 0.01)
        rows.append(("model: Qwen3-Embedding vs model card scores (+-0.01)", ok, np.array2string(scores, precision=4)))
    return rows


def service_k(args: argparse.Namespace) -> int:
    return min(args.k, args.pool_texts // 2)  # the CPU smoke's pool is smaller than its K


def service_part(args: argparse.Namespace, spec: Any, dim: int, work: Path) -> tuple[list[Row], dict[str, Any]]:
    qwen = "qwen3-embedding" in args.model.lower()
    prompt = f"Instruct: {QWEN_TASK}\nQuery:" if qwen else ""
    cands = work / "candidates.jsonl"
    with cands.open("w", encoding="utf-8") as f:
        for rec in pool_texts(args.pool_texts):
            f.write(json.dumps(rec) + "\n")
    env = {
        "NEAR_CANDIDATES": json.dumps([str(cands)]),
        "NEAR_MODEL": args.model,
        "NEAR_DEVICE": args.device,
        "NEAR_MAX_K_LIMIT": str(service_k(args)),
        "NEAR_MAX_QUERIES": str(args.queries),
        "NEAR_GPU_STORAGE": args.storage,
        "NEAR_CACHE_DIR": str(work / "cache"),
        "NEAR_QUERY_INSTRUCTION": QWEN_TASK if qwen else "",
    }
    rows: list[Row] = []
    info: dict[str, Any] = {}
    try:
        proc, url, times = start(env, work / "service.log", args.pool_texts)
    except RuntimeError as exc:  # e.g. the memory plan refused: the service's own message
        return [("service: starts and reports ready", False, str(exc)[-600:].replace("\n", " "))], info
    try:
        info = httpx.get(f"{url}/info", timeout=30).json()
        ready, embed_start = times["ready"], times.get("embed_start")
        detail = f"{ready:.0f} s to ready"
        if embed_start is not None:
            rate = args.pool_texts / max(ready - embed_start, 1e-9)
            detail += (
                f"; model loaded in {embed_start:.0f} s, {args.pool_texts:,} texts embedded at {rate:,.0f} texts/s"
            )
        rows.append(("service: model first, embeds the pool, reports ready", True, detail))
        if args.device == "cuda":
            rows.append(
                ("service: model on CUDA", info.get("device") == "cuda", f"{info.get('backend')}, {info.get('dtype')}")
            )
        mem = info.get("memory") or {}
        plan = ", ".join(f"{k[:-6]} {gib(v)}" for k, v in mem.items() if k.endswith("_bytes") and v is not None)
        share = mem.get("vllm_gpu_memory_utilization")
        rows.append(
            (
                "memory: service",
                True,
                f"GPU in use at ready {gib(gpu_used())}; vLLM share {share}; plan: {plan or 'n/a'}",
            )
        )
        base = service_pool_vectors(work / "cache", args.pool_texts, dim)
        if base is None:
            rows.append(("service: pool vector file for the brute force", False, f"no {args.pool_texts} x {dim} file"))
        else:
            rng = np.random.default_rng(1)
            queries = [f"question {i}: how many {rng.integers(1000)} apples are left" for i in range(args.queries)]
            rows += search_checks(url, base, queries, service_k(args), prompt, args.sample)
        rows += model_checks(url, str(spec.path), qwen)
    finally:
        stop(proc)
    return rows, info


# --- 2. exact torch search ------------------------------------------------------------------------
def random_pool(n: int, dim: int, device: str, seed: int = 0) -> np.ndarray:
    """``n`` random unit rows (float32), made on the GPU where there is one (seconds, not minutes)."""
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    out = np.empty((n, dim), np.float32)
    step = 1 << 17
    for r0 in range(0, n, step):
        x = torch.randn(min(step, n - r0), dim, generator=gen, device=device)
        out[r0 : r0 + len(x)] = torch.nn.functional.normalize(x, dim=1).cpu().numpy()
    return out


def torch_part(args: argparse.Namespace, base: np.ndarray, queries: np.ndarray, work: Path) -> list[Row]:
    import torch

    from near_service.core.index import VectorIndex

    cuda = args.device == "cuda"
    rows: list[Row] = []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    index = VectorIndex(base, device=args.device)
    t0 = time.perf_counter()
    pool_bytes = index.to_device()
    rows.append(
        (f"torch: pool to {args.device}", True, f"{len(base):,} x {base.shape[1]} in {time.perf_counter() - t0:.1f} s")
    )
    picks = np.arange(min(args.sample, len(queries)))
    for k in sorted({args.search_k, args.k}):
        t0 = time.perf_counter()
        _, got = index.search(queries, k)
        took = time.perf_counter() - t0
        if k == args.search_k:
            np.save(work / f"torch_k{k}.npy", got)  # the FAISS child's reference
        recall, same, ok = agreement(base, queries[picks], got[picks], brute_force(base, queries[picks], k)[1])
        name = f"torch: exact search, {len(queries)} queries at K {k}, vs CPU brute force ({len(picks)} queries)"
        rows.append((name, ok, f"{took:.2f} s; recall {recall:.4f}, {same:.3f} of rows identical"))
    peak = torch.cuda.max_memory_allocated() if cuda else None
    rows.append(("memory: torch search", True, f"pool {gib(pool_bytes or None)}, peak allocated {gib(peak)}"))
    del index
    if cuda:
        torch.cuda.empty_cache()
    return rows


# --- 3. FAISS GPU, in a child process (past its k limit faiss aborts the process) -----------------
def faiss_child(work: Path, device: str, ks: list[int]) -> int:
    """Runs in the child: FAISS search on work/pool.npy, rows to work/faiss.json. GPU FAISS is asked only
    what core/gpu.py's guard allows; on a CPU (smoke) faiss.knn stands in for faiss.knn_gpu."""
    import faiss

    from near_service.core import gpu

    base, queries = np.load(work / "pool.npy", mmap_mode="r"), np.load(work / "queries.npy")
    base = np.ascontiguousarray(base)
    rows: list[Row] = []
    cuda = device == "cuda"
    cuvs = gpu.faiss_has_cuvs()
    paths = [False, True] if cuvs else [False]
    if cuda:
        facts = gpu.gpu_facts()
        cap = facts.capability if facts else None
        ok = gpu.faiss_has_gpu() and gpu.faiss_gpu_runs_on(cap)
        rows.append(("faiss: GPU build with kernels for this GPU", ok, f"capability {cap}, cuVS build {cuvs}"))
        if not ok:
            (work / "faiss.json").write_text(json.dumps(rows))
            return 0
        res = faiss.StandardGpuResources()
    for use_cuvs in paths:
        label = "cuVS" if use_cuvs else "classic"
        for k in ks:
            refusal = gpu.faiss_gpu_k_refusal(k, use_cuvs)
            if refusal:  # the guard under test: faiss would abort; the service takes the torch path
                rows.append((f"faiss: {label} K {k} refused before faiss is called", True, refusal))
                continue
            before = gpu_used()
            t0 = time.perf_counter()
            if cuda:
                _, got = faiss.knn_gpu(res, queries, base, k, metric=faiss.METRIC_INNER_PRODUCT, use_cuvs=use_cuvs)
            else:
                _, got = faiss.knn(queries, base, k, metric=faiss.METRIC_INNER_PRODUCT)
            took = time.perf_counter() - t0
            used = gpu_used()
            ref_path = work / f"torch_k{k}.npy"
            detail = f"{took:.2f} s" + (f", GPU memory +{gib(used - before)}" if used and before else "")
            if ref_path.exists():
                recall, _, ok = agreement(base, queries, got, np.load(ref_path))
                name = f"faiss: {label} knn at K {k} vs torch exact (differences only near-ties)"
                rows.append((name, ok, f"{detail}; recall {recall:.4f}"))
            else:
                rows.append((f"faiss: {label} knn at K {k}", bool(got.min() >= 0), detail))
    (work / "faiss.json").write_text(json.dumps(rows))
    return 0


def faiss_part(args: argparse.Namespace, base: np.ndarray, queries: np.ndarray, work: Path) -> list[Row]:
    np.save(work / "pool.npy", base)
    np.save(work / "queries.npy", queries)
    ks = [str(k) for k in sorted({args.search_k, args.k})]
    cmd = [sys.executable, __file__, "--faiss-child", str(work), "--device", args.device, "--faiss-ks", *ks]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    (work / "pool.npy").unlink()
    if out.returncode != 0 or not (work / "faiss.json").exists():
        why = "aborted (SIGABRT: a faiss assert)" if out.returncode == -6 else f"exited {out.returncode}"
        tail = (out.stderr or out.stdout).strip()[-400:].replace("\n", " ")
        return [("faiss: search in its child process", False, f"{why}: {tail}")]
    return [(c, bool(ok), d) for c, ok, d in json.loads((work / "faiss.json").read_text())]


# --- 4. density statistics ------------------------------------------------------------------------
def density_part(args: argparse.Namespace, base: np.ndarray) -> list[Row]:
    import torch

    from near_service.core.density import compute_pool_stats

    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    stats = compute_pool_stats(base, args.device)
    took = time.perf_counter() - t0
    finite = bool(np.isfinite(stats.log_pool).all() and np.isfinite(stats.prefix).all())
    ok = finite and stats.size == len(base)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    return [
        (
            f"density: compute_pool_stats on {len(base):,} x {base.shape[1]}",
            ok,
            f"{took:.1f} s, method {stats.method}, K {stats.k}, h {stats.h:.4f}, finite {finite}",
        ),
        ("memory: density statistics", True, f"peak allocated {gib(peak)}"),
    ]


def render(rows: list[Row], header: str) -> str:
    lines = [header, "", "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {c} | {'pass' if ok else '**MISS**'} | {d} |" for c, ok, d in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="Qwen/Qwen3-Embedding-0.6B")
    parser.add_argument("--pool-texts", type=int, default=100_000, help="texts the service embeds itself")
    parser.add_argument("--rows", type=int, default=1_000_000, help="random unit vectors for parts 2-4")
    parser.add_argument("--k", type=int, default=10000)
    parser.add_argument("--search-k", type=int, default=1000, help="the K within the classic GPU FAISS limit")
    parser.add_argument("--queries", type=int, default=1024)
    parser.add_argument("--sample", type=int, default=8, help="queries checked against the CPU brute force")
    parser.add_argument("--storage", choices=["float32", "float16"], default="float32")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--skip", nargs="*", default=[], choices=["service", "torch", "faiss", "density"])
    parser.add_argument("--cpu-smoke", "--dry-run", action="store_true", help="tiny sizes, packaged MiniLM, CPU")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--faiss-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--faiss-ks", type=int, nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.faiss_child:
        return faiss_child(args.faiss_child, args.device, args.faiss_ks)
    if args.cpu_smoke:  # K 2049 is past the classic GPU FAISS limit: the guard's refusal is shown too
        args.model, args.device = "sentence-transformers/all-MiniLM-L6-v2", "cpu"
        args.pool_texts, args.rows, args.k, args.search_k, args.queries, args.sample = 400, 20000, 2049, 100, 64, 4
    t_start = time.perf_counter()
    from near_service.core.modelspec import resolve_model

    spec = resolve_model(args.model)
    dim = json.loads((spec.path / "config.json").read_text())["hidden_size"]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        if "service" not in args.skip:
            t0 = time.perf_counter()
            part, _ = service_part(args, spec, dim, work)
            rows += [*part, ("time: service part", True, f"{time.perf_counter() - t0:.0f} s")]
        if {"torch", "faiss", "density"} - set(args.skip):
            t0 = time.perf_counter()
            base = random_pool(args.rows, dim, args.device)
            queries = random_pool(args.queries, dim, args.device, seed=1)
            rows.append(("time: random pool", True, f"{args.rows:,} x {dim} in {time.perf_counter() - t0:.1f} s"))
            for name, fn in (("torch", torch_part), ("faiss", faiss_part)):
                if name not in args.skip:
                    t0 = time.perf_counter()
                    rows += [
                        *fn(args, base, queries, work),
                        (f"time: {name} part", True, f"{time.perf_counter() - t0:.0f} s"),
                    ]
            if "density" not in args.skip:
                t0 = time.perf_counter()
                rows += [*density_part(args, base), ("time: density part", True, f"{time.perf_counter() - t0:.0f} s")]
    total = time.perf_counter() - t_start
    on_gpu = args.device == "cuda"
    rows.append(
        (
            "time: whole check" + (f" (budget {BUDGET_S / 60:.0f} min)" if on_gpu else ""),
            total <= BUDGET_S or not on_gpu,
            f"{total:.0f} s",
        )
    )
    from near_service.core.gpu import gpu_facts

    facts = gpu_facts() if on_gpu else None
    where = (
        f"{facts.name}, {gib(facts.total_bytes)}"
        if facts
        else ("CPU smoke run (no GPU)" if args.cpu_smoke else args.device)
    )
    header = f"GPU acceptance check, `bench/gpu_check.py` ({time.strftime('%Y-%m-%d')}, {where}): service pool "
    header += f"{args.pool_texts:,} texts embedded by {args.model}, search and statistics on {args.rows:,} x {dim} "
    header += f"random unit vectors, {args.queries} queries, K {args.search_k} and {args.k}, storage {args.storage}."
    body = render(rows, header)
    print(body)
    if args.write:
        write_section("bench:gpu", body)
    missed = [c for c, ok, _ in rows if not ok]
    if missed:
        print(f"\nMISSED: {'; '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
