"""GPU acceptance check: the real service, as in production, on a pool sized to stress memory. Exit 1 on any miss.

    python bench/gpu_check.py [--pool 2000000] [--k 10000] [--queries 1024] [--storage float32] [--write]
    python bench/gpu_check.py --cpu-smoke      # tiny pool, packaged MiniLM, CPU: checks this script itself

1. A synthetic pool of random unit vectors (``--pool`` x the model's size) is imported through
   ``NEAR_EMBEDDINGS`` (vectors file + manifest), so nothing is embedded but the queries.
2. ``near-select serve`` starts as in production: the model (vLLM on CUDA) loads first, then the
   memory plan, the pool's copy to the GPU and a warm-up search, then ``/ready``. A refusal to start
   (the pool does not fit) is a miss, with the service's message.
3. Two clients ``POST /select`` at once, ``--queries`` queries each at ``max_k = --k``: both 200, same answer.
4. A CPU brute force (numpy float32, ties to the lower index) over the same vectors, for a sample
   of the queries embedded through ``/v1/embeddings`` with the query prompt: recall@K must be 1.0.
5. Qwen3-Embedding against its model card's scores ([[0.7646, 0.1414], [0.1355, 0.6000]], +- 0.01),
   and the tokenizer ends each text with the end-of-text token (the last-token pooling reads it).

Prints a Markdown table; ``--write`` puts it into docs/benchmarks.md's ``bench:gpu`` section.
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
Row = tuple[str, bool, str]  # check, passed, detail


def write_pool(workdir: Path, n: int, dim: int, model: str, seed: int = 0) -> dict[str, str]:
    """The pool-vector step: candidates + random unit vectors + manifest, imported by the service
    through NEAR_EMBEDDINGS (``near-select import`` reads the same files). Returns the env to add."""
    cands = workdir / "candidates.jsonl"
    with cands.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"question": f"synthetic question {i}", "answer": f"answer {i}"}) + "\n")
    path = workdir / "vectors.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    rng = np.random.default_rng(seed)
    for r0 in range(0, n, 65536):
        x = rng.standard_normal((min(65536, n - r0), dim), dtype=np.float32)
        out[r0 : r0 + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    del out
    (workdir / "vectors.npy.json").write_text(json.dumps({"model": model, "dims": dim, "count": n}))
    return {"NEAR_CANDIDATES": json.dumps([str(cands)]), "NEAR_EMBEDDINGS": str(path)}


def start(env: dict[str, str], log: Path, timeout: float = 3600) -> tuple[subprocess.Popen[bytes], str, float]:
    """``near-select serve``; waits for /ready: 200, or ``failed`` (RuntimeError with the service's message)."""
    port = free_port()
    url, t0 = f"http://127.0.0.1:{port}", time.perf_counter()
    cmd = [sys.executable, "-m", "near_service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited: {log.read_text()[-600:]}")
        try:
            r = httpx.get(f"{url}/ready", timeout=5)
            if r.status_code == 200:
                return proc, url, time.perf_counter() - t0
            if r.json().get("status") == "failed":
                stop(proc)
                raise RuntimeError(f"service refused: {r.json().get('message')}")
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
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


def embed(url: str, texts: list[str]) -> np.ndarray:
    r = httpx.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=600)
    r.raise_for_status()
    return np.asarray([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


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
            f"2 clients at once, {len(queries)} queries, K {k}",
            codes == [200, 200],
            f"HTTP {codes}, " + ", ".join(f"{s:.1f} s" for _, s in answers),
        ),
    ]
    if codes != [200, 200]:
        return [*rows, ("error body", False, answers[0][0].text[:300])]
    a, b = (r.json() for r, _ in answers)
    rows.append(("both clients got the same answer", a["indices"] == b["indices"], ""))
    got = np.asarray(a["indices"], dtype=np.int64)
    rows.append(("no -1, no out-of-range index", bool(got.min() >= 0 and got.max() < len(base)), ""))
    picks = np.linspace(0, len(queries) - 1, min(sample, len(queries))).astype(int)
    qvecs = embed(url, [prompt + queries[i] for i in picks])
    t0 = time.perf_counter()
    exact_s, exact_i = brute_force(base, qvecs, k)
    recall = np.mean([len(np.intersect1d(got[p], e)) / k for p, e in zip(picks, exact_i, strict=True)])
    order = float(np.mean([np.array_equal(got[p], e) for p, e in zip(picks, exact_i, strict=True)]))
    score_err = float(np.abs(np.asarray(a["scores"], np.float32)[picks] - exact_s).max())
    rows.append((f"recall@{k} vs CPU brute force ({len(picks)} queries)", recall == 1.0, f"{recall:.4f}"))
    rows.append(("same order as the brute force", order == 1.0, f"{order:.3f} of rows; max score diff {score_err:.1e}"))
    rows.append(("CPU brute force time", True, f"{time.perf_counter() - t0:.1f} s"))
    return rows


def model_checks(url: str, model_path: str, qwen: bool) -> list[Row]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    ids = tok(CARD_DOCUMENTS[0])["input_ids"]
    end_id = tok.convert_tokens_to_ids("<|endoftext|>") if qwen else tok.sep_token_id
    rows: list[Row] = [("last token is the end-of-text id", ids[-1] == end_id, f"last {ids[-1]}, expected {end_id}")]
    if qwen:
        q = embed(url, [f"Instruct: {QWEN_TASK}\nQuery:{t}" for t in CARD_QUERIES])
        scores = q @ embed(url, CARD_DOCUMENTS).T
        ok = bool(np.abs(scores - CARD_SCORES).max() <= 0.01)
        rows.append(("Qwen3-Embedding vs model card scores (+-0.01)", ok, np.array2string(scores, precision=4)))
    return rows


def render(rows: list[Row], info: dict[str, Any], header: str) -> str:
    mem = info.get("memory") or {}
    gib = {k: f"{v / 2**30:.2f} GiB" for k, v in mem.items() if k.endswith("_bytes") and v is not None}
    lines = [header, "", "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {c} | {'pass' if ok else '**MISS**'} | {d} |" for c, ok, d in rows]
    plan = ", ".join(f"{k} {v}" for k, v in gib.items())
    lines += ["", f"Service: {info.get('backend')} {info.get('dtype')} on {info.get('device')}; memory plan: {plan}, "]
    lines[-1] += f"storage {mem.get('storage')}, vLLM share {mem.get('vllm_gpu_memory_utilization')}."
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="Qwen/Qwen3-Embedding-0.6B")
    parser.add_argument("--pool", type=int, default=2_000_000)
    parser.add_argument("--k", type=int, default=10000)
    parser.add_argument("--queries", type=int, default=1024)
    parser.add_argument("--sample", type=int, default=16, help="queries checked against the CPU brute force")
    parser.add_argument("--storage", choices=["float32", "float16"], default="float32")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny pool, packaged MiniLM, CPU, no vLLM")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if args.cpu_smoke:
        args.model, args.pool, args.k, args.queries, args.sample = (
            "sentence-transformers/all-MiniLM-L6-v2",
            3000,
            500,
            64,
            8,
        )
    from near_service.core.modelspec import resolve_model

    spec = resolve_model(args.model)
    qwen = "qwen3-embedding" in args.model.lower()
    dim = json.loads((spec.path / "config.json").read_text())["hidden_size"]
    prompt = f"Instruct: {QWEN_TASK}\nQuery:" if qwen else ""
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        env = write_pool(work, args.pool, dim, args.model)
        env |= {
            "NEAR_MODEL": args.model,
            "NEAR_DEVICE": "cpu" if args.cpu_smoke else "cuda",
            "NEAR_MAX_K_LIMIT": str(args.k),
            "NEAR_MAX_QUERIES": str(args.queries),
            "NEAR_GPU_STORAGE": args.storage,
            "NEAR_CACHE_DIR": str(work / "cache"),
            "NEAR_QUERY_INSTRUCTION": QWEN_TASK if qwen else "",
        }
        log = work / "service.log"
        rows: list[Row] = []
        info: dict[str, Any] = {}
        try:
            proc, url, ready_s = start(env, log)
        except RuntimeError as exc:  # e.g. the memory plan refused: the service's own message
            rows.append(("service starts and reports ready", False, str(exc)[-600:].replace("\n", " ")))
        else:
            try:
                info = httpx.get(f"{url}/info", timeout=30).json()
                rows.append(("service starts (model first) and reports ready", True, f"{ready_s:.0f} s"))
                if not args.cpu_smoke:
                    rows.append(("model on CUDA", info["device"] == "cuda", f"{info['backend']}, {info['dtype']}"))
                base = np.load(work / "vectors.npy", mmap_mode="r")
                rng = np.random.default_rng(1)
                queries = [f"question {i}: how many {rng.integers(1000)} apples" for i in range(args.queries)]
                rows += search_checks(url, base, queries, args.k, prompt, args.sample)
                rows += model_checks(url, str(spec.path), qwen)
            finally:
                stop(proc)
    where = "CPU smoke run (no GPU)" if args.cpu_smoke else "GPU"
    header = (
        f"GPU acceptance check, `bench/gpu_check.py` ({time.strftime('%Y-%m-%d')}, {where}): pool {args.pool} x {dim}, "
    )
    header += f"{args.queries} queries, K {args.k}, model {args.model}, storage {args.storage}."
    body = render(rows, info, header)
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
