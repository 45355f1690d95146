"""`near-select offline` end to end with the real packaged model, real FAISS and the real disk cache."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from near_service.cli import main

WORDS = [
    "apple",
    "train",
    "river",
    "math",
    "cook",
    "bread",
    "code",
    "python",
    "list",
    "paris",
    "nile",
    "number",
    "add",
    "divide",
    "percent",
    "oven",
    "sauce",
    "loop",
    "table",
    "france",
    "mountain",
    "story",
    "history",
    "garden",
    "planet",
    "music",
]


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_pool(n: int, seed: int = 0) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS, size=int(rng.integers(4, 30))))
        kind = i % 3
        if kind == 0:
            rows.append({"instruction": f"Task {i}", "input": words, "output": f"answer {i}"})
        elif kind == 1:
            rows.append({"text": f"Note {i}: {words}"})
        else:
            rows.append({"messages": [{"role": "user", "content": words}, {"role": "assistant", "content": "ok"}]})
    return rows


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    pool = make_pool(60)
    pool.append(dict(pool[5]))  # an exact duplicate of row 5
    queries = [
        {"question": f"how do I {w} with {v}?", "answer": ""}
        for w, v in [("cook", "bread"), ("add", "numbers"), ("loop", "python"), ("visit", "paris")]
    ]
    return {
        "pool": write_jsonl(tmp_path / "pool.jsonl", pool),
        "queries": write_jsonl(tmp_path / "queries.jsonl", queries),
        "cache": tmp_path / "cache",
        "out": tmp_path / "out",
    }


def run(files: dict[str, Path], *extra: str, out: Path | None = None) -> int:
    return main(
        [
            "offline",
            "--candidates",
            str(files["pool"]),
            "--queries",
            str(files["queries"]),
            "--out-dir",
            str(out or files["out"]),
            "--cache-dir",
            str(files["cache"]),
            "--quiet",
            *extra,
        ]
    )


def test_end_to_end_equals_numpy_brute_force(files: dict[str, Path]) -> None:
    assert (
        run(
            files,
            "--max-k",
            "20",
            "--dtype",
            "float32",
            "--save-embeddings",
            "--budget",
            "15",
            "--strategy",
            "round_robin",
        )
        == 0
    )
    out = files["out"]
    top = np.load(out / "top_indices.npy")
    scores = np.load(out / "top_scores.npy")
    assert top.dtype == np.int64 and top.shape == (4, 20) and scores.dtype == np.float32
    assert top.min() >= 0 and top.max() < 61
    pool_v, query_v = np.load(out / "candidate_embeddings.npy"), np.load(out / "query_embeddings.npy")
    sims = query_v @ pool_v.T
    ref = np.lexsort((np.broadcast_to(np.arange(61), sims.shape), -sims), axis=1)[:, :20]
    recall = np.mean([len(np.intersect1d(a, b)) / 20 for a, b in zip(top, ref, strict=True)])
    assert recall == 1.0
    # same order too, except where two scores tie within float32 rounding (FAISS's sgemm vs numpy's)
    ref_scores = np.take_along_axis(sims, ref, 1)
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-6)
    differs = top != ref
    assert np.all(np.abs(np.take_along_axis(sims, top, 1) - ref_scores)[differs] < 1e-6)
    # the duplicate of row 5 sits right after it, wherever it appears
    for row in top.tolist():
        if 5 in row and 60 in row:
            assert row.index(60) == row.index(5) + 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pool_size"] == 61 and manifest["query_count"] == 4 and manifest["dims"] == 384
    assert manifest["backend"] == "sentence-transformers" and manifest["dtype"] == "float32"
    assert len(manifest["pool_fingerprint"]) == 16 and manifest["max_k"] == 20
    selected = json.loads((out / "selected.json").read_text())
    assert len(selected) == 15 and len(set(selected)) == 15
    assert selected[:4] == top[:, 0].tolist() or len(set(top[:, 0].tolist())) < 4


def test_max_score_strategy(files: dict[str, Path]) -> None:
    assert run(files, "--max-k", "10", "--budget", "5", "--strategy", "max_score") == 0
    top, scores = np.load(files["out"] / "top_indices.npy"), np.load(files["out"] / "top_scores.npy")
    selected = json.loads((files["out"] / "selected.json").read_text())
    best = {}
    for i, s in zip(top.ravel().tolist(), scores.ravel().tolist(), strict=True):
        best[i] = max(best.get(i, -2.0), s)
    assert selected == sorted(best, key=lambda i: (-best[i], i))[:5]


def test_second_run_embeds_nothing(files: dict[str, Path]) -> None:
    assert run(files, "--max-k", "5") == 0
    first = json.loads((files["out"] / "manifest.json").read_text())
    assert first["cache"]["pool_embedded"] == 60  # 61 rows, one duplicate
    assert run(files, "--max-k", "5", out=files["out"] / "again") == 0
    second = json.loads((files["out"] / "again" / "manifest.json").read_text())
    assert second["cache"]["pool_embedded"] == 0 and second["cache"]["query_embedded"] == 0
    np.testing.assert_array_equal(
        np.load(files["out"] / "top_indices.npy"), np.load(files["out"] / "again" / "top_indices.npy")
    )


def test_killed_run_resumes_with_only_the_rest(tmp_path: Path) -> None:
    pool = write_jsonl(tmp_path / "big.jsonl", make_pool(3000, seed=1))
    queries = write_jsonl(tmp_path / "q.jsonl", [{"text": "bread and sauce in the oven"}])
    cache = tmp_path / "cache"
    cmd = [
        sys.executable,
        "-m",
        "near_service.cli",
        "offline",
        "--candidates",
        str(pool),
        "--queries",
        str(queries),
        "--out-dir",
        str(tmp_path / "out"),
        "--cache-dir",
        str(cache),
        "--max-k",
        "5",
        "--batch-tokens",
        "512",
        "--quiet",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = cache / "embeddings.sqlite3"
    stored = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=1) as con:
                    stored = con.execute("SELECT COUNT(*) FROM emb").fetchone()[0]
            except sqlite3.OperationalError:
                stored = 0
            if stored >= 1024:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted; make the pool bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(db) as con:
        stored = con.execute("SELECT COUNT(*) FROM emb").fetchone()[0]
    assert 0 < stored < 3000
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    unique = len({json.dumps(r) for r in make_pool(3000, seed=1)})
    assert manifest["cache"]["pool_hits"] == stored
    assert manifest["cache"]["pool_embedded"] == unique - stored


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-k", "0"], "max_k must be at least 1"),
        (["--max-k", "62"], "max_k 62 is larger than the candidate pool (61 candidates)"),
        (["--max-k", "5", "--budget", "500"], "budget must be between 1 and the pool size (61)"),
        (["--max-k", "2", "--budget", "30"], "than 4 queries x max_k 2 = 8 neighbours can reach"),
        (["--template", "{nope}"], "row 0 lacks field(s) ['nope']"),
        (["--template", "weird"], "unknown template 'weird'"),
        (["--max-length", "0"], "max_length"),
    ],
)
def test_bad_numbers_and_templates(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert run(files, *extra) == 2
    err = capsys.readouterr().err
    assert "error: " in err and message in err


def test_budget_beyond_the_unique_neighbours(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    write_jsonl(files["queries"], [{"text": "bread in the oven"}] * 3)
    assert run(files, "--max-k", "2", "--budget", "3") == 2
    assert "3 queries x max_k 2 reach only 2 unique candidates" in capsys.readouterr().err


def test_clamp(files: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    assert run(files, "--max-k", "500", "--clamp") == 0
    assert np.load(files["out"] / "top_indices.npy").shape == (4, 61)
    assert "clamped to 61" in caplog.text


@pytest.mark.parametrize(
    ("which", "content", "message"),
    [
        ("pool", None, "no such file"),
        ("pool", "\n", "the candidate set is empty"),
        ("queries", "", "the query set is empty"),
        ("pool", '{"title": "x"}\n', "row 0: unknown record shape; fields seen: ['title']"),
    ],
)
def test_bad_files(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], which: str, content: str | None, message: str
) -> None:
    path = files[which]
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    assert run(files, "--max-k", "1") == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err
