"""The dynamic schedule against a static selection, through the real service and ``NearSelectionCallback``.

    python bench/train_dynamic.py [--targets gigaword quartz sciq xsum] [--seeds 2] [--steps 150]

Starts ``near-select serve`` over the t0dev pool (the same disk cache as bench/quality.py, so it
embeds nothing there), then trains the tiny Llama of bench/train_value.py with a plain HF ``Trainer``
and the callback, per target, seed and strategy, on two schedules of the same number of steps:

- **static**: one selection of the target's budget at step 0, asked with the whole target queries
  file (what bench:train_value trains on, here through the callback);
- **dynamic**: ``warmup`` steps on the whole pool, then ``updates`` selections of the budget, every
  ``(steps - warmup) / updates`` steps, each asked with the ``n`` rows of the target's queries file
  of highest loss under the current model (``HighestLossQueries``).

Reports the loss on the target's queries file (mean and std over seeds) and the precision of the
selections. Results go to ``bench:train_dynamic`` in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from report import write_section
from train_value import batch_tensors, encode_all, eval_loss, tiny_llama

from near_service.core.records import load_texts
from service import start_service, stop

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--targets", nargs="+", default=["gigaword", "quartz", "sciq", "xsum"])
    parser.add_argument("--strategy", nargs="+", default=["density", "round_robin"])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--n", type=int, default=16, help="queries: the n highest-loss target rows")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=ROOT / "out" / "bench-quality-cache")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    import torch
    from transformers import Trainer, TrainingArguments

    from near_client import HighestLossQueries, NearClient, NearSelectionCallback

    torch.set_num_threads(2)
    t0 = args.data / "t0dev"
    texts = load_texts([t0 / "candidates.jsonl"], "default", "candidate")
    queries = {t: load_texts([t0 / "queries" / f"{t}.jsonl"], "default", "query") for t in args.targets}
    labels = np.array(json.loads((t0 / "labels.json").read_text()))
    pool_ids, query_ids, vocab = encode_all(texts, queries, 128, 8192)
    every = (args.steps - args.warmup) // args.updates

    log_path = ROOT / "out" / "train_dynamic" / "serve.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {
        "NEAR_CANDIDATES": json.dumps([str(t0 / "candidates.jsonl")]),
        "NEAR_CACHE_DIR": str(args.cache),
        "NEAR_LOG_LEVEL": "warning",
    }
    # (target, schedule, strategy) -> per seed: (loss, precision of each selection)
    results: dict[tuple[str, str, str], list[tuple[float, list[float]]]] = {}
    t_all = time.perf_counter()
    server, url, _ = start_service(env, log_path, timeout=600)  # raises with the log's tail if it exits
    try:
        client = NearClient(url)
        for target in args.targets:
            budget = int((labels == target).sum())
            eval_ids = query_ids[target]
            for seed in range(args.seeds):
                for schedule in ("static", "dynamic"):
                    for strategy in args.strategy:
                        model = tiny_llama(vocab, 128, 128, seed)
                        if schedule == "static":
                            plan: dict[str, Any] = {
                                "queries": queries[target],
                                "warmup_step": 0,
                                "update_step": args.steps,
                                "update_times": 1,
                            }
                        else:
                            features = [{"input_ids": r} for r in eval_ids]
                            plan = {
                                "queries": HighestLossQueries(queries[target], n=args.n, features=features),
                                "warmup_step": args.warmup,
                                "update_step": every,
                                "update_times": args.updates,
                            }
                        callback = NearSelectionCallback(
                            client,
                            **plan,
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
                            seed=seed,
                            save_strategy="no",
                            report_to=[],
                            disable_tqdm=True,
                            use_cpu=True,
                        )
                        trainer = Trainer(
                            model=model,
                            args=training,
                            train_dataset=[{"input_ids": r} for r in pool_ids],
                            data_collator=collate,
                        )
                        callback.attach(trainer)
                        trainer.train()
                        loss = eval_loss(model, eval_ids, vocab)
                        precision = [
                            float((labels[np.asarray(h["indices"])] == target).mean()) for h in callback.history
                        ]
                        results.setdefault((target, schedule, strategy), []).append((loss, precision))
                        print(target, seed, schedule, strategy, f"{loss:.3f}", precision, flush=True)
    finally:
        stop(server)
    budgets = {t: int((labels == t).sum()) for t in args.targets}
    text = render(results, budgets, args, every, time.perf_counter() - t_all)
    print(text)
    if not args.no_write:
        write_section("bench:train_dynamic", text)


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    ids, mask, lab = batch_tensors([b["input_ids"] for b in batch])
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}


def render(
    results: dict[tuple[str, str, str], list[tuple[float, list[float]]]],
    budgets: dict[str, int],
    args: argparse.Namespace,
    every: int,
    seconds: float,
) -> str:
    combos = [(sch, st) for sch in ("static", "dynamic") for st in args.strategy]
    lines = [
        f"Dynamic schedule, `bench/train_dynamic.py` ({time.strftime('%Y-%m-%d')}): the real service "
        "(`near-select serve`, t0dev pool) and `NearSelectionCallback` on an HF `Trainer`, training the tiny "
        f"Llama of bench:train_value from scratch for {args.steps} steps of batch 8 per run; {args.seeds} seeds "
        "per cell. **static**: one selection of the target's budget at step 0, asked with the whole target "
        f"queries file. **dynamic**: {args.warmup} steps on the whole pool, then {args.updates} selections of "
        f"the budget every {every} steps, each asked with the {args.n} target rows of highest loss under the "
        "current model (`HighestLossQueries`). max_k 200. Loss on the target's queries file, mean ± std over "
        "seeds (lower is better); in brackets the mean precision of the selections.",
        "",
        "| target | budget | " + " | ".join(f"{sch} {st}" for sch, st in combos) + " |",
        "|---|---|" + "---|" * len(combos),
    ]
    means: dict[tuple[str, str], list[float]] = {}
    for target in args.targets:
        cells = []
        for sch, st in combos:
            runs = results.get((target, sch, st), [])
            losses = [r[0] for r in runs]
            prec = [p for r in runs for p in r[1]]
            means.setdefault((sch, st), []).append(float(np.mean(losses)))
            cells.append(f"{np.mean(losses):.3f} ± {np.std(losses):.3f} ({np.mean(prec):.2f})")
        lines.append(f"| {target} | {budgets[target]} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | | " + " | ".join(f"**{np.mean(means[c]):.3f}**" for c in combos) + " |")
    lines += ["", f"- Whole run: {seconds:.0f}s."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
