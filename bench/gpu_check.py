"""GPU checks, for a machine with a CUDA GPU (H100/H200 included): the exact torch search path and vLLM.

    python bench/gpu_check.py [--model Qwen/Qwen3-Embedding-0.6B] [--pool 1000000] [--k 10000]

1. Exact search on CUDA (``torch_topk``): random unit vectors, K up to 10000, checked against a CPU
   numpy brute force on a sample of queries (recall@K must be 1.0), with timings.
2. Embeddings: vLLM vs sentence-transformers for ``--model`` (needs the model in the local HF cache
   or a reachable hub), cosine per text, tokens/s of each.

Prints a Markdown block; with ``--write`` it replaces the ``bench:gpu`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from report import write_section


def search_check(n: int, d: int, q: int, k: int) -> list[str]:
    import torch

    from near_service.core.index import torch_topk

    rng = np.random.default_rng(0)
    base = rng.standard_normal((n, d), dtype=np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries = base[rng.choice(n, q, replace=False)] + 0.1 * rng.standard_normal((q, d), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    torch_topk(base[:1000], queries[:2], 10, "cuda")  # warm up CUDA
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    _, idx, _ = torch_topk(base, queries, k, "cuda")
    torch.cuda.synchronize()
    gpu_s = time.perf_counter() - t0
    sample = rng.choice(q, min(8, q), replace=False)
    s = queries[sample] @ base.T
    exact = np.argsort(-s, axis=1, kind="stable")[:, :k]
    recall = np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(idx[sample], exact, strict=True)])
    name = torch.cuda.get_device_name(0)
    return [
        f"- Exact search on {name}: pool {n} x {d}, {q} queries, K {k}: {gpu_s:.2f}s, "
        f"recall@{k} vs CPU brute force (8 queries) = {recall:.4f}, no -1: {bool(idx.min() >= 0)}"
    ]


def embed_check(model: str, texts: list[str]) -> list[str]:
    from near_service.core.embedder import Embedder
    from near_service.core.settings import Settings

    out = []
    vecs = {}
    for backend in ("sentence-transformers", "vllm"):
        emb = Embedder.from_settings(Settings(model=model, backend=backend, device="cuda", cache_dir=None))  # type: ignore[arg-type]
        emb.load()
        t0 = time.perf_counter()
        vecs[backend] = emb.embed(texts, "document")
        out.append(f"- {backend} ({emb.dtype}): {len(texts)} texts in {time.perf_counter() - t0:.2f}s")
    cos = np.sum(vecs["vllm"] * vecs["sentence-transformers"], axis=1)
    out.append(f"- vLLM vs sentence-transformers cosine: min {cos.min():.5f}, mean {cos.mean():.5f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="Qwen/Qwen3-Embedding-0.6B")
    parser.add_argument("--pool", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--k", type=int, default=10000)
    parser.add_argument("--skip-embed", action="store_true")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    lines = [f"GPU checks, `bench/gpu_check.py` ({time.strftime('%Y-%m-%d')}):", ""]
    lines += search_check(args.pool, args.dim, args.queries, args.k)
    if not args.skip_embed:
        texts = [
            f"Sample {i}: a grade-school math problem about {i % 97} apples and {i % 13} trains." for i in range(2000)
        ]
        lines += embed_check(args.model, texts)
    body = "\n".join(lines)
    print(body)
    if args.write:
        write_section("bench:gpu", body)


if __name__ == "__main__":
    main()
