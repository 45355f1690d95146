"""Real DataFlex 1.1.0 trainings (LlamaFactory underneath, in .venv-dataflex) against a live service.

a) ``python -m near_client.dataflex train`` with the ``near_service`` selector, 3 updates;
b) the same under torchrun (``FORCE_TORCHRUN=1``, 2 CPU processes, gloo);
c) DataFlex's built-in ``near`` selector reading the ``top_indices.npy`` of ``near-select offline``;
d) a run killed after its second update and resumed from a checkpoint trains on the same rounds.

Schedule (kit.train_config): batch 2 per process, warmup 2 steps, then an update every 3 steps,
3 times (steps 2, 5, 8), 11 steps in all; budget = processes x 2 x 3. Each run prints its time.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from near_client import NearClient
from tests.conftest import ServiceProcess, free_port

from .kit import (
    DATAFLEX_VENV,
    Fixture,
    dataflex_updates,
    launch,
    near_service_components,
    round_lines,
    rounds_file,
    train_config,
    write_yaml,
)

pytestmark = [pytest.mark.dataflex, pytest.mark.slow]
STEPS = [2, 5, 8]


def launcher(cfg: Path, *over: str) -> list[str]:
    return ["-m", "near_client.dataflex", "train", str(cfg), *over]


def check_ledger(url: str, records: list[dict[str, Any]]) -> None:
    """The logged rounds are what the service's ledger holds: /runs lists them, and asking each
    round again exactly as the selector asked it returns the stored selection."""
    run_id = records[0]["run_id"]
    with NearClient(url) as client:
        stored = {r.round: r for r in client.runs(run_id).rounds}
        for rec in records:
            assert stored[rec["round"]].selected == rec["budget"] and stored[rec["round"]].max_k == rec["max_k"]
            again = client.select(
                rec["queries"],
                rec["max_k"],
                budget=rec["budget"],
                strategy=rec["strategy"],
                run_id=run_id,
                round=rec["round"],
                exclude_previous=rec["exclude_previous"],
                pool=rec["pool"],
            )
            assert again.source == "stored" and again.selected == rec["selected"]


def kill_and_resume(
    cfg: Path, out: Path, sel: Path, cwd: Path, report: Callable[[str], None], label: str
) -> list[dict[str, Any]]:
    """Run ``cfg`` until its round 1 is logged, SIGKILL it, resume from checkpoint-3 (saved after
    round 1, before round 2); the resumed run replays round 1 as stored and computes round 2.
    Returns the run's logged rounds (one run_id: the resumed run kept it)."""
    killed = launch(
        launcher(cfg),
        cwd,
        report,
        f"{label} killed after round 2",
        kill_when=lambda line: line.startswith("[near_service] rank 0 round 1 "),
    )
    assert killed.rc != 0 and [r["round"] for r in rounds_file(sel)] == [0, 1], killed.log[-6000:]
    checkpoint = out / "checkpoint-3"
    assert checkpoint.is_dir()
    resumed = launch(launcher(cfg, f"resume_from_checkpoint={checkpoint}"), cwd, report, f"{label} resumed")
    assert resumed.rc == 0, resumed.log[-6000:]
    records = rounds_file(sel)
    assert [(r["round"], r["source"]) for r in records] == [
        (0, "computed"),
        (1, "computed"),
        (1, "stored"),
        (2, "computed"),
    ]
    assert records[2]["selected"] == records[1]["selected"]
    return records


def test_near_service_selector_three_rounds(
    fx: Fixture, near: ServiceProcess, tmp_path: Path, report: Callable[[str], None]
) -> None:
    comps = near_service_components(
        tmp_path / "components.yaml", near.url, tmp_path / "sel", queries="highest_loss", n_queries=1
    )
    cfg = write_yaml(tmp_path / "train.yaml", train_config(fx, tmp_path / "out", comps, "near_service"))
    run = launch(launcher(cfg), tmp_path, report, "a) near_service, 1 process, highest_loss")
    assert run.rc == 0, run.log[-6000:]
    assert [(rank, r, s, n, d) for rank, r, s, n, d in round_lines(run.log)] == [
        (0, r, s, 6, 6) for r, s in enumerate(STEPS)
    ]
    records = rounds_file(tmp_path / "sel")
    assert [r["step"] for r in records] == STEPS and all(r["source"] == "computed" for r in records)
    check_ledger(near.url, records)
    assert len({tuple(sorted(r["selected"])) for r in records}) == 3, "highest_loss rounds should differ"
    assert dataflex_updates(run.log) == [(s, 6) for s in STEPS]


def test_near_service_selector_under_torchrun(
    fx: Fixture, near: ServiceProcess, tmp_path: Path, report: Callable[[str], None]
) -> None:
    comps = near_service_components(tmp_path / "components.yaml", near.url, tmp_path / "sel", exclude_previous=True)
    cfg = write_yaml(tmp_path / "train.yaml", train_config(fx, tmp_path / "out", comps, "near_service"))
    env = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "MASTER_PORT": str(free_port())}
    run = launch(launcher(cfg), tmp_path, report, "b) near_service, torchrun 2 processes (gloo)", env=env)
    rank0, rank1 = rounds_file(tmp_path / "sel", 0), rounds_file(tmp_path / "sel", 1)
    assert len(rank0) == 3, run.log[-6000:]
    assert [r["selected"] for r in rank1] == [r["selected"] for r in rank0]  # both ranks, the same selections
    assert all(len(set(r["selected"])) == len(r["selected"]) == 2 * 2 * 3 for r in rank0)
    assert [r["step"] for r in rank0] == [r["step"] for r in rank1] == STEPS
    check_ledger(near.url, rank0)
    assert run.rc == 0, run.log[-6000:]


def test_builtin_near_selector_reads_offline_top_indices(
    fx: Fixture, tmp_path: Path, report: Callable[[str], None]
) -> None:
    import subprocess

    import numpy as np

    off = tmp_path / "offline"
    near_select = Path(sys.executable).with_name("near-select")
    subprocess.run(
        [
            str(near_select),
            "offline",
            "--candidates",
            str(fx.pool_file),
            "--queries",
            str(fx.eval_file),
            "--max-k",
            "8",
            "--out-dir",
            str(off),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        check=True,
        capture_output=True,
    )
    top = np.load(off / "top_indices.npy")
    assert top.shape == (8, 8) and top.dtype == np.int64
    comps = write_yaml(
        tmp_path / "components.yaml",
        {
            "selectors": {
                "near": {
                    "name": "near",
                    "params": {"indices_path": str(off / "top_indices.npy"), "cache_dir": str(tmp_path / "sel")},
                }
            }
        },
    )
    cfg = write_yaml(tmp_path / "train.yaml", train_config(fx, tmp_path / "out", comps, "near"))
    run = launch(
        [str(DATAFLEX_VENV / "bin" / "dataflex-cli"), "train", str(cfg)], tmp_path, report, "c) built-in near + offline"
    )
    assert run.rc == 0, run.log[-6000:]
    assert "[near_Selector] top_indices shape: (8, 8)" in run.log
    assert "Col-wise selection reached num_samples=6" in run.log
    assert dataflex_updates(run.log) == [(s, 6) for s in STEPS]


def test_resume_from_checkpoint_trains_on_the_same_rounds(
    fx: Fixture, near: ServiceProcess, tmp_path: Path, report: Callable[[str], None]
) -> None:
    def setup(name: str) -> tuple[Path, Path]:
        comps = near_service_components(
            tmp_path / name / "components.yaml", near.url, tmp_path / name / "sel", exclude_previous=True, max_k=2
        )
        over = {"save_strategy": "steps", "save_steps": 3}
        cfg = train_config(fx, tmp_path / name / "out", comps, "near_service", **over)
        return write_yaml(tmp_path / name / "train.yaml", cfg), tmp_path / name / "sel"

    cfg_a, sel_a = setup("whole")
    whole = launch(launcher(cfg_a), tmp_path, report, "d) uninterrupted run")
    assert whole.rc == 0, whole.log[-6000:]
    expected = rounds_file(sel_a)
    assert [r["round"] for r in expected] == [0, 1, 2]

    cfg_b, sel_b = setup("killed")
    records = kill_and_resume(cfg_b, tmp_path / "killed" / "out", sel_b, tmp_path, report, "d)")
    assert [r["selected"] for r in records if r["source"] == "computed"] == [r["selected"] for r in expected]
    check_ledger(near.url, [records[0], records[1], records[3]])
    with NearClient(near.url) as client:  # every run registered the same train set: one pool
        assert len([p for p in client.pools() if p.name.startswith("dataflex-")]) == 1


def test_resume_with_highest_loss_replays_the_stored_round(
    fx: Fixture, near: ServiceProcess, tmp_path: Path, report: Callable[[str], None]
) -> None:
    """highest_loss queries change after a resume (the model is another one): the stored round is
    read back from the ledger as it was, never asked again with other queries (that was a 409)."""
    comps = near_service_components(
        tmp_path / "components.yaml", near.url, tmp_path / "sel", queries="highest_loss", n_queries=1
    )
    over = {"save_strategy": "steps", "save_steps": 3}
    cfg = write_yaml(tmp_path / "train.yaml", train_config(fx, tmp_path / "out", comps, "near_service", **over))
    records = kill_and_resume(cfg, tmp_path / "out", tmp_path / "sel", tmp_path, report, "f) highest_loss,")
    assert records[2]["queries"] is None
    assert all(len(set(r["selected"])) == 6 for r in records)
    check_ledger(near.url, [records[0], records[1], records[3]])


def test_a_pool_that_is_not_the_train_set_stops_the_run(
    fx: Fixture, near: ServiceProcess, tmp_path: Path, report: Callable[[str], None]
) -> None:
    # the service's default pool holds the raw file's rows rendered, not DataFlex's tokenized rows
    comps = near_service_components(tmp_path / "components.yaml", near.url, tmp_path / "sel", pool="default")
    cfg = write_yaml(tmp_path / "train.yaml", train_config(fx, tmp_path / "out", comps, "near_service"))
    run = launch(launcher(cfg), tmp_path, report, "e) pool mismatch")
    assert run.rc != 0
    assert "the service's pool 'default' is not this run's train dataset" in run.log
    with NearClient(near.url) as client:
        default = client.pool("default")
    assert f"it holds {default.rows} rows with fingerprint {default.fingerprint}" in run.log
