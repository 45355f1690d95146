"""The dynamic schedule through the real service and ``NearSelectionCallback`` (one target).

    python bench/train_dynamic.py [--target gigaword] [--steps 150] [--strategy density]

Starts ``near-select serve`` over the t0dev pool (the same disk cache as bench/quality.py, so it
embeds nothing there), then trains the tiny Llama of bench/train_value.py with a plain HF
``Trainer``: ``warmup`` steps on the whole pool, then ``updates`` selections of the target's budget,
every ``(steps - warmup) / updates`` steps, whose queries are the ``n`` rows of the target's queries
file with the highest loss under the current model (``HighestLossQueries``). Reports the loss on the
target's queries file, next to the static subsets' at the same number of steps (bench:train_value).
Results go to ``bench:train_dynamic`` in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from report import write_section
from train_value import batch_tensors, encode_all, eval_loss, tiny_llama

from near_service.core.records import load_texts

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--target", default="gigaword")
    parser.add_argument("--strategy", nargs="+", default=["density", "round_robin"])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--n", type=int, default=16, help="queries: the n highest-loss target rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=ROOT / "out" / "bench-quality-cache")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    import torch
    from transformers import Trainer, TrainingArguments

    from near_client import HighestLossQueries, NearClient, NearClientError, NearSelectionCallback

    torch.set_num_threads(2)
    t0 = args.data / "t0dev"
    texts = load_texts([t0 / "candidates.jsonl"], "default", "candidate")
    queries = load_texts([t0 / "queries" / f"{args.target}.jsonl"], "default", "query")
    labels = np.array(json.loads((t0 / "labels.json").read_text()))
    budget = int((labels == args.target).sum())
    pool_ids, query_ids, vocab = encode_all(texts, {args.target: queries}, 128, 8192)
    eval_ids = query_ids[args.target]

    port = free_port()
    env = {**os.environ, "NEAR_LOG_LEVEL": "warning"}
    cmd = [sys.executable, "-m", "near_service.cli", "serve", "--candidates", str(t0 / "candidates.jsonl")]
    cmd += ["--cache-dir", str(args.cache), "--port", str(port)]
    log_path = ROOT / "out" / "train_dynamic" / "serve.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(cmd, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    rows: list[str] = []
    try:
        client = NearClient(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 600
        while True:
            try:
                client.wait_ready(timeout=5, interval=0.5)
                break
            except NearClientError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the service did not become ready:\n{log_path.read_text()[-2000:]}") from None
        every = (args.steps - args.warmup) // args.updates
        for strategy in args.strategy:
            model = tiny_llama(vocab, 128, 128, args.seed)
            callback = NearSelectionCallback(
                client,
                queries=HighestLossQueries(queries, n=args.n, features=[{"input_ids": r} for r in eval_ids]),
                warmup_step=args.warmup,
                update_step=every,
                update_times=args.updates,
                max_k=200,
                budget=budget,
                strategy=strategy,
                pool_texts=texts,
                use_ledger=False,
            )
            training = TrainingArguments(
                output_dir=str(ROOT / "out" / "train_dynamic"),
                per_device_train_batch_size=8,
                learning_rate=3e-3,
                weight_decay=0.0,
                warmup_steps=0,
                lr_scheduler_type="constant",
                max_steps=args.steps,
                seed=args.seed,
                save_strategy="no",
                report_to=[],
                disable_tqdm=True,
                use_cpu=True,
            )

            def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
                ids, mask, lab = batch_tensors([b["input_ids"] for b in batch])
                return {"input_ids": ids, "attention_mask": mask, "labels": lab}

            trainer = Trainer(
                model=model,
                args=training,
                train_dataset=[{"input_ids": r} for r in pool_ids],
                data_collator=collate,
            )
            callback.attach(trainer)
            t = time.perf_counter()
            trainer.train()
            loss = eval_loss(model, eval_ids, vocab)
            precision = [float((labels[np.asarray(h["indices"])] == args.target).mean()) for h in callback.history]
            rows.append(
                f"| {strategy} | {loss:.3f} | {', '.join(f'{p:.2f}' for p in precision)} | "
                f"{time.perf_counter() - t:.0f} s |"
            )
            print(rows[-1], flush=True)
    finally:
        server.terminate()
        server.wait(30)
    text = "\n".join(
        [
            f"Dynamic schedule, `bench/train_dynamic.py` ({time.strftime('%Y-%m-%d')}): the real service "
            f"(`near-select serve`, t0dev pool) and `NearSelectionCallback` on an HF `Trainer`; the tiny Llama of "
            f"bench:train_value (hidden 128, seed {args.seed}); target {args.target} (budget {budget}); "
            f"{args.steps} steps of batch 8: {args.warmup} on the whole pool, then {args.updates} selections "
            f"every {every} steps, each asked with the {args.n} target rows of highest loss under the current "
            "model (`HighestLossQueries`), max_k 200. Loss on the target's queries file (lower is better); "
            "precision of each round's selection.",
            "",
            "| strategy | loss | precision per round | train time |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    print(text)
    if not args.no_write:
        write_section("bench:train_dynamic", text)


if __name__ == "__main__":
    main()
