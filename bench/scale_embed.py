"""``bench/scale.py --embed``: ``near-select embed`` in one process vs on a local Ray instance.

Embeds the same GSM8K train texts (real text, the packaged MiniLM, dtype auto) into a fresh pool
store twice: once in this process, once with ``--ray`` on ``ray.init(num_cpus=2)`` (2 actors x 1 CPU),
and writes texts/s into the ``bench:ray`` section of docs/scaling.md.
"""

from __future__ import annotations

import time
from pathlib import Path

from report import cpu_name, write_section

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
DOC = ROOT / "docs" / "scaling.md"


def measure_embed(work: Path, write: bool, n: int = 2048) -> int:
    import json
    import shutil

    import ray

    from near_service.cli.embed import embed_pool
    from near_service.core.records import load_texts
    from near_service.core.settings import load_settings

    texts = load_texts([DATA / "gsm8k" / "train.jsonl"], "default", "candidate")[:n]
    pool = work / f"embed-pool-{n}.jsonl"
    pool.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    rows = []
    for mode in ("one process (2 torch threads)", "local Ray, 2 actors x 1 CPU"):
        cache = work / "embed-cache"
        shutil.rmtree(cache, ignore_errors=True)
        settings = load_settings(candidates=[pool], cache_dir=cache)
        t = time.perf_counter()
        if mode.startswith("local Ray"):
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            started = time.perf_counter() - t
            r = embed_pool(settings, ray_address="local", block_rows=256)
            ray.shutdown()
        else:
            started = 0.0
            r = embed_pool(settings, block_rows=256)
        total = time.perf_counter() - t
        again = embed_pool(settings, block_rows=256)  # the rerun: nothing to embed
        rows.append((mode, r.texts_embedded, total, started, again.texts_embedded))
        print(rows[-1], flush=True)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {cpu_name()}, 2 cores, no GPU (shared with other work): "
        f"{n} GSM8K train texts, packaged all-MiniLM-L6-v2, dtype auto, blocks of 256 texts, fresh store each.",
        "",
        "| run | texts embedded | wall (incl. Ray start and model loads) | Ray start | texts/s | rerun embeds |",
        "|---|---|---|---|---|---|",
    ]
    for mode, done, total, started, rerun in rows:
        lines.append(f"| {mode} | {done} | {total:.1f} s | {started:.1f} s | {done / total:.0f} | {rerun} |")
    text = "\n".join(lines)
    print(text)
    if write:
        write_section("bench:ray", text, DOC)
    return 0
