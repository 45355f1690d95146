"""The density-aware strategies (``density``, ``importance``) on hand-made inputs with known answers,
the pool statistics against a brute force, their cache beside the pool file, and the strategies
through /select (in-process) and the offline CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from near_service.core.density import PoolStats, _blocks_numpy, _blocks_torch, compute_pool_stats, kp_grid
from near_service.core.errors import BudgetError, InputError
from near_service.core.selection import density, fill_budget, importance, max_score
from near_service.stores.pool_stats import pool_density_stats, stats_path
from tests.conftest import InProcessFactory
from tests.service.api_data import qa_records


def at(*degrees: float) -> np.ndarray:
    r = np.radians(degrees)
    return np.stack([np.cos(r), np.sin(r)], axis=1).astype(np.float32)


# queries at 0 and 36.87 degrees (cos = 0.8: leave-one-out KDE of each = 0.8 at h = 1, so tau = 0.8);
# pool row 0 is opposite them (below the floor), rows 1 and 2 near them
QUERIES = at(0.0, 36.87)
POOL = at(180.0, 10.0, 20.0)
STATS = PoolStats(
    h=1.0,
    grid=np.array([1, 2]),
    prefix=np.array([[0.0, -10.0], [0.0, 1.0], [0.0, 0.5]], dtype=np.float32),  # lp at kp = 1, 2
    log_pool=np.array([-5.0, 0.95, 0.0], dtype=np.float32),
)
ALL = np.array([[1, 2, 0], [2, 1, 0]])  # the neighbour matrix reaches every row


def test_density_known_order() -> None:
    # lt(1) = log mean(e^cos10, e^cos26.87) = 0.9395, lt(2) = 0.9483; lp at kp = 2 (budget 1 -> 2B = 2)
    # contrast: row 2 = 0.448 > row 1 = -0.060; row 0: contrast 9.1 but lt = -0.9 < tau = 0.8 -> last
    assert density(ALL, QUERIES, POOL, STATS, 3).tolist() == [2, 1, 0]
    assert density(ALL, QUERIES, POOL, STATS, 1).tolist() == [2]
    assert density(ALL, QUERIES, POOL, STATS, 2, exclude=[2]).tolist() == [1, 0]
    # max_score ranks by the best single similarity instead: row 1 (cos 10 degrees) first
    scores = (QUERIES @ POOL.T)[np.arange(2)[:, None], ALL]
    assert max_score(ALL, scores, 3).tolist() == [1, 2, 0]
    # one query: no floor, row 0's contrast wins (lt = -1 - (-10) = 9)
    assert density(ALL[:1], QUERIES[:1], POOL, STATS, 1).tolist() == [0]


def test_density_uses_the_grid_size_nearest_twice_the_budget() -> None:
    lp, kp = STATS.lp(2)
    assert kp == 2 and lp.tolist() == [-10.0, 1.0, 0.5]
    assert STATS.lp(1)[1] == 1 and STATS.lp(400)[1] == 2
    stats = PoolStats(1.0, kp_grid(2048), np.zeros((1, 12), np.float32), np.zeros(1, np.float32))
    assert [stats.lp(2 * b)[1] for b in (1, 3, 5, 100, 700, 5000)] == [2, 8, 8, 256, 1024, 2048]


def test_importance_known_order() -> None:
    # lt - log_pool: row 0 = -0.90 + 5 = 4.1; row 1 = 0.9395 - 0.95 = -0.01; row 2 = 0.9483 - 0 = 0.948
    assert importance(ALL, QUERIES, POOL, STATS, 3).tolist() == [0, 2, 1]
    assert fill_budget(ALL, ALL * 0.0, 2, "importance", queries=QUERIES, pool_vectors=POOL, stats=STATS).tolist() == [
        0,
        2,
    ]


def test_ties_go_to_the_lower_index_and_only_reached_rows_rank() -> None:
    pool = at(5.0, 5.0, 5.0, 90.0)
    stats = PoolStats(1.0, np.array([1]), np.zeros((4, 1), np.float32), np.zeros(4, np.float32))
    top = np.array([[2, 1]])  # rows 0 and 3 are not reached by the neighbour matrix
    assert density(top, at(0.0), pool, stats, 2).tolist() == [1, 2]
    assert density(top, at(0.0), pool, stats, 3, candidates=np.arange(4)).tolist() == [0, 1, 2]
    with pytest.raises(BudgetError, match="reach only 2 unique candidates"):
        density(top, at(0.0), pool, stats, 3)


def test_density_strategies_need_their_inputs() -> None:
    with pytest.raises(InputError, match="needs the query vectors"):
        fill_budget(ALL, ALL * 0.0, 2, "density")
    with pytest.raises(InputError, match="unknown strategy 'nope'"):
        fill_budget(ALL, ALL * 0.0, 2, "nope")


def brute_stats(p: np.ndarray, k: int) -> tuple[float, np.ndarray, np.ndarray]:
    s = (p @ p.T).astype(np.float64)
    np.fill_diagonal(s, -np.inf)
    srt = -np.sort(-s, axis=1)[:, :k]
    h = float(np.median(1 - srt[:, 9]))
    grid = kp_grid(k)
    prefix = np.stack([np.log(np.exp(srt[:, :g] / h).mean(axis=1)) for g in grid], axis=1)
    others = np.where(np.isfinite(s), np.exp(s / h), 0.0).sum(axis=1) / (len(p) - 1)
    return h, prefix, np.log(others)


def unit(rng: np.random.Generator, n: int, d: int = 8) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    out: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


@pytest.mark.parametrize("k_max", [2048, 40])
def test_pool_stats_equal_a_brute_force(k_max: int) -> None:
    p = unit(np.random.default_rng(0), 300)
    p[7] = p[3]  # a duplicate counts as a neighbour (only the row itself is left out)
    stats = compute_pool_stats(p, k_max=k_max, block_bytes=4096)  # many small blocks
    h, prefix, log_pool = brute_stats(p, min(k_max, 299))
    assert stats.k == min(k_max, 299) and stats.grid.tolist() == kp_grid(stats.k).tolist()
    assert stats.h == pytest.approx(h, rel=1e-6)
    np.testing.assert_allclose(stats.prefix, prefix, rtol=0, atol=2e-5)
    np.testing.assert_allclose(stats.log_pool, log_pool, rtol=0, atol=2e-5)
    assert stats.prefix[3, 0] == pytest.approx(1 / h, rel=1e-5)  # row 3's nearest other row is its copy


def test_torch_blocks_match_numpy_blocks() -> None:
    p = unit(np.random.default_rng(1), 200)
    rows = np.arange(200)
    t_np, l_np = _blocks_numpy(p, rows, 50, 0.4, 8192)
    t_t, l_t = _blocks_torch(p, rows, 50, 0.4, 8192, "cpu")
    assert l_np is not None and l_t is not None
    np.testing.assert_allclose(t_t, t_np, atol=1e-6)
    np.testing.assert_allclose(l_t, l_np, atol=1e-5)


def test_tiny_pools() -> None:
    one = compute_pool_stats(unit(np.random.default_rng(2), 1))
    assert one.k == 0 and one.prefix.shape == (1, 0)
    assert density(np.array([[0]]), unit(np.random.default_rng(3), 2), unit(np.random.default_rng(2), 1), one, 1) == [0]
    five = compute_pool_stats(unit(np.random.default_rng(2), 5))
    assert five.grid.tolist() == [1, 2, 4] and np.isfinite(five.h)


def test_stats_cache_is_reused_and_damage_is_recomputed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = unit(np.random.default_rng(4), 120)
    first, computed = pool_density_stats(tmp_path, "ns", "fp0", p)
    assert computed and stats_path(tmp_path, "ns", "fp0") == tmp_path / "pools" / "ns" / "fp0.density.npz"
    again, computed = pool_density_stats(tmp_path, "ns", "fp0", p)
    assert not computed and again.h == first.h
    np.testing.assert_array_equal(again.prefix, first.prefix)
    np.testing.assert_array_equal(again.log_pool, first.log_pool)
    path = stats_path(tmp_path, "ns", "fp0")
    for damage in (b"not a zip file", path.read_bytes()[:100]):
        path.write_bytes(damage)
        with caplog.at_level(logging.WARNING):
            stats, computed = pool_density_stats(tmp_path, "ns", "fp0", p)
        assert computed and "damaged" in caplog.text and stats.h == first.h
        caplog.clear()
    # a file for another pool size (same key) is refused too
    _, computed = pool_density_stats(tmp_path, "ns", "fp0", p[:100])
    assert computed
    assert pool_density_stats(None, "ns", "fp0", p)[1]  # no cache folder: computed every time


def test_select_density_inprocess(
    inprocess: InProcessFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    queries = [r["question"] for r in qa_records(40)[:4]]
    with caplog.at_level(logging.INFO, logger="near_service"):
        svc = inprocess(cache_dir=str(cache))
    assert "pool density statistics computed" in caplog.text
    body = {"queries": queries, "max_k": 10, "budget": 8}
    r = svc.client.post("/select", json=body)
    assert r.status_code == 200, r.text
    picked = r.json()["selected"]
    assert len(set(picked)) == 8 and set(picked) <= {i for row in r.json()["indices"] for i in row}
    # the same answer as the core function on the service's own vectors and statistics
    pool = svc.state.engine.pools["default"].pool
    assert pool is not None and pool.density_stats is not None
    qv = svc.embedder.embed(queries, "query")
    expect = density(np.array(r.json()["indices"]), qv, pool.vectors, pool.density_stats, 8)
    assert picked == expect.tolist()
    for strategy in ("importance", "round_robin", "max_score"):
        other = svc.client.post("/select", json={**body, "strategy": strategy})
        assert other.status_code == 200 and len(set(other.json()["selected"])) == 8
    # bad parameters: clear 422s, and the service still answers
    too_many = svc.client.post("/select", json={**body, "max_k": 2, "budget": 30})
    assert too_many.status_code == 422 and too_many.json()["error"]["code"] == "budget_too_large"
    assert "reach only" in too_many.json()["error"]["message"]
    unknown = svc.client.post("/select", json={**body, "strategy": "dsir"})
    assert unknown.status_code == 422 and "density" in unknown.json()["error"]["message"]
    assert svc.client.post("/select", json=body).json()["selected"] == picked
    # a restart over the same cache folder reads the statistics instead of computing them
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="near_service"):
        again = inprocess(cache_dir=str(cache))
    assert "pool density statistics read from the cache" in caplog.text and "statistics computed" not in caplog.text
    assert again.client.post("/select", json=body).json()["selected"] == picked
    assert list(cache.glob("pools/*/*.density.npz"))


def test_offline_density_writes_selected(tmp_path: Path) -> None:
    from near_service.cli import main
    from tests.service.test_offline_cli import make_pool, write_jsonl

    pool = write_jsonl(tmp_path / "pool.jsonl", make_pool(60))
    queries = write_jsonl(tmp_path / "q.jsonl", [{"question": "how do I cook bread?", "answer": ""}])
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["offline", "--candidates", str(pool), "--queries", str(queries), "--cache-dir", str(cache), "--quiet"]
    assert main([*args, "--out-dir", str(out), "--max-k", "30", "--budget", "10", "--save-embeddings"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["strategy"] == "density"  # the default
    selected = json.loads((out / "selected.json").read_text())
    top = np.load(out / "top_indices.npy")
    pv, qv = np.load(out / "candidate_embeddings.npy"), np.load(out / "query_embeddings.npy")
    assert selected == density(top, qv, pv, compute_pool_stats(pv), 10).tolist()
    assert list(cache.glob("pools/*/*.density.npz"))
    assert (
        main([*args, "--out-dir", str(tmp_path / "rr"), "--max-k", "30", "--budget", "10", "--strategy", "round_robin"])
        == 0
    )
    np.testing.assert_array_equal(np.load(tmp_path / "rr" / "top_indices.npy"), top)  # DataFlex's file: unchanged


def test_density_strategies_are_a_clear_422_when_the_pool_statistics_are_off(inprocess: InProcessFactory) -> None:
    svc = inprocess(density_stats="off")
    assert svc.state.engine.get("default").pool.density_stats is None
    body = {"queries": ["How many apples now?"], "max_k": 5, "budget": 3}
    refused = svc.client.post("/select", json={**body, "strategy": "density"})
    assert refused.status_code == 422, refused.text
    assert "NEAR_DENSITY_STATS" in refused.json()["error"]["message"]
    assert svc.client.post("/select", json={**body, "strategy": "round_robin"}).status_code == 200
    assert svc.client.post("/select", json={"queries": ["apples"], "max_k": 5}).status_code == 200  # no budget


def test_a_damaged_statistics_file_is_not_recomputed_where_computing_is_not_wanted(
    inprocess: InProcessFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``wanted`` is False for ``off`` and for a large pool on CPU under ``auto`` (hours of work there):
    a stored file is still used then, but a damaged one must not start the computation."""
    cache = tmp_path / "cache"
    inprocess(cache_dir=str(cache))  # auto, small pool: computes and stores them
    (path,) = cache.glob("pools/*/*.density.npz")
    with caplog.at_level(logging.INFO, logger="near_service"):
        reader = inprocess(cache_dir=str(cache), density_stats="off")
    assert "read from the cache" in caplog.text
    assert reader.state.engine.get("default").pool.density_stats is not None
    path.write_bytes(path.read_bytes()[:100])  # damaged
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="near_service"):
        svc = inprocess(cache_dir=str(cache), density_stats="off")
    assert "damaged" in caplog.text and "statistics computed" not in caplog.text
    assert svc.state.engine.get("default").pool.density_stats is None
    refused = svc.client.post("/select", json={"queries": ["apples"], "max_k": 5, "budget": 3})
    assert refused.status_code == 422 and "NEAR_DENSITY_STATS" in refused.json()["error"]["message"]
