"""What the callback tests share: a tiny pool, a tiny random causal LM, a recorder, stream checks.

Sample ``i`` of the training dataset starts with token ``ID0 + i``, so the first token of every row
the model receives says which sample it is.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, Trainer

ID0, VOCAB, SEQ = 60, 128, 8
POOL_SIZE = 48
SUBJECTS = [
    ("Tom has {a} apples and buys {b} more. How many apples does he have?", "math"),
    ("Simmer {a} cups of tomato sauce with {b} cloves of garlic for the pasta.", "cooking"),
    ("The striker scored {a} goals in {b} football matches this season.", "football"),
    ("The telescope found {a} new moons orbiting a planet {b} light years away.", "astronomy"),
]
MATH_QUERIES = [
    "A shop sells 7 pencils and then 5 more. How many pencils were sold?",
    "Sara has 12 apples and gives away 4. How many apples are left?",
]
TOPIC_QUERIES = [
    ["Sara has 12 apples and gives away 4. How many apples are left?"],
    ["Fry the onions and garlic, then simmer the tomato sauce."],
    ["The goalkeeper saved a penalty in the football match."],
]


def queries_by_step(warmup: int, every: int) -> Callable[[Any, Any], list[str]]:
    """A query callable whose texts change each round (so that every selection differs)."""

    def queries(model: Any, state: Any) -> list[str]:
        r = min(max(0, (state.global_step - warmup) // every), len(TOPIC_QUERIES) - 1)
        return TOPIC_QUERIES[r]

    return queries


def pool_texts(n: int = POOL_SIZE) -> list[str]:
    out = []
    for i in range(n):
        template, _ = SUBJECTS[i % len(SUBJECTS)]
        out.append(template.format(a=i % 9 + 2, b=i // 4 + 1))
    return out


def write_pool(path: Path, texts: Sequence[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def train_dataset(n: int = POOL_SIZE) -> list[dict[str, list[int]]]:
    rows = []
    for i in range(n):
        ids = [ID0 + i] + [5 + (i * 7 + j * 3) % 50 for j in range(SEQ - 1)]
        rows.append({"input_ids": ids, "labels": list(ids)})
    return rows


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)


class Recorder:
    """Records the sample ids of every training micro-batch the model receives, in order."""

    def __init__(self, model: Any) -> None:
        self.batches: list[list[int]] = []
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        if module.training and "input_ids" in kwargs:
            self.batches.append([int(t) - ID0 for t in kwargs["input_ids"][:, 0]])

    @property
    def flat(self) -> list[int]:
        return [i for b in self.batches for i in b]


def make_trainer(
    model: Any,
    dataset: Any,
    out_dir: Path,
    *,
    max_steps: int,
    bs: int = 4,
    ga: int = 2,
    workers: int = 0,
    save_steps: int | None = None,
    callbacks: Sequence[Any] = (),
) -> Trainer:
    from transformers import Trainer, TrainingArguments, default_data_collator

    args = TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=bs,
        gradient_accumulation_steps=ga,
        max_steps=max_steps,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=workers,
        logging_steps=1000,
        disable_tqdm=True,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
    )
    return Trainer(
        model=model, args=args, train_dataset=dataset, data_collator=default_data_collator, callbacks=list(callbacks)
    )


def check_stream(
    flat: Sequence[int],
    history: Sequence[dict[str, Any]],
    *,
    batch: int,
    depth: int,
    budget: int,
    pool: int = POOL_SIZE,
    per_step: int,
) -> None:
    """The fed stream (sample ids by stream position) against the callback's updates.

    ``batch``: samples per stream batch; ``depth``: the staleness bound in batches; ``per_step``:
    stream positions one optimizer step consumes.
    """
    first = history[0]["start"] if history else len(flat)
    warm = list(flat[: min(first, pool)])
    assert len(set(warm)) == len(warm), "warmup repeats a sample within a pass"
    if first >= pool:  # a whole warmup pass: every pool sample once, shuffled
        assert sorted(warm) == list(range(pool)) and warm != sorted(warm)
    starts = [h["start"] for h in history]
    for r, h in enumerate(history):
        consumed = h["step"] * per_step
        assert len(h["indices"]) == budget == len(set(h["indices"]))
        # the update reaches every position from its step on, but for at most `depth` batches
        assert consumed <= h["start"] <= consumed + depth * batch, (r, consumed, h["start"])
        end = starts[r + 1] if r + 1 < len(history) else len(flat)
        assert flat[h["start"] : end], f"round {r} never trained"
        if h["start"] + budget <= end:  # a whole pass fits: each selected sample exactly once
            assert Counter(flat[h["start"] : h["start"] + budget]) == Counter(h["indices"])
    # every position comes from the phase it falls in: the pool before the first update, then the
    # latest selection whose start it has passed
    phases = [set(range(pool))] + [set(h["indices"]) for h in history]
    for p, sample in enumerate(flat):
        k = bisect.bisect_right(starts, p)
        assert sample in phases[k], f"position {p}: sample {sample} not in phase {k - 1}'s selection"
