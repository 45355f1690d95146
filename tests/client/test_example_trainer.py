"""The README's Trainer example, end to end: examples/train_hf_trainer.py against a service started
with no pool at all (register: true registers the training set; no train_data given to the service)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from near_client import NearClient
from tests.conftest import RedisServer, ServiceFactory

ROOT = Path(__file__).resolve().parents[2]


def test_example_registers_its_training_set_and_trains(
    service_factory: ServiceFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    svc = service_factory(redis_url=redis_server.url)  # no candidates: the example brings its own pool
    cfg = yaml.safe_load((ROOT / "examples" / "train_hf_trainer.yaml").read_text())
    cfg.update(service_url=svc.url, output_dir=str(tmp_path / "out"), run_id="example-1")
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    done = subprocess.run(
        [sys.executable, "examples/train_hf_trainer.py", str(cfg_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rounds = [line for line in done.stdout.splitlines() if line.startswith("round ")]
    assert len(rounds) == cfg["update_times"], done.stdout
    with NearClient(svc.url) as client:
        status = client.pool(cfg["pool"])
        assert status.state == "ready" and status.rows == 32  # examples/demo/candidates.jsonl
        assert [r.round for r in client.runs("example-1").rounds] == [0, 1, 2]
