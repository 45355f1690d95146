"""NearSelectionCallback under TRL's ``SFTTrainer`` (tiny random Llama on CPU) against a real service + Redis.

The schedule of tests/client/test_callback.py: 48 samples, batch 4, gradient accumulation 2; warmup
6 steps (one pass over the pool), then an update every 2 steps, 3 times (steps 6, 8, 10), budget 16.
The dataset is pre-tokenized (SFTTrainer then leaves it as it is), and sample ``i`` starts with token
``ID0 + i``, so the model's inputs say which samples the trainer's sampler served.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from near_client import NearClient, NearSelectionCallback, RetryPolicy
from tests.conftest import ServiceProcess

from .kit import POOL_SIZE, TOPIC_QUERIES, VOCAB, Recorder, check_stream, pool_texts, queries_by_step, tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.dataflex]  # dataflex: `pytest -m dataflex` runs it with the DataFlex runs
trl = pytest.importorskip("trl", reason="TRL is in the train extra: pip install 'near-select[train]'")

BS, GA, WARMUP, EVERY, STEPS = 4, 2, 6, 2, 14
BUDGET = BS * GA * EVERY


def word_tokenizer() -> Any:
    """A word-level tokenizer over the tiny model's vocabulary, built locally (SFTTrainer wants one)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, **{f"t{i}": i for i in range(2, VOCAB)}}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")), pad_token="<pad>", eos_token="</s>"
    )


def test_callback_under_trl_sft_trainer(near: ServiceProcess, tmp_path: Path, report: Callable[[str], None]) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from .kit import train_dataset

    model = tiny_model()
    rec = Recorder(model)
    rows = train_dataset()
    dataset = Dataset.from_list([{"input_ids": r["input_ids"]} for r in rows])
    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=BS,
        gradient_accumulation_steps=GA,
        max_steps=STEPS,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        seed=0,
        logging_steps=1000,
        disable_tqdm=True,
        save_strategy="no",
        packing=False,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=word_tokenizer())
    client = NearClient(near.url, retry=RetryPolicy(attempts=2, backoff=0.05))
    callback = NearSelectionCallback(
        client,
        queries=queries_by_step(WARMUP, EVERY),
        warmup_step=WARMUP,
        update_step=EVERY,
        update_times=3,
        max_k=16,
        run_id="trl-sft",
        pool_texts=pool_texts(),
    )
    callback.attach(trainer)
    start = time.monotonic()
    try:
        trainer.train()
    finally:
        client.close()
        report(f"[trl] callback under SFTTrainer, {STEPS} steps: {time.monotonic() - start:.1f} s")
    assert trainer.state.global_step == STEPS
    assert [(h["round"], h["step"]) for h in callback.history] == [(0, 6), (1, 8), (2, 10)]
    assert len({tuple(sorted(h["indices"])) for h in callback.history}) == 3
    # what the model was fed: one shuffled pass over the pool, then only each round's selection
    check_stream(rec.flat, callback.history, batch=BS, depth=1, budget=BUDGET, pool=POOL_SIZE, per_step=BS * GA)
    with NearClient(near.url) as c:  # and the rounds are the service's: its ledger answers them identically
        stored = [c.select(TOPIC_QUERIES[r], 16, budget=BUDGET, run_id="trl-sft", round=r).selected for r in range(3)]
    assert stored == [h["indices"] for h in callback.history]
