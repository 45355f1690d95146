"""``near-select offline --report`` and ``near-select report OUT_DIR`` with the real packaged model:
the report's numbers against the run's own files, its sources, and what happens when parts are
missing or damaged."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from near_service.cli.main import main
from near_service.cli.report import manifest_namespace, offline_report

TOPICS = {
    "math": "add the numbers {i} and {j}",
    "code": "write a python loop over {i} items",
    "cook": "bake bread for {i} minutes",
}


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("offline-report")
    tagged = [
        {"text": TOPICS[t].format(i=i, j=i + 1), "dataset": t} for i in range(12) for t in ("math", "code")
    ]  # 24 rows with a dataset field
    plain = [{"text": TOPICS["cook"].format(i=i)} for i in range(8)]  # 8 rows without: their file is their source
    queries = [{"question": "how do I add two numbers?", "answer": ""}, {"question": "a loop in python", "answer": ""}]
    out = tmp / "out"
    code = main(
        [
            "offline",
            "--candidates",
            str(write_jsonl(tmp / "tagged.jsonl", tagged)),
            str(write_jsonl(tmp / "plain.jsonl", plain)),
            "--queries",
            str(write_jsonl(tmp / "queries.jsonl", queries)),
            "--max-k",
            "10",
            "--budget",
            "12",
            "--strategy",
            "round_robin",
            "--out-dir",
            str(out),
            "--cache-dir",
            str(tmp / "cache"),
            "--quiet",
            "--report",
        ]
    )
    assert code == 0
    return out


def test_offline_report_numbers(run_dir: Path) -> None:
    assert (run_dir / "report.html").stat().st_size > 100_000
    rep = offline_report(run_dir)
    selected = json.loads((run_dir / "selected.json").read_text())
    indices = np.load(run_dir / "top_indices.npy")
    r0 = rep["rounds"][0]
    assert (r0["selected"], r0["budget"], r0["max_k"], r0["query_count"], r0["strategy"]) == (
        12,
        12,
        10,
        2,
        "round_robin",
    )
    assert r0["unique_reached"] == len(np.unique(indices))
    sources = ["math", "code"] * 12 + ["plain.jsonl"] * 8
    pool_counts, sel_counts = Counter(sources), Counter(sources[i] for i in selected)
    names = rep["sources"]["names"]
    assert set(names) == {"math", "code", "plain.jsonl"} and names[-1] == "plain.jsonl"  # most common first
    assert rep["sources"]["pool_share"] == pytest.approx([pool_counts[n] / 32 for n in names], abs=1e-6)
    assert rep["sources"]["rounds"][0]["share"] == pytest.approx([sel_counts[n] / 12 for n in names], abs=1e-6)
    assert "'dataset' field" in rep["sources"]["note"]
    assert rep["map"] is not None and len(rep["map"]["pool"]["x"]) == 32
    assert [ex["query_text"] for ex in rep["examples"]][:2] == ["how do I add two numbers?", "a loop in python"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    ns = manifest_namespace(manifest)  # the pool store's folder of this run: the same hash as the embedder's
    assert (Path(manifest["cache"]["dir"]) / "pools" / ns / f"{manifest['pool_fingerprint']}.npy").is_file()
    assert (Path(manifest["cache"]["dir"]) / "pools" / ns / f"{manifest['pool_fingerprint']}.map.npz").is_file()


def test_report_command_rebuilds_it(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert "report.html" in capsys.readouterr().out
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "<h2>Map of the pool</h2>" in html and "how do I add two numbers?" in html


def test_changed_pool_files_are_not_used(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "out"
    shutil.copytree(run_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    changed = write_jsonl(tmp_path / "changed.jsonl", [{"text": "other"}] * 32)
    manifest["candidates"] = [str(changed)]
    manifest["queries"] = [str(tmp_path / "gone.jsonl")]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    rep = offline_report(copy)
    assert any("changed since the run" in n for n in rep["notes"])
    assert any("cannot be read now" in n for n in rep["notes"])
    assert rep["rounds"][0]["selected"] == 12
    assert all(nb["text"] is None for ex in rep["examples"] for nb in ex["neighbours"])


def test_bad_out_dirs(tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    import shutil

    copy = tmp_path / "broken"
    shutil.copytree(run_dir, copy)
    (copy / "top_indices.npy").write_bytes(b"not numpy")
    assert main(["report", str(copy)]) == 2
    assert "cannot read the run's neighbour indices" in capsys.readouterr().err
    (copy / "top_indices.npy").unlink()
    shutil.copyfile(run_dir / "top_indices.npy", copy / "top_indices.npy")
    (copy / "selected.json").write_text('{"a": 1}')
    assert main(["report", str(copy)]) == 2
    assert "selected.json" in capsys.readouterr().err
