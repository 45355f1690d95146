"""What the DataFlex tests share: their own pool and eval data, LlamaFactory's dataset_info, the
train and components YAML, and running a DataFlex training in .venv-dataflex with its time printed.

The pool: 100 alpaca rows on four topics (25 each), every row different; the eval set: 8 rows, two
per topic, none of them in the pool.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DATAFLEX_VENV = ROOT / ".venv-dataflex"
DATAFLEX_PY = DATAFLEX_VENV / "bin" / "python"
POOL_SIZE = 100

TOPICS = [
    (
        "Solve the word problem.",
        "Tom has {a} apples and buys {b} more. How many apples does he have?",
        "Tom has {a} + {b} = {s} apples.",
    ),
    (
        "Give the cooking step.",
        "How long do I simmer {a} cups of tomato sauce with {b} cloves of garlic?",
        "Simmer the sauce and garlic for {s} minutes, stirring often.",
    ),
    (
        "Answer the football question.",
        "The striker scored {a} goals in {b} matches. How many goals is that in all?",
        "The striker scored {a} goals in {b} football matches.",
    ),
    (
        "Answer the astronomy question.",
        "A telescope found {a} moons around a planet {b} light years away. How many moons?",
        "The telescope found {a} moons orbiting the planet.",
    ),
]


def rows(n: int, offset: int = 0) -> list[dict[str, str]]:
    out = []
    for i in range(offset, offset + n):
        instruction, question, answer = TOPICS[i % len(TOPICS)]
        a, b = i % 11 + 2, i // 4 + 3
        out.append(
            {"instruction": instruction, "input": question.format(a=a, b=b), "output": answer.format(a=a, b=b, s=a + b)}
        )
    return out


@dataclass
class Fixture:
    """The files one DataFlex run reads: data folder (with dataset_info.json), model, pool file."""

    data_dir: Path
    model_dir: Path
    pool_file: Path
    eval_file: Path


def write_data(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    pool, evals = folder / "pool.jsonl", folder / "eval.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows(POOL_SIZE)), encoding="utf-8")
    evals.write_text("".join(json.dumps(r) + "\n" for r in rows(8, offset=1000)), encoding="utf-8")
    info = {"near_pool": {"file_name": "pool.jsonl"}, "near_eval": {"file_name": "eval.jsonl"}}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    return pool, evals


def train_config(fx: Fixture, out_dir: Path, components: Path, component: str, **over: Any) -> dict[str, Any]:
    """A small CPU run: tiny model, full fine-tuning, batch 2, warmup 2 steps, 3 updates of 3 steps."""
    cfg: dict[str, Any] = {
        "model_name_or_path": str(fx.model_dir),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset_dir": str(fx.data_dir),
        "dataset": "near_pool",
        "eval_dataset": "near_eval",
        "template": "default",
        "cutoff_len": 128,
        "overwrite_cache": True,
        "preprocessing_num_workers": 1,
        "dataloader_num_workers": 0,
        "seed": 42,
        "output_dir": str(out_dir),
        "logging_steps": 1,
        "save_strategy": "no",
        "overwrite_output_dir": True,
        "report_to": "none",
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "learning_rate": 5.0e-3,
        "num_train_epochs": 1.0,
        "lr_scheduler_type": "constant",
        "bf16": False,
        "use_cpu": True,
        "disable_tqdm": True,
        "eval_strategy": "no",
        "train_type": "dynamic_select",
        "components_cfg_file": str(components),
        "component_name": component,
        "warmup_step": 2,
        "update_step": 3,
        "update_times": 3,
    }
    cfg.update(over)
    return cfg


def write_yaml(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(obj, sort_keys=False), encoding="utf-8")
    return path


def near_service_components(path: Path, url: str, cache_dir: Path, **params: Any) -> Path:
    entry = {"service_url": url, "cache_dir": str(cache_dir), "max_k": 4, "queries": "eval", **params}
    return write_yaml(path, {"selectors": {"near_service": {"name": "near_service", "params": entry}}})


@dataclass
class Run:
    rc: int
    log: str
    seconds: float


def run_env(cwd: Path) -> dict[str, str]:
    """The environment of a DataFlex run: ours less NEAR_* and venv/Python settings, offline."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("NEAR_", "VIRTUAL_ENV", "PYTHON"))},
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "HF_HOME": str(cwd / "hf"),
    }


def launch(
    args: list[str],
    cwd: Path,
    report: Callable[[str], None],
    name: str,
    env: dict[str, str] | None = None,
    timeout: float = 900,
    kill_when: Callable[[str], bool] | None = None,
) -> Run:
    """Run ``.venv-dataflex/bin/python ARGS`` in ``cwd``; ``kill_when(line)`` SIGKILLs the whole
    process group at the first line it accepts. Prints the run's time through ``report``."""
    import signal

    full_env = {**run_env(cwd), "DISABLE_VERSION_CHECK": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    start = time.monotonic()
    proc = subprocess.Popen(
        [str(DATAFLEX_PY), *args],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.append(line)
            if kill_when is not None and kill_when(line):
                os.killpg(proc.pid, signal.SIGKILL)
                break
            if time.monotonic() - start > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                lines.append(f"\n[test] killed after {timeout} s\n")
                break
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
    seconds = time.monotonic() - start
    report(f"[dataflex] {name}: {seconds:.1f} s (exit {rc})")
    log = "".join(lines)
    (cwd / f"{re.sub(r'[^A-Za-z0-9]+', '_', name)}.log").write_text(log, encoding="utf-8")  # for a failing test
    return Run(rc, log, seconds)


ROUND_LINE = re.compile(r"\[near_service\] rank (\d+) round (\d+) step (\d+): (\d+) indices \((\d+) distinct")


def round_lines(log: str) -> list[tuple[int, int, int, int, int]]:
    """(rank, round, step, indices, distinct) of each selection the selector logged."""
    return [tuple(int(g) for g in m.groups()) for m in ROUND_LINE.finditer(log)]  # type: ignore[misc]


def rounds_file(cache_dir: Path, rank: int = 0) -> list[dict[str, Any]]:
    files = sorted(cache_dir.glob(f"*/rounds.rank{rank}.jsonl"))
    assert len(files) == 1, f"expected one run under {cache_dir}: {files}"
    return [json.loads(x) for x in files[0].read_text(encoding="utf-8").splitlines()]


def dataflex_updates(log: str) -> list[tuple[int, int]]:
    """(step, samples) of DataFlex's own "Updated dataloader" lines (it prints and logs each once)."""
    found = re.findall(r"\[Dataflex\] Updated dataloader at step (\d+), (\d+) samples", log)
    return sorted({(int(s), int(n)) for s, n in found})
