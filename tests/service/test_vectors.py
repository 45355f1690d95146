"""The pool vector store and bring-your-own vectors: import formats, checks, warm starts, damage.

In-process tier (FakeEmbedder): the store and the service's use of it. Real-model tier: the CLI's
error messages and exit status, and ``offline --save-embeddings`` output imported back.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from near_service.cli.main import main
from near_service.core.errors import InputError
from near_service.core.records import fingerprint, load_texts
from near_service.core.settings import load_settings
from near_service.stores.vector_files import import_vectors, read_vector_file
from near_service.stores.vectors import NpyRows, PoolVectorStore, read_npy
from tests.conftest import InProcessFactory
from tests.fakes import FAKE_DIM, FakeEmbedder
from tests.service.api_data import metric, qa_records, query_records, write_jsonl


def _pool(tmp_path: Path, n: int = 40) -> tuple[list[dict[str, str]], Path, list[str]]:
    records = qa_records(n)
    path = write_jsonl(tmp_path / "pool.jsonl", records)
    return records, path, load_texts([path], "default", "candidate")


def _vectors(texts: list[str], scale: float = 1.0) -> np.ndarray:
    return FakeEmbedder().embed(texts, "document") * np.float32(scale)


def _write(path: Path, vectors: np.ndarray, manifest: dict[str, Any] | None) -> Path:
    """Write ``vectors`` as .npy / .parquet / .safetensors, the manifest beside it (or inside)."""
    if path.suffix == ".npy":
        np.save(path, vectors)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        col = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])
        table = pa.table({"id": np.arange(len(vectors)), "embedding": col})
        if manifest is not None:
            table = table.replace_schema_metadata({"near": json.dumps(manifest)})
            manifest = None
        pq.write_table(table, path)
    else:
        from safetensors.numpy import save_file

        meta = {k: str(v) for k, v in manifest.items()} if manifest else None
        save_file({"embeddings": np.ascontiguousarray(vectors)}, str(path), metadata=meta)
        manifest = None
    if manifest is not None:
        path.with_name(path.name + ".json").write_text(json.dumps(manifest))
    return path


@pytest.mark.parametrize("suffix", [".npy", ".parquet", ".safetensors"])
def test_import_round_trip(tmp_path: Path, suffix: str, caplog: pytest.LogCaptureFixture) -> None:
    _, pool, texts = _pool(tmp_path)
    fp = fingerprint(texts)
    raw = _vectors(texts, scale=3.0)  # not unit length: normalised on the way in, with a log line
    manifest = {"model": "fake/hashing-bow", "dims": FAKE_DIM, "pool_fingerprint": fp, "count": len(texts)}
    path = _write(tmp_path / f"vecs{suffix}", raw.astype(np.float64 if suffix == ".npy" else np.float32), manifest)
    settings = load_settings(candidates=[pool], cache_dir=tmp_path / "cache")
    embedder = FakeEmbedder()
    with caplog.at_level(logging.WARNING):
        got = import_vectors(settings, embedder, path, fp, len(texts))
    assert "not unit length; L2-normalised" in caplog.text
    np.testing.assert_allclose(got, raw / 3.0, atol=1e-6)
    assert not got.flags.writeable  # the store's checked copy
    again = PoolVectorStore(tmp_path / "cache").load(embedder.namespace, fp, len(texts), FAKE_DIM)
    assert again is not None and np.array_equal(again, got)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rows": 39}, "39 rows, but the candidate pool has 40 candidates"),
        ({"dims": 32}, "vectors have 32 dims, model fake/hashing-bow makes 64"),
        ({"pool_fingerprint": "0123456789abcdef"}, "made for pool 0123456789abcdef"),
        ({"model": "BAAI/bge-small-en"}, "vectors are from model 'BAAI/bge-small-en'"),
        ({"model": None}, "no manifest names the model"),
        ({"zero_row": 5}, "row 5 is all zeros"),
    ],
)
def test_import_refuses_what_does_not_fit(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    from near_service.core.errors import NearError

    _, pool, texts = _pool(tmp_path)
    vecs = _vectors(texts)
    if "rows" in change:
        vecs = vecs[: change["rows"]]
    if "dims" in change:
        vecs = np.ascontiguousarray(vecs[:, : change["dims"]])
    if "zero_row" in change:
        vecs[change["zero_row"]] = 0
    manifest = {"model": "fake/hashing-bow", "pool_fingerprint": fingerprint(texts)}
    manifest.update({k: v for k, v in change.items() if k in ("pool_fingerprint", "model")})
    manifest = {k: v for k, v in manifest.items() if v is not None}
    path = _write(tmp_path / "vecs.npy", vecs, manifest)
    settings = load_settings(candidates=[pool], cache_dir=tmp_path / "cache")
    with pytest.raises(NearError) as info:
        import_vectors(settings, FakeEmbedder(), path, fingerprint(texts), len(texts))
    assert message in info.value.message
    assert not list((tmp_path / "cache").glob("pools/*/*.npy"))  # nothing half-imported


def test_trust_model_flag_accepts_another_model_name(tmp_path: Path) -> None:
    _, pool, texts = _pool(tmp_path)
    path = _write(tmp_path / "vecs.npy", _vectors(texts), {"model": "my-own-model"})
    settings = load_settings(candidates=[pool], cache_dir=tmp_path / "cache", embeddings_trust_model=True)
    got = import_vectors(settings, FakeEmbedder(), path, fingerprint(texts), len(texts))
    assert got.shape == (len(texts), FAKE_DIM)


def test_service_starts_from_imported_vectors_embedding_nothing(tmp_path: Path, inprocess: InProcessFactory) -> None:
    records, _, texts = _pool(tmp_path)
    path = _write(tmp_path / "vecs.npy", _vectors(texts), {"model": "fake/hashing-bow"})
    cache = tmp_path / "cache"
    svc = inprocess(records, cache_dir=str(cache), embeddings=str(path))
    assert svc.embedder.backend.calls == []  # the model ran on no candidate
    assert metric(svc.client, "near_embedded_texts_total") == 0
    queries = [r["question"] for r in query_records()]
    got = svc.client.post("/select", json={"queries": queries, "max_k": 5}).json()
    # a second service on the same cache folder maps the store, with no --embeddings at all
    svc2 = inprocess(records, cache_dir=str(cache))
    assert svc2.embedder.backend.calls == []
    assert svc2.client.post("/select", json={"queries": queries, "max_k": 5}).json()["indices"] == got["indices"]
    # the same answers as a service that embedded the pool itself (the vectors are the fake model's)
    svc3 = inprocess(records, cache_dir=str(tmp_path / "cold"))
    assert svc3.embedder.backend.calls != []
    assert svc3.client.post("/select", json={"queries": queries, "max_k": 5}).json()["indices"] == got["indices"]


def test_service_reports_a_bad_embeddings_file_and_stays_up(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from near_service.server.app import create_app

    _, pool, texts = _pool(tmp_path)
    path = _write(tmp_path / "vecs.npy", _vectors(texts[:-1]), {"model": "fake/hashing-bow"})
    settings = load_settings(candidates=[pool], cache_dir=tmp_path / "cache", embeddings=path)
    with TestClient(create_app(settings, embedder=FakeEmbedder())) as client:
        deadline = time.monotonic() + 30
        while (ready := client.get("/ready").json())["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert ready["status"] == "failed"
        assert "39 rows, but the candidate pool has 40 candidates" in ready["message"]
        assert client.get("/health").status_code == 200
        assert client.post("/select", json={"queries": ["x"], "max_k": 1}).status_code == 503


def test_a_pool_file_damaged_in_place_while_serving_fails_nothing(tmp_path: Path, inprocess: InProcessFactory) -> None:
    """The service holds its own copy of the stored vectors: a file truncated or overwritten in place
    (same inode: ``> file``, ``truncate``) while it serves changes no answer. A memory mapping of the
    file would end the whole process here (SIGBUS on the first search), not one request."""
    records = [
        {"question": f"Question {i}: how many {w} are left?", "answer": str(i)}
        for i, w in enumerate(["apples", "pears"] * 20)
    ]
    cache = tmp_path / "cache"
    cold = inprocess(records, cache_dir=str(cache))
    queries = [r["question"] for r in query_records()]
    body = {"queries": queries, "max_k": 5}
    want = cold.client.post("/select", json=body).json()["indices"]
    warm = inprocess(records, cache_dir=str(cache))
    assert warm.embedder.backend.calls == []  # served from the pool file
    assert not warm.state.engine.get("default").pool.index.has_duplicates  # so the index holds no copy of its own
    (pool_file,) = cache.glob("pools/*/*.npy")
    with open(pool_file, "r+b") as fh:
        fh.truncate(0)
    r = warm.client.post("/select", json={**body, "max_k": 6})  # another K: computed, not a cached answer
    assert r.status_code == 200, r.text
    assert [row[:5] for row in r.json()["indices"]] == want
    pool_file.write_bytes(b"\x00" * 4096)  # overwritten in place
    assert warm.client.post("/select", json=body).json()["indices"] == want


def test_cold_start_writes_the_pool_file_and_a_damaged_one_is_moved_aside(
    tmp_path: Path, inprocess: InProcessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    records, _, texts = _pool(tmp_path)
    cache = tmp_path / "cache"
    svc = inprocess(records, cache_dir=str(cache))
    assert sum(svc.embedder.backend.calls) > 0
    (pool_file,) = cache.glob("pools/*/*.npy")
    queries = [r["question"] for r in query_records()]
    want = svc.client.post("/select", json={"queries": queries, "max_k": 5}).json()["indices"]

    warm = inprocess(records, cache_dir=str(cache))
    assert warm.embedder.backend.calls == []

    pool_file.write_bytes(pool_file.read_bytes()[:-100])  # truncated
    (cache / "embeddings.sqlite3").unlink()  # and no per-text cache: the model must run again
    for extra in cache.glob("embeddings.sqlite3-*"):
        extra.unlink()
    with caplog.at_level(logging.WARNING):
        again = inprocess(records, cache_dir=str(cache))
    assert "are damaged" in caplog.text
    assert sum(again.embedder.backend.calls) > 0
    assert list(cache.glob("pools/*/*.npy.damaged-*"))
    assert again.client.post("/select", json={"queries": queries, "max_k": 5}).json()["indices"] == want
    assert PoolVectorStore(cache).load(again.embedder.namespace, fingerprint(texts), len(texts), FAKE_DIM) is not None


@pytest.mark.parametrize("damage", ["checksum", "norm", "manifest", "truncated", "header", "float64", "empty"])
def test_store_detects_damage(tmp_path: Path, damage: str) -> None:
    store = PoolVectorStore(tmp_path)
    vecs = _vectors([f"text {i}" for i in range(3000)])
    store.save("ns", "fp", vecs, model="fake")
    path, meta = store.paths("ns", "fp")
    mm = np.load(path, mmap_mode="r+")
    if damage == "checksum":
        mm[0, 0] += 0.5  # row 0 is in the checksum sample
    elif damage == "norm":
        mm[1] = 0  # row 1 is not sampled: the norm pass catches it
    mm.flush()
    del mm
    if damage == "manifest":
        meta.write_text("{not json")
    elif damage == "truncated":
        with open(path, "r+b") as fh:
            fh.truncate(path.stat().st_size - 100)
    elif damage == "header":
        with open(path, "r+b") as fh:
            fh.write(b"\x00garbage\xff")
    elif damage == "float64":
        np.save(path, vecs.astype(np.float64))
    elif damage == "empty":
        path.write_bytes(b"")
    assert store.load("ns", "fp", 3000, FAKE_DIM) is None
    assert not path.exists()
    assert store.load("ns", "fp", 3000) is None  # absent now: a plain miss


def test_store_reads_the_file_into_a_read_only_array_the_index_does_not_copy(tmp_path: Path) -> None:
    store = PoolVectorStore(tmp_path)
    vecs = _vectors([f"text {i}" for i in range(500)])
    store.save("ns", "fp", vecs, model="fake")
    got = store.load("ns", "fp", 500, FAKE_DIM)
    assert got is not None
    np.testing.assert_array_equal(got, vecs)
    assert got.dtype == np.float32 and got.flags.c_contiguous and not got.flags.writeable
    assert np.ascontiguousarray(got, dtype=np.float32) is got  # what VectorIndex does: no copy
    with pytest.raises(ValueError):
        got[0, 0] = 1.0


def test_read_vector_file_finds_the_offline_manifest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    np.save(out / "candidate_embeddings.npy", np.eye(3, dtype=np.float32))
    (out / "manifest.json").write_text(json.dumps({"model": "m", "pool_fingerprint": "f", "dims": 3}))
    vf = read_vector_file(out / "candidate_embeddings.npy")
    assert vf.manifest["model"] == "m" and vf.manifest_from == str(out / "manifest.json")


# --- the real model, through the CLI -------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path) -> dict[str, Path]:
    """A small pool, queries, and ``offline --save-embeddings`` output for them (the real MiniLM)."""
    pool = write_jsonl(tmp_path / "pool.jsonl", qa_records(30))
    queries = write_jsonl(tmp_path / "queries.jsonl", query_records())
    out = tmp_path / "first"
    args = ["offline", "--candidates", str(pool), "--queries", str(queries), "--max-k", "5", "--quiet"]
    rc = main([*args, "--out-dir", str(out), "--cache-dir", str(tmp_path / "c1"), "--save-embeddings"])
    assert rc == 0
    return {"pool": pool, "queries": queries, "out": out, "vecs": out / "candidate_embeddings.npy"}


def test_offline_with_imported_embeddings_embeds_no_candidate(saved: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "second"
    rc = main(
        [
            "offline",
            *("--candidates", str(saved["pool"]), "--queries", str(saved["queries"]), "--max-k", "5", "--quiet"),
            *("--out-dir", str(out), "--cache-dir", str(tmp_path / "c2"), "--embeddings", str(saved["vecs"])),
        ]
    )
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cache"]["pool_embedded"] == 0
    assert np.array_equal(np.load(out / "top_indices.npy"), np.load(saved["out"] / "top_indices.npy"))


def test_import_cli_errors_exit_2(saved: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["import", "--candidates", str(saved["pool"]), "--cache-dir", str(tmp_path / "c3")]
    vecs = np.load(saved["vecs"])
    manifest = json.loads((saved["out"] / "manifest.json").read_text())
    cases = {
        "rows": (vecs[:-2], manifest, "28 rows, but the candidate pool has 30 candidates"),
        "dims": (vecs[:, :100], manifest, "vectors have 100 dims, model sentence-transformers/all-MiniLM-L6-v2"),
        "model": (vecs, {**manifest, "model": "Qwen/Qwen3-Embedding-0.6B"}, "but this service embeds queries"),
    }
    for name, (v, m, message) in cases.items():
        path = tmp_path / f"{name}.npy"
        np.save(path, np.ascontiguousarray(v))
        path.with_name(path.name + ".json").write_text(json.dumps(m))
        assert main([*base, str(path)]) == 2, name
        err = capsys.readouterr().err.splitlines()[-1]  # after the model's loading bar
        assert err.startswith("error: ") and message in err, err
    other_pool = write_jsonl(tmp_path / "other.jsonl", qa_records(30, seed=1))
    assert (
        main(["import", "--candidates", str(other_pool), "--cache-dir", str(tmp_path / "c3"), str(saved["vecs"])]) == 2
    )
    assert "made for pool" in capsys.readouterr().err
    assert main([*base, str(saved["vecs"])]) == 0
    assert "imported 30 x 384 vectors" in capsys.readouterr().out


@pytest.mark.parametrize(("chunk", "threads"), [(4096, 1), (4096, 2), (1000, 3), (1 << 20, 2)])
def test_read_npy_reads_every_byte_in_any_chunking(tmp_path: Path, chunk: int, threads: int) -> None:
    want = np.random.default_rng(5).standard_normal((1001, 37), dtype=np.float32)  # sizes off every chunk
    np.save(tmp_path / "v.npy", want)
    got = read_npy(tmp_path / "v.npy", chunk_bytes=chunk, threads=threads)
    np.testing.assert_array_equal(got, want)
    assert not got.flags.writeable
    np.save(tmp_path / "empty.npy", np.empty((0, 37), dtype=np.float32))
    assert read_npy(tmp_path / "empty.npy").shape == (0, 37)


def test_npy_rows_reads_any_row_range_of_any_float_dtype(tmp_path: Path) -> None:
    want = np.random.default_rng(6).standard_normal((101, 7))
    for dtype in ("<f4", ">f4", "<f8", "<f2"):
        np.save(tmp_path / "v.npy", want.astype(dtype))
        rows = NpyRows(tmp_path / "v.npy")
        assert (rows.shape, rows.ndim, rows.dtype, len(rows)) == ((101, 7), 2, np.dtype(dtype), 101)
        for a, b in [(0, 101), (3, 50), (100, 101), (90, 500), (5, 5)]:
            np.testing.assert_array_equal(rows[a:b], want.astype(dtype)[a:b])
        rows.close()


def test_an_embeddings_file_truncated_during_the_import_fails_the_import_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's .npy shrinks after its header was read: a mapped file killed the process (SIGBUS)."""
    from near_service.stores import vector_files

    _, pool, texts = _pool(tmp_path)
    fp = fingerprint(texts)
    path = _write(tmp_path / "vecs.npy", _vectors(texts), {"model": "fake/hashing-bow", "pool_fingerprint": fp})
    real = vector_files.read_vector_file

    def read_then_truncate(*args: Any, **kwargs: Any) -> Any:
        vf = real(*args, **kwargs)
        with open(path, "r+b") as fh:  # what `truncate -s 300 vecs.npy` does while the import runs
            fh.truncate(300)
        return vf

    monkeypatch.setattr(vector_files, "read_vector_file", read_then_truncate)
    settings = load_settings(candidates=[pool], cache_dir=tmp_path / "cache")
    with pytest.raises(InputError, match=r"could not read rows from 0 on .*truncated while read"):
        import_vectors(settings, FakeEmbedder(), path, fp, len(texts))
    assert not list((tmp_path / "cache").glob("pools/*/*.npy"))  # nothing half-imported


def test_a_fortran_ordered_embeddings_file_imports_like_a_c_ordered_one(tmp_path: Path) -> None:
    _, pool, texts = _pool(tmp_path)
    fp = fingerprint(texts)
    vecs = _vectors(texts)
    path = _write(tmp_path / "vecs.npy", np.asfortranarray(vecs), {"model": "fake/hashing-bow"})
    assert np.load(path, mmap_mode="r").flags.f_contiguous
    settings = load_settings(candidates=[pool], cache_dir=None)
    np.testing.assert_allclose(import_vectors(settings, FakeEmbedder(), path, fp, len(texts)), vecs, atol=1e-6)
