"""One measured embedding run for bench/peers.py, in a fresh process (and, for a peer, in its own venv).

    python bench/peers_worker.py st|ours TEXTS.json OUT.npy MODEL_PATH   -> prints one JSON line

``st``: plain sentence-transformers ``encode`` (its default batch size 32), what a user writes.
``ours``: NEAR Select's pool-embedding path, ``Embedder.embed`` (no cache), run in our venv.
The model is loaded and warmed on a few other texts first; the timed part is the embedding only.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

WARM = ["warm up the model", "a second short text to warm up with"]


def main() -> None:
    mode, texts_file, out_file, model_path = sys.argv[1:5]
    texts = json.loads(Path(texts_file).read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    if mode == "st":
        import torch
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(model_path, device="cpu")
        model.encode(WARM)
        load_s = time.perf_counter() - t0
        t = time.perf_counter()
        vecs = np.asarray(model.encode(texts, batch_size=32), dtype=np.float32)
        seconds = time.perf_counter() - t
        dtype, threads = str(next(model.parameters()).dtype).removeprefix("torch."), torch.get_num_threads()
    elif mode == "ours":
        import torch

        from near_service.core.embedder import Embedder
        from near_service.core.settings import load_settings

        embedder = Embedder.from_settings(load_settings(model=model_path, cache_dir=""))
        embedder.embed(WARM)
        load_s = time.perf_counter() - t0
        t = time.perf_counter()
        vecs = embedder.embed(texts)
        seconds = time.perf_counter() - t
        dtype, threads = embedder.dtype, torch.get_num_threads()
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    np.save(out_file, vecs)
    print(json.dumps({"seconds": seconds, "load_s": load_s, "dtype": dtype, "threads": threads}))


if __name__ == "__main__":
    main()
