"""Exact and approximate search, tie-breaking, duplicates, and the budget strategies."""

from __future__ import annotations

import numpy as np
import pytest

from near_service.core.errors import BudgetError, MaxKError
from near_service.core.index import VectorIndex, first_occurrence, recall_at_k, torch_topk
from near_service.core.selection import fill_budget, max_score, round_robin
from near_service.core.topk import numpy_topk, sort_rows


def unit(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(pool: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    s = queries @ pool.T
    return np.lexsort((np.broadcast_to(np.arange(pool.shape[0]), s.shape), -s), axis=1)[:, :k]


def test_flat_equals_numpy_brute_force() -> None:
    rng = np.random.default_rng(0)
    pool, queries = unit(rng, 500), unit(rng, 40)
    scores, idx = VectorIndex(pool).search(queries, 50)
    assert idx.dtype == np.int64 and scores.dtype == np.float32 and idx.shape == (40, 50)
    np.testing.assert_array_equal(idx, brute_force(pool, queries, 50))
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_k_equal_to_pool_size_and_errors() -> None:
    rng = np.random.default_rng(1)
    index = VectorIndex(unit(rng, 30))
    _, idx = index.search(unit(rng, 3), 30)
    assert sorted(idx[0].tolist()) == list(range(30))
    with pytest.raises(MaxKError, match="larger than the candidate pool"):
        index.search(unit(rng, 3), 31)
    with pytest.raises(MaxKError, match="at least 1"):
        index.search(unit(rng, 3), 0)


def test_duplicates_tie_to_the_lower_index_and_come_out_together() -> None:
    rng = np.random.default_rng(2)
    base = unit(rng, 6)
    texts = ["a", "b", "c", "a", "d", "a", "e", "c"]
    rows = {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4}
    pool = np.stack([base[rows[t]] for t in texts])
    index = VectorIndex(pool, first_of=first_occurrence(texts))
    q = base[[0, 2]]
    _scores, idx = index.search(q, 8)
    assert idx[0, :3].tolist() == [0, 3, 5]  # the three copies of "a", lowest index first
    assert idx[1, :2].tolist() == [2, 7]
    assert sorted(idx[0].tolist()) == list(range(8))
    # ties never split out of order, even when k cuts through a group
    _, idx2 = index.search(q, 2)
    assert idx2[0].tolist() == [0, 3]


def test_exact_ties_between_distinct_rows_go_to_lower_index() -> None:
    pool = np.array([[1, 0], [0, 1], [1, 0], [1, 0]], dtype=np.float32)  # identical vectors, no text info
    _, idx = VectorIndex(pool).search(np.array([[1, 0]], dtype=np.float32), 3)
    assert idx.tolist() == [[0, 2, 3]]


# A tie across the K cut: one distinct row, then four identical ones; k=2 must take rows 1 and 2.
TIE_POOL = np.array([[1, 0], [0, 1], [0, 1], [0, 1], [0, 1]], dtype=np.float32)
TIE_QUERY = np.array([[0, 1]], dtype=np.float32)


def tied_pool(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """5 vectors, 40 copies each, shuffled. Small-integer entries make every dot product exact, so
    copies score bit-identically however a GEMM splits and orders its sums."""
    pool = np.repeat(rng.integers(-2, 3, (5, 8)).astype(np.float32), 40, axis=0)[rng.permutation(200)]
    return pool, rng.integers(-2, 3, (9, 8)).astype(np.float32)


def test_ties_at_the_cut_go_to_the_lower_index_on_cpu() -> None:
    _, idx = VectorIndex(TIE_POOL).search(TIE_QUERY, 2)
    assert idx.tolist() == [[1, 2]]
    # every cut through a run of ties, with many rows so argpartition's choice would vary
    pool, queries = tied_pool(np.random.default_rng(11))
    for k in (1, 7, 39, 40, 41, 119, 199):
        _, got = VectorIndex(pool).search(queries, k)
        np.testing.assert_array_equal(got, brute_force(pool, queries, k))


@pytest.mark.parametrize("kind", ["random", "rounded", "duplicates"])
def test_bounded_selection_equals_the_full_argpartition(kind: str) -> None:
    """numpy_topk's fast path (only scores at or above each row's k-th best of its first columns are
    selected among) gives what the full argpartition gives, ties at the cut included."""
    rng = np.random.default_rng({"random": 1, "rounded": 2, "duplicates": 3}[kind])
    for _ in range(40):
        n, d = int(rng.integers(40, 2000)), int(rng.integers(2, 12))
        k = int(rng.integers(1, min(n // 4, 60) + 1))
        pool = rng.standard_normal((n, d)).astype(np.float32)
        queries = rng.standard_normal((int(rng.integers(1, 30)), d)).astype(np.float32)
        if kind == "rounded":  # many exact ties, at the cut too
            pool, queries = np.round(pool), np.round(queries)
        elif kind == "duplicates":
            pool[rng.integers(0, n, n // 2)] = pool[0]
        block = int(rng.integers(64, 1 << 16))  # the same blocks on both paths: the same float scores
        for head in (1, k, 3 * k, 16):
            fast = sort_rows(*numpy_topk(pool, queries, k, block, bound_head=head))
            full = sort_rows(*numpy_topk(pool, queries, k, block, bound_head=10**9))
            np.testing.assert_array_equal(fast[1], full[1])
            np.testing.assert_array_equal(fast[0], full[0])


@pytest.mark.parametrize("block_bytes", [1 << 30, 4 * 3 * 5])  # one block; a block per 3 rows (merges)
def test_ties_at_the_cut_go_to_the_lower_index_on_the_torch_path(block_bytes: int) -> None:
    pool, queries = tied_pool(np.random.default_rng(12))
    for k in (1, 39, 41, 119):
        _, _, tied = torch_topk(pool, queries, k, device="cpu", max_block_bytes=block_bytes)
        assert tied.any()  # runs of equal scores cross the cut
    index = VectorIndex(TIE_POOL)
    index.device = "cpu:0"  # a torch device string: the path CUDA takes
    assert index.search(TIE_QUERY, 2)[1].tolist() == [[1, 2]]
    index = VectorIndex(pool)
    index.device = "cpu:0"
    for k in (1, 39, 41, 119):
        np.testing.assert_array_equal(index.search(queries, k)[1], brute_force(pool, queries, k))


def test_torch_path_matches_flat_for_large_k_and_blocks() -> None:
    rng = np.random.default_rng(3)
    pool, queries = unit(rng, 3000, 32), unit(rng, 7, 32)
    s_f, i_f = VectorIndex(pool).search(queries, 2500)
    s_t, i_t, _ = torch_topk(pool, queries, 2500, device="cpu", max_block_bytes=4 * 1000 * 3)  # forces pool blocks
    np.testing.assert_allclose(np.sort(s_t, axis=1), np.sort(s_f, axis=1), rtol=1e-5, atol=1e-6)
    assert (np.mean([len(np.intersect1d(a, b)) for a, b in zip(i_t, i_f, strict=True)]) / 2500) > 0.999


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_never_return_minus_one(kind: str) -> None:
    rng = np.random.default_rng(4)
    pool, queries = unit(rng, 2000, 32), unit(rng, 20, 32)
    index = VectorIndex(pool, kind=kind, ivf_nprobe=1)
    _, idx = index.search(queries, 500)
    assert idx.min() >= 0 and idx.max() < 2000
    assert all(len(set(row)) == 500 for row in idx.tolist())
    recall = recall_at_k(index, queries, 500, sample=10)
    assert 0.0 < recall <= 1.0


def test_round_robin_is_dataflex_column_order() -> None:
    rng = np.random.default_rng(5)
    top = rng.integers(0, 40, size=(6, 12))

    def reference(matrix: np.ndarray, budget: int) -> list[int]:  # DataFlex: column by column, skip repeats
        out: list[int] = []
        for col in range(matrix.shape[1]):
            for row in range(matrix.shape[0]):
                c = int(matrix[row, col])
                if c not in out:
                    out.append(c)
                if len(out) == budget:
                    return out
        return out

    n_unique = len(np.unique(top))
    for budget in (1, 5, n_unique):
        assert round_robin(top, budget).tolist() == reference(top, budget)


def test_round_robin_exclude_and_budget_error() -> None:
    top = np.array([[1, 2], [1, 3]])
    assert round_robin(top, 2, exclude=[1]).tolist() == [2, 3]
    with pytest.raises(BudgetError, match="reach only 3 unique candidates"):
        round_robin(top, 4)
    with pytest.raises(BudgetError, match="after leaving out 1 selected in earlier rounds"):
        round_robin(top, 3, exclude=[1])


def test_max_score_ranks_by_best_score_ties_lower_index() -> None:
    top = np.array([[4, 2, 9], [2, 7, 4]])
    scores = np.array([[0.9, 0.5, 0.1], [0.95, 0.5, 0.3]], dtype=np.float32)
    assert max_score(top, scores, 4).tolist() == [2, 4, 7, 9]
    assert fill_budget(top, scores, 2, "max_score").tolist() == [2, 4]
    with pytest.raises(BudgetError, match="reach only 4 unique"):
        max_score(top, scores, 5)


def test_torch_device_path_of_the_index_keeps_its_copy() -> None:
    rng = np.random.default_rng(6)
    pool, queries = unit(rng, 300), unit(rng, 5)
    index = VectorIndex(pool, device="cpu")
    index.device = "cpu:0"  # a torch device string: takes the torch path that CUDA uses
    _, i1 = index.search(queries, 40)
    copy = index._device_vectors
    _, i2 = index.search(queries, 40)
    assert index._device_vectors is copy
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(i1, brute_force(pool, queries, 40))
