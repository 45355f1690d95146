"""The approximate density statistics (``method="approx"``) against the exact ones, the method recorded
in :class:`PoolStats` and its file, progress reports and stopping (``core/density.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from near_service.core.density import (
    EXACT_ROWS_CPU,
    EXACT_ROWS_CUDA,
    PoolStats,
    StatsStopped,
    compute_pool_stats,
    resolve_method,
)
from near_service.core.errors import InputError
from near_service.core.selection import density, importance
from near_service.core.settings import DENSITY_STATS_CPU_ROWS, load_settings
from near_service.stores.pool_stats import load_pool_stats, pool_density_stats, save_pool_stats, stats_path


def clustered(n: int, d: int = 48, seed: int = 0) -> np.ndarray:
    """Topics of Zipf-like sizes, each with subtopics and rows around them at the topic's own spread:
    dense and sparse regions, as in an embedding of mixed data sets."""
    rng = np.random.default_rng(seed)
    topics, subs = 24, 6
    t = rng.standard_normal((topics, d))
    s = t[:, None, :] + 0.6 * rng.standard_normal((topics, subs, d))
    weight = 1.0 / np.arange(1, topics + 1)
    topic = rng.choice(topics, n, p=weight / weight.sum())
    spread = rng.uniform(0.4, 1.0, topics)[topic][:, None]
    x = s[topic, rng.integers(0, subs, n)] + spread * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.fixture(scope="module")
def pool() -> np.ndarray:
    return clustered(6000)


@pytest.fixture(scope="module")
def exact(pool: np.ndarray) -> PoolStats:
    return compute_pool_stats(pool, method="exact")


@pytest.fixture(scope="module")
def approx(pool: np.ndarray) -> PoolStats:
    # the sizes scaled down to 6k rows: cells of ~94 rows, each row searched against ~8 cells, a 3,000-row sample
    return compute_pool_stats(pool, method="approx", threads=2)


def test_approx_tracks_exact_on_a_clustered_pool(exact: PoolStats, approx: PoolStats) -> None:
    assert (exact.method, approx.method) == ("exact", "approx")
    assert approx.grid.tolist() == exact.grid.tolist() and approx.prefix.shape == exact.prefix.shape
    assert np.isfinite(approx.prefix).all() and np.isfinite(approx.log_pool).all()
    assert abs(approx.h - exact.h) / exact.h < 0.05  # exact 10th neighbours of a row sample
    assert spearman(approx.log_pool, exact.log_pool) >= 0.99
    for j, g in enumerate(exact.grid):
        # the neighbourhoods the budgets use (kp = 2 x budget): near-exact; the smallest ones need the
        # cells to hold a row's very nearest neighbours, which a few rows at cell borders miss
        floor = 0.98 if g >= 64 else 0.9
        assert spearman(approx.prefix[:, j], exact.prefix[:, j]) >= floor, g


@pytest.mark.parametrize("budget", [50, 300])
def test_approx_selects_what_exact_selects(pool: np.ndarray, exact: PoolStats, approx: PoolStats, budget: int) -> None:
    rng = np.random.default_rng(1)
    queries = pool[rng.choice(len(pool), 40, replace=False)] + 0.05 * rng.standard_normal((40, pool.shape[1]))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    top = np.argsort(-(queries @ pool.T), axis=1)[:, :200]
    for strategy in (density, importance):
        a = strategy(top, queries, pool, approx, budget)
        e = strategy(top, queries, pool, exact, budget)
        assert len(np.intersect1d(a, e)) / budget >= 0.9, strategy.__name__


def test_a_sample_of_the_whole_pool_is_exact(pool: np.ndarray) -> None:
    x = pool[:1500]
    e = compute_pool_stats(x, method="exact")
    a = compute_pool_stats(x, method="approx", sample_rows=len(x), threads=1)
    assert a.method == "approx" and a.h == pytest.approx(e.h)
    np.testing.assert_allclose(a.prefix, e.prefix, atol=1e-3)
    np.testing.assert_allclose(a.log_pool, e.log_pool, atol=1e-3)


def test_auto_is_exact_for_small_pools(pool: np.ndarray) -> None:
    assert compute_pool_stats(pool[:500]).method == "exact"
    assert resolve_method("auto", EXACT_ROWS_CPU) == "exact" and resolve_method("auto", EXACT_ROWS_CPU + 1) == "approx"
    assert resolve_method("auto", EXACT_ROWS_CUDA, "cuda") == "exact"
    assert resolve_method("auto", EXACT_ROWS_CUDA + 1, "cuda:0") == "approx"
    assert resolve_method("exact", 10**9) == "exact" and resolve_method("approx", 10) == "approx"
    assert DENSITY_STATS_CPU_ROWS == EXACT_ROWS_CPU  # the setting's doc and the code say the same
    with pytest.raises(InputError, match="unknown density statistics method 'fast'"):
        compute_pool_stats(pool[:10], method="fast")


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_pools_either_method(n: int) -> None:
    x = clustered(n)
    for method in ("exact", "approx"):
        stats = compute_pool_stats(x, method=method)
        assert stats.method == method and stats.size == n and stats.k == n - 1
        assert np.isfinite(stats.prefix).all() and np.isfinite(stats.log_pool).all()


@pytest.mark.parametrize("method", ["exact", "approx"])
def test_progress_reports_every_block(pool: np.ndarray, method: str) -> None:
    seen: list[tuple[int, int]] = []
    compute_pool_stats(pool[:3000], method=method, on_progress=lambda d, t: seen.append((d, t)), block_bytes=1 << 20)
    done = [d for d, _ in seen]
    assert {t for _, t in seen} == {3000} and done[0] == 0 and done[-1] == 3000
    assert len(seen) > 3 and done == sorted(done)


@pytest.mark.parametrize("method", ["exact", "approx"])
def test_should_stop_stops_it(pool: np.ndarray, method: str) -> None:
    seen: list[int] = []
    with pytest.raises(StatsStopped, match="stopped after"):
        compute_pool_stats(
            pool[:3000],
            method=method,
            on_progress=lambda d, t: seen.append(d),
            should_stop=lambda: len(seen) >= 2,
            block_bytes=1 << 20,
            threads=2,
        )
    assert seen[-1] < 3000
    with pytest.raises(StatsStopped):  # asked before any work
        compute_pool_stats(pool[:3000], method=method, should_stop=lambda: True)


def test_the_method_round_trips_through_the_file(tmp_path: Path, pool: np.ndarray, approx: PoolStats) -> None:
    path = stats_path(tmp_path, "ns", "fp")
    save_pool_stats(path, "ns", "fp", approx)
    back = load_pool_stats(path, "ns", "fp", len(pool))
    assert back is not None and back.method == "approx" and back.version == 2
    np.testing.assert_array_equal(back.prefix, approx.prefix)
    assert load_pool_stats(path, "ns", "fp", len(pool), method="approx") is not None
    assert load_pool_stats(path, "ns", "fp", len(pool), method="exact") is None  # exact asked: recomputed


def test_a_format_1_file_loads_as_exact(tmp_path: Path) -> None:
    x = clustered(300)
    stats = compute_pool_stats(x)
    path = stats_path(tmp_path, "ns", "fp")
    path.parent.mkdir(parents=True)
    with open(path, "wb") as fh:  # what STATS_VERSION 1 wrote: no method field
        np.savez(
            fh,
            version=np.int64(1),
            namespace=np.str_("ns"),
            fingerprint=np.str_("fp"),
            h=np.float64(stats.h),
            grid=stats.grid,
            prefix=stats.prefix,
            log_pool=stats.log_pool,
        )
    back = load_pool_stats(path, "ns", "fp", 300, method="exact")
    assert back is not None and back.method == "exact"
    np.testing.assert_array_equal(back.log_pool, stats.log_pool)


def test_an_unknown_method_in_the_file_is_damage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, pool: np.ndarray, approx: PoolStats
) -> None:
    path = stats_path(tmp_path, "ns", "fp")
    save_pool_stats(path, "ns", "fp", PoolStats(approx.h, approx.grid, approx.prefix, approx.log_pool, method="magic"))
    assert load_pool_stats(path, "ns", "fp", len(pool)) is None
    assert "unknown method 'magic'" in caplog.text


def test_pool_density_stats_passes_method_and_callbacks(tmp_path: Path) -> None:
    x = clustered(2000)
    seen: list[int] = []
    stats, computed = pool_density_stats(
        tmp_path, "ns", "fp", x, method="approx", on_progress=lambda d, t: seen.append(d)
    )
    assert computed and stats is not None and stats.method == "approx" and seen[-1] == 2000
    again, computed = pool_density_stats(tmp_path, "ns", "fp", x)  # auto takes the stored approx file
    assert not computed and again is not None and again.method == "approx"
    exact, computed = pool_density_stats(tmp_path, "ns", "fp", x, method="exact")
    assert computed and exact is not None and exact.method == "exact"
    with pytest.raises(StatsStopped):
        pool_density_stats(None, "ns", "fp", x, method="approx", should_stop=lambda: True)


def test_density_method_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().density_method == "auto"
    monkeypatch.setenv("NEAR_DENSITY_METHOD", "Approx")
    assert load_settings().density_method == "approx"
    assert load_settings(density_method="exact").density_method == "exact"
