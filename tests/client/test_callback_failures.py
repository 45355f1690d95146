"""The callback's failure handling and query sets, against FakeNearService (scripted answers on an
``httpx.MockTransport``).

The real service cannot be made to answer 503 or 422 on cue, so these use the fake; the real
service killed and restarted is in test_callback.py.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from near_client import (
    BadRequestError,
    HighestLossQueries,
    NearSelectionCallback,
    RetryPolicy,
    ServiceUnavailableError,
)

from .fake_service import FakeNearService
from .kit import ID0, MATH_QUERIES, make_trainer, tiny_model, train_dataset

UNAVAILABLE = (503, {"error": {"code": "unavailable", "message": "Redis is down"}})


def train(fake: FakeNearService, tmp_path: Path, max_steps: int = 6, **cb: Any) -> tuple[NearSelectionCallback, Any]:
    model = tiny_model()
    kwargs: dict[str, Any] = {
        "queries": MATH_QUERIES,
        "warmup_step": 2,
        "update_step": 2,
        "update_times": 2,
        "max_k": 16,
        **cb,
    }
    callback = NearSelectionCallback(fake.client(retry=RetryPolicy(attempts=1)), **kwargs)
    trainer = make_trainer(model, train_dataset(), tmp_path, max_steps=max_steps, bs=2, ga=1)
    callback.attach(trainer)
    try:
        trainer.train()
    finally:
        callback.client.close()
    return callback, trainer


def test_service_failure_keeps_selection_and_retries_next_step(
    fake: FakeNearService, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake.script("/select", UNAVAILABLE, UNAVAILABLE)  # steps 2 and 3 fail, step 4 succeeds
    with caplog.at_level(logging.WARNING, logger="near_client"):
        callback, trainer = train(fake, tmp_path)
    assert trainer.state.global_step == 6
    # round 0 (due at 2) came at step 4, which is also round 1's step: round 1 is the one asked
    assert [(h["round"], h["step"]) for h in callback.history] == [(1, 4)]
    assert caplog.text.count("NEAR round 0 failed") == 2
    assert [r.body["round"] for r in fake.seen("/select")] == [0, 0, 1]


def test_strict_raises_instead(fake: FakeNearService, tmp_path: Path) -> None:
    fake.script("/select", UNAVAILABLE)
    with pytest.raises(ServiceUnavailableError, match="Redis is down"):
        train(fake, tmp_path, strict=True)


def test_errors_a_retry_cannot_fix_raise_without_strict(fake: FakeNearService, tmp_path: Path) -> None:
    fake.script("/select", (422, {"error": {"code": "budget_too_large", "message": "raise max_k"}}))
    with pytest.raises(BadRequestError, match="budget_too_large"):
        train(fake, tmp_path)


def test_request_carries_run_id_round_and_budget(fake: FakeNearService, tmp_path: Path) -> None:
    train(fake, tmp_path / "my run", max_steps=4)
    bodies = [r.body for r in fake.seen("/select")]
    assert [b["round"] for b in bodies] == [0, 1]
    assert {b["budget"] for b in bodies} == {1 * 2 * 1 * 2}  # world x batch x accumulation x update_step
    run_id = bodies[0]["run_id"]
    assert run_id.endswith("my-run") and not run_id.startswith("/")
    assert len(fake.seen("/info")) == 1  # the pool is checked once, before the first update


def test_without_redis_no_ledger_fields_are_sent(
    fake: FakeNearService, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake.redis = "disabled"
    with caplog.at_level(logging.WARNING, logger="near_client"):
        train(fake, tmp_path, max_steps=3)
    assert "without Redis" in caplog.text
    seen = fake.seen("/select")  # the client leaves out the fields it does not send
    assert seen and all(r.body.get("run_id") is None and r.body.get("round") is None for r in seen)


def test_highest_loss_queries(fake: FakeNearService, tmp_path: Path) -> None:
    texts = [f"validation example {i}" for i in range(6)]
    features = [{"input_ids": [ID0 + i, 5, 6, 7 + i, 8, 9]} for i in range(6)]
    queries = HighestLossQueries(texts, n=2, features=features, batch_size=4)
    _, trainer = train(fake, tmp_path, max_steps=2, queries=queries)  # asked at the last step
    sent = fake.seen("/select")[0].body["queries"]
    assert queries.last_losses is not None and len(sent) == 2
    # the same ranking as per-example losses computed one by one with the trained model
    model = trainer.model
    model.eval()
    import torch

    with torch.no_grad():
        one_by_one = [
            float(model(input_ids=torch.tensor([f["input_ids"]]), labels=torch.tensor([f["input_ids"]])).loss)
            for f in features
        ]
    np.testing.assert_allclose(queries.last_losses, one_by_one, rtol=1e-4)
    assert sent == [texts[i] for i in np.argsort(one_by_one)[::-1][:2]]


def test_missing_earlier_rounds_are_filled_in_before_exclude_previous(
    fake: FakeNearService, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # round 0 failed while it was due (service down), so round 1 with exclude_previous finds it missing
    missing = (409, {"error": {"code": "missing_rounds", "message": "round(s) 0 are not in the ledger"}})
    fake.script("/select", UNAVAILABLE, UNAVAILABLE, missing)  # steps 2 and 3: round 0 fails; step 4: round 1
    with caplog.at_level(logging.WARNING, logger="near_client"):
        callback, _ = train(fake, tmp_path, max_steps=4, exclude_previous=True)
    assert [r.body["round"] for r in fake.seen("/select")] == [0, 0, 1, 0, 1]  # fail, fail, 409, fill 0, ask 1
    assert all(r.body["exclude_previous"] for r in fake.seen("/select"))
    assert [h["round"] for h in callback.history] == [1]
    assert "missing from the service's ledger; filling them in" in caplog.text


@pytest.mark.parametrize(("given", "sent"), [({}, "density"), ({"strategy": "importance"}, "importance")])
def test_callback_sends_its_strategy(fake: FakeNearService, tmp_path: Path, given: dict[str, Any], sent: str) -> None:
    train(fake, tmp_path, budget=8, **given)
    bodies = [r.body for r in fake.requests if r.path == "/select"]
    assert bodies and all(b["strategy"] == sent and b["budget"] == 8 for b in bodies)
