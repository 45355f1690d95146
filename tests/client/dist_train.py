"""One rank of the distributed callback test (run by torchrun from test_distributed.py).

Every rank trains the tiny model with NearSelectionCallback and writes what it saw to
``<out>/rank<N>.json``: its micro-batches, the callback's history and how often it called the service.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for tests.client.kit

from near_client import InfoResponse, NearClient, NearSelectionCallback, RetryPolicy, SelectResponse
from tests.client.kit import Recorder, make_trainer, queries_by_step, tiny_model, train_dataset


class CountingClient(NearClient):
    calls = 0

    def select(self, *args: Any, **kwargs: Any) -> SelectResponse:
        CountingClient.calls += 1
        return super().select(*args, **kwargs)

    def info(self) -> InfoResponse:
        CountingClient.calls += 1
        return super().info()


def main(url: str, out: str, warmup: int, every: int, steps: int) -> None:
    import torch.distributed as dist

    model = tiny_model()
    rec = Recorder(model)
    callback = NearSelectionCallback(
        CountingClient(url, retry=RetryPolicy(attempts=2, backoff=0.05)),
        queries=queries_by_step(warmup, every),
        warmup_step=warmup,
        update_step=every,
        update_times=3,
        max_k=32,
    )
    trainer = make_trainer(model, train_dataset(), Path(out) / "train", max_steps=steps, bs=4, ga=2)
    callback.attach(trainer)
    trainer.train()
    rank, world = dist.get_rank(), dist.get_world_size()
    result = {
        "rank": rank,
        "world": world,
        "batches": rec.batches,
        "history": callback.history,
        "calls": CountingClient.calls,
        "budget": callback._budget,
        "steps": trainer.state.global_step,
    }
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()  # both ranks wrote their results
    # Leave without running destructors. torch 2.13 on gloo can hang or abort a rank at exit after a
    # finished run (with a plain Trainer too, no callback): freeing DDP's reducer joins a gloo worker
    # thread while holding the GIL, and that thread waits for the GIL to free its last AsyncWork
    # (py-spy: ~ProcessGroupGloo -> thread::join | AsyncWork::~AsyncWork -> gil_scoped_acquire).
    # It failed CI once (SIGABRT) and hung here once in ~10 runs; destroy_process_group() first did
    # not help, as the reducer still holds the group.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
