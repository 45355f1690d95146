"""The pools registry on disk (``engine/registry.py``): the texts are written one JSON line at a time
(never a second whole copy of a large pool in memory, issue 17 point 1), a write that is killed or
runs out of disk leaves the old state or nothing, and registries written by earlier versions (one
JSON list per pool) are still read.

A full disk is :class:`tests.fakes.FakeFullDisk`; the kill -9 is a real SIGKILL of a real process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from dataclasses import asdict
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from near_schema import fingerprint
from near_service.core.settings import load_settings
from near_service.engine import registry as registry_module
from near_service.engine.registry import STALE_TMP_S, PoolRecord, Registry
from near_service.server.app import create_app
from tests.fakes import FakeEmbedder, FakeFullDisk

WAIT_S = 60.0  # a safety net against a hung test, never a speed assert
ODD = ["a line\nbreak", 'quotes " and \\ slashes', "unicode: café 数学 \u2028 \U0001f600", "\t tab", "{not json}"]


def texts_of(n: int, tag: str = "t", width: int = 40) -> list[str]:
    return [f"{tag} {i}: " + "word " * (width // 5) for i in range(n)]


def record(name: str, texts: list[str]) -> PoolRecord:
    return PoolRecord(name, fingerprint(texts), len(texts), "texts", created_at=time.time())


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_texts_are_json_lines_and_come_back_exactly(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    texts = [*ODD, *texts_of(50)]
    rec = record("x", texts)
    reg.save(rec, texts)
    path = tmp_path / "texts" / f"{rec.fingerprint}.jsonl"
    lines = path.read_bytes().splitlines()
    assert len(lines) == len(texts) and [orjson.loads(line) for line in lines] == texts
    assert reg.texts(rec.fingerprint) == texts
    assert [r.name for r in reg.records()] == ["x"]
    assert files_under(tmp_path) == ["pools/x.json", f"texts/{rec.fingerprint}.jsonl"]  # no temporary left
    reg.remove("x", rec.fingerprint, keep_texts=False)
    assert files_under(tmp_path) == [] and reg.texts(rec.fingerprint) is None


def test_saving_a_large_pool_holds_no_second_copy_of_it(tmp_path: Path) -> None:
    texts = [f"{i} " + "x" * 25_000 for i in range(400)]  # 10 MB of text
    size = sum(len(t) for t in texts)
    rec = record("big", texts)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        Registry(tmp_path).save(rec, texts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size // 8, f"saving {size:,} bytes of text allocated {peak:,} bytes at its peak"
    assert Registry(tmp_path).texts(rec.fingerprint) == texts


def test_registries_of_earlier_versions_are_still_read(tmp_path: Path) -> None:
    texts = [*ODD, *texts_of(20, "legacy")]
    rec = record("old", texts)
    (tmp_path / "texts").mkdir(parents=True)
    (tmp_path / "pools").mkdir()
    legacy = tmp_path / "texts" / f"{rec.fingerprint}.json"
    legacy.write_bytes(orjson.dumps(texts))  # what Registry.save wrote before the texts were JSON lines
    (tmp_path / "pools" / "old.json").write_text(json.dumps(asdict(rec), indent=1))
    reg = Registry(tmp_path)
    assert [r.name for r in reg.records()] == ["old"] and reg.texts(rec.fingerprint) == texts
    reg.save(record("again", texts), texts)  # the same content: the legacy file serves both
    assert files_under(tmp_path) == ["pools/again.json", "pools/old.json", f"texts/{rec.fingerprint}.json"]
    reg.remove("old", rec.fingerprint, keep_texts=True)
    reg.remove("again", rec.fingerprint, keep_texts=False)
    assert files_under(tmp_path) == []


def test_a_legacy_registry_comes_back_after_a_restart(tmp_path: Path) -> None:
    texts = texts_of(12, "legacy pool about apples")
    rec = record("old", texts)
    root = tmp_path / "cache" / "registry"
    (root / "texts").mkdir(parents=True)
    (root / "pools").mkdir()
    (root / "texts" / f"{rec.fingerprint}.json").write_bytes(orjson.dumps(texts))
    (root / "pools" / "old.json").write_text(json.dumps(asdict(rec), indent=1))
    settings = load_settings(candidates=[], cache_dir=tmp_path / "cache")
    with TestClient(create_app(settings, embedder=FakeEmbedder())) as client:
        deadline = time.monotonic() + 30
        while (status := client.get("/pools/old").json())["state"] != "ready":
            assert status["state"] != "failed" and time.monotonic() < deadline, status
            time.sleep(0.01)
        assert status["fingerprint"] == rec.fingerprint and status["rows"] == 12
        r = client.post("/select", json={"queries": ["apples"], "max_k": 3, "pool": "old"})
        assert r.status_code == 200 and r.json()["pool"]["fingerprint"] == rec.fingerprint, r.text


@pytest.mark.parametrize(
    "content",
    [b'"one"\n42\n', b'"one"\n"tw', b'["a list on a line"]\n', b"\xff\xfe\n"],
    ids=["not-a-string", "cut-short", "a-list", "not-utf8"],
)
def test_a_damaged_texts_file_is_not_used(tmp_path: Path, content: bytes) -> None:
    reg = Registry(tmp_path)
    rec = record("x", ["one", "two"])
    reg.save(rec, ["one", "two"])
    (tmp_path / "texts" / f"{rec.fingerprint}.jsonl").write_bytes(content)
    assert reg.texts(rec.fingerprint) is None  # logged; the engine drops the record, never a crash


def test_other_content_under_the_name_is_not_used(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    rec = record("x", ["one", "two"])
    reg.save(rec, ["one", "two"])
    (tmp_path / "texts" / f"{rec.fingerprint}.jsonl").write_bytes(b'"one"\n"three"\n')
    assert reg.texts(rec.fingerprint) is None


# --- faults ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("where", "room"), [("texts", 20_000), ("pools", 0)], ids=["texts", "record"])
def test_disk_full_while_saving_leaves_the_old_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, room: int
) -> None:
    reg = Registry(tmp_path)
    old = texts_of(30, "old")
    reg.save(record("x", old), old)
    before = {p: (tmp_path / p).read_bytes() for p in files_under(tmp_path)}
    new = texts_of(3000, "new")
    disk = FakeFullDisk(room=room, where=where)  # the texts, or the record after them, do not fit
    monkeypatch.setattr(registry_module, "open", disk, raising=False)
    for name in ("x", "y"):  # replacing a pool, registering a new one
        with pytest.raises(OSError, match="No space left on device"):
            reg.save(record(name, new), new)
        disk.written = 0
    assert disk.refused == 2
    monkeypatch.undo()
    assert {p: (tmp_path / p).read_bytes() for p in files_under(tmp_path)} == before  # nothing new, no temporary
    assert [r.name for r in reg.records()] == ["x"] and reg.texts(fingerprint(old)) == old


KILLED_WRITER = """
import os, sys, time
from pathlib import Path
from near_schema import fingerprint
from near_service.engine.registry import PoolRecord, Registry

class Texts(list):
    # the pool's texts; iterating them stops half-way, says so, and waits for the SIGKILL
    def __iter__(self):
        for i, t in enumerate(list.__iter__(self)):
            if i == len(self) // 2:
                print("half", flush=True)
                time.sleep(600)
            yield t

plain = [f"{sys.argv[2]} {i}: " + "word " * 20 for i in range(20000)]
texts = Texts(plain)
record = PoolRecord(sys.argv[2], fingerprint(plain), len(plain), "texts", created_at=time.time())
print(record.fingerprint, flush=True)
Registry(Path(sys.argv[1])).save(record, texts)
"""


def _kill_mid_write(root: Path, name: str) -> str:
    """Run a registry write of pool ``name`` in a real process and SIGKILL it half-way; its fingerprint."""
    argv = [sys.executable, "-c", textwrap.dedent(KILLED_WRITER), str(root), name]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as proc:
        watchdog = threading.Timer(WAIT_S, proc.kill)  # a writer that never gets half-way ends the test
        watchdog.start()
        try:
            assert proc.stdout is not None
            fp = proc.stdout.readline().strip()
            assert proc.stdout.readline().strip() == "half"  # half the texts are in its temporary file
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(WAIT_S)
        finally:
            watchdog.cancel()
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    return fp


def test_kill_9_mid_write_leaves_the_old_pool_or_nothing(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    old = texts_of(30, "old")
    reg.save(record("x", old), old)
    replaced_fp = _kill_mid_write(tmp_path, "x")  # replacing x
    new_fp = _kill_mid_write(tmp_path, "y")  # registering y
    leftovers = sorted((tmp_path / "texts").glob(".*.tmp-*"))
    assert len(leftovers) == 2 and all(p.stat().st_size > 0 for p in leftovers)  # half files, under temporary names
    reg = Registry(tmp_path)  # the restart
    records = reg.records()
    assert [(r.name, r.fingerprint) for r in records] == [("x", fingerprint(old))]  # the old x; no y
    assert reg.texts(fingerprint(old)) == old
    assert reg.texts(replaced_fp) is None and reg.texts(new_fp) is None  # a half file is never read
    assert sorted((tmp_path / "texts").glob(".*.tmp-*")) == leftovers  # young: maybe another process's
    for p in leftovers:
        os.utime(p, (time.time() - STALE_TMP_S - 60,) * 2)
    reg.records()  # once they are stale, the next start frees their space
    assert files_under(tmp_path) == ["pools/x.json", f"texts/{fingerprint(old)}.jsonl"]
