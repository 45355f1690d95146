"""NearSelectionCallback in a real Trainer (tiny random Llama on CPU) against a real service + Redis.

The two-process test runs tests/client/dist_train.py under torchrun (gloo on CPU).

Schedule in these tests: 48 samples, batch 4, gradient accumulation 2 (8 samples per step, 6 steps
per epoch); warmup 6 steps (one whole pass over the pool), then an update every 2 steps, 3 times
(steps 6, 8, 10), budget 4 x 2 x 2 = 16; 14 steps in all. Each round asks about another topic.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerCallback

from near_client import NearClient, NearSelectionCallback, PoolMismatchError, RetryPolicy
from tests.conftest import RedisServer, ServiceFactory, ServiceProcess, free_port

from .kit import (
    POOL_SIZE,
    TOPIC_QUERIES,
    Recorder,
    check_stream,
    make_trainer,
    pool_texts,
    queries_by_step,
    tiny_model,
    train_dataset,
)

BS, GA, WARMUP, EVERY, STEPS = 4, 2, 6, 2, 14
BUDGET = BS * GA * EVERY
D_WARMUP, D_EVERY, D_STEPS, WORLD = 3, 2, 9, 2  # the two-process run


def run(
    url: str,
    out: Path,
    *,
    workers: int = 0,
    save_steps: int | None = None,
    resume: str | None = None,
    callbacks: tuple[Any, ...] = (),
    dataset: Any = None,
    **cb: Any,
) -> tuple[NearSelectionCallback, Recorder, Any]:
    model = tiny_model()
    rec = Recorder(model)
    client = NearClient(url, retry=RetryPolicy(attempts=2, backoff=0.05))
    kwargs: dict[str, Any] = {
        "warmup_step": WARMUP,
        "update_step": EVERY,
        "update_times": 3,
        "max_k": 16,
        "queries": queries_by_step(WARMUP, EVERY),
        **cb,
    }
    callback = NearSelectionCallback(client, **kwargs)
    trainer = make_trainer(
        model,
        dataset if dataset is not None else train_dataset(),
        out,
        max_steps=STEPS,
        bs=BS,
        ga=GA,
        workers=workers,
        save_steps=save_steps,
        callbacks=callbacks,
    )
    callback.attach(trainer)
    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        client.close()
    return callback, rec, trainer


def ledger_answers(url: str, run_id: str, rounds: list[int]) -> list[list[int] | None]:
    with NearClient(url) as client:
        return [client.select(TOPIC_QUERIES[r], 16, budget=BUDGET, run_id=run_id, round=r).selected for r in rounds]


@pytest.mark.parametrize("workers", [0, 2])
def test_fed_samples_follow_each_selection(near: ServiceProcess, tmp_path: Path, workers: int) -> None:
    callback, rec, trainer = run(
        near.url, tmp_path / "out", workers=workers, pool_texts=pool_texts(), run_id=f"stream-{workers}"
    )
    assert trainer.state.global_step == STEPS
    assert [(h["round"], h["step"]) for h in callback.history] == [(0, 6), (1, 8), (2, 10)]
    # warmup: one whole shuffled pass; after each update (past the staleness bound) only its selection
    check_stream(rec.flat, callback.history, batch=BS, depth=1 + workers * 2, budget=BUDGET, per_step=BS * GA)
    assert len({tuple(sorted(h["indices"])) for h in callback.history}) == 3  # three different selections
    # the selections are the service's: its ledger answers the same rounds identically
    assert ledger_answers(near.url, f"stream-{workers}", [0, 1, 2]) == [h["indices"] for h in callback.history]


def test_resume_from_checkpoint_reproduces_selections_and_stream(near: ServiceProcess, tmp_path: Path) -> None:
    out = tmp_path / "out"  # run_id comes from the output dir: the same for both runs
    first, rec_a, _ = run(near.url, out, save_steps=7)
    assert (out / "checkpoint-7" / "near_selection.json").is_file()
    second, rec_b, trainer = run(near.url, out, resume=str(out / "checkpoint-7"))
    assert trainer.state.global_step == STEPS
    assert second.history == first.history  # round 0 from the checkpoint, rounds 1-2 from the ledger
    assert rec_b.flat == rec_a.flat[7 * BS * GA :]  # the very same samples, in the same order


def test_service_killed_and_restarted_mid_training(
    service_factory: ServiceFactory,
    redis_server: RedisServer,
    pool_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    svc = service_factory(candidates=[pool_file], redis_url=redis_server.url)

    class Chaos(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 7:
                svc.stop()
            elif state.global_step == 9:
                svc.start()  # same port, same Redis: the ledger survives

    with caplog.at_level(logging.WARNING, logger="near_client"):
        callback, rec, trainer = run(svc.url, tmp_path / "out", callbacks=(Chaos(),))
    assert trainer.state.global_step == STEPS
    assert [(h["round"], h["step"]) for h in callback.history] == [(0, 6), (1, 9), (2, 10)]
    assert "NEAR round 1 failed" in caplog.text and "retries at the next step" in caplog.text
    check_stream(rec.flat, callback.history, batch=BS, depth=1, budget=BUDGET, per_step=BS * GA)


def test_pool_mismatch_is_a_clear_error(near: ServiceProcess, tmp_path: Path) -> None:
    with pytest.raises(PoolMismatchError, match=f"has {POOL_SIZE} samples but the training dataset has 47"):
        run(near.url, tmp_path / "a", dataset=train_dataset(47))
    wrong = pool_texts()
    wrong[3] = "another text"
    with pytest.raises(PoolMismatchError, match="fingerprint"):
        run(near.url, tmp_path / "b", pool_texts=wrong)


def test_not_attached_is_a_clear_error(near: ServiceProcess, tmp_path: Path) -> None:
    model = tiny_model()
    with NearClient(near.url) as client:
        callback = NearSelectionCallback(client, queries=["x"], warmup_step=1, update_step=1, update_times=1, max_k=4)
        trainer = make_trainer(model, train_dataset(), tmp_path, max_steps=2, callbacks=[callback])
        with pytest.raises(RuntimeError, match=r"callback.attach\(trainer\)"):
            trainer.train()


def test_two_processes_train_on_the_main_process_selection(near: ServiceProcess, tmp_path: Path) -> None:
    script = Path(__file__).with_name("dist_train.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(WORLD),
            "--master_port",
            str(free_port()),
            str(script),
            near.url,
            str(tmp_path),
            str(D_WARMUP),
            str(D_EVERY),
            str(D_STEPS),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
        output, _ = proc.communicate()
    assert proc.returncode == 0, output[-6000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert all(r["world"] == WORLD and r["steps"] == D_STEPS for r in ranks)
    assert ranks[0]["calls"] > 0 and ranks[1]["calls"] == 0  # only the main process calls the service
    assert ranks[0]["history"] == ranks[1]["history"]  # every rank switched to the same selection, same place
    budget = WORLD * BS * GA * D_EVERY
    assert ranks[0]["budget"] == budget == 32
    # accelerate deals the stream's batches round-robin: global batch 2j + r is rank r's j-th batch
    stream = [i for j in range(len(ranks[0]["batches"])) for r in ranks for i in r["batches"][j]]
    check_stream(stream, ranks[0]["history"], batch=BS, depth=WORLD * 1, budget=budget, per_step=WORLD * BS * GA)


def test_register_trains_on_its_own_dataset_with_no_pool_at_the_service(
    module_service_factory: ServiceFactory,
    module_redis_server: RedisServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """register=True: a service started with no pool at all; the callback renders the Trainer's own
    rows (text next to input_ids), registers them as a pool, waits, and trains on indices into
    exactly that dataset. A second run registers nothing new (same fingerprint)."""
    bare = module_service_factory(redis_url=module_redis_server.url)  # no candidates
    rows = [
        {**row, "text": text, "source": f"topic-{i % 3}"}
        for i, (row, text) in enumerate(zip(train_dataset(), pool_texts(), strict=True))
    ]

    class Rows:  # what the collator sees: ids only; what the callback renders: the text beside them
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return rows[i]

    class IdsOnly(Rows):
        def __getitem__(self, i: int) -> dict[str, Any]:
            return {k: v for k, v in rows[i].items() if k not in ("text", "source")}

    with caplog.at_level(logging.INFO, logger="near_client"):
        callback, rec, trainer = run(
            bare.url, tmp_path / "out", dataset=Rows(), register=True, pool="cb-train", run_id="register-1", report=True
        )
    summaries = [r.getMessage() for r in caplog.records if "NEAR round" in r.getMessage()]
    assert len(summaries) == 3 and all("overlap with earlier rounds" in m and "topic-" in m for m in summaries)
    report = (tmp_path / "out" / "near_report.html").read_text()
    assert report.startswith("<!DOCTYPE html>") and "register-1" in report
    assert trainer.state.global_step == STEPS and len(callback.history) == 3
    with NearClient(bare.url) as client:
        status = client.pool("cb-train")
        assert status.state == "ready" and status.rows == POOL_SIZE
        from near_schema import fingerprint

        assert status.fingerprint == fingerprint(pool_texts())  # the texts the service would render
        assert ledger_answers_in(client, "cb-train", "register-1", [0, 1, 2]) == [
            h["indices"] for h in callback.history
        ]
        embedded = _embedded_documents(client)
    check_stream(rec.flat, callback.history, batch=BS, depth=1, budget=BUDGET, per_step=BS * GA)
    again, _, _ = run(
        bare.url,
        tmp_path / "out2",
        dataset=IdsOnly(),
        register=True,
        pool="cb-train",
        pool_texts=pool_texts(),
        run_id="register-2",
    )
    assert len(again.history) == 3
    with NearClient(bare.url) as client:
        assert _embedded_documents(client) == embedded  # nothing embedded again


def ledger_answers_in(client: NearClient, pool: str, run_id: str, rounds: list[int]) -> list[list[int] | None]:
    return [
        client.select(TOPIC_QUERIES[r], 16, budget=BUDGET, run_id=run_id, round=r, pool=pool).selected for r in rounds
    ]


def _embedded_documents(client: NearClient) -> float:
    import httpx

    text = httpx.get(f"{client.base_url}/metrics").text
    line = next(x for x in text.splitlines() if x.startswith('near_embedded_texts_total{kind="document"}'))
    return float(line.split()[-1])
