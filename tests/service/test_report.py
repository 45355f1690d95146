"""Reports: the JSON numbers against values computed here independently, missing parts, escaping,
self-containment, the map cache and per-row sources. Pure: no model, no browser (see
test_report_browser.py for the page in Chromium)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from near_service.core.density import compute_pool_stats
from near_service.core.records import record_sources
from near_service.report import PoolView, RoundView, build_pool_report, build_run_report, render_html
from near_service.stores.pool_map import map_path, pool_projection

XSS = "<script>window.__pwned=1</script></script><img src=x onerror=alert(1)>"


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_pool(n: int = 60, d: int = 8, seed: int = 0) -> PoolView:
    rng = np.random.default_rng(seed)
    vectors = unit(rng.normal(size=(n, d)))
    sources = ["a"] * (n // 2) + ["b"] * (n // 3) + ["c"] * (n - n // 2 - n // 3)  # 30 / 20 / 10
    texts = [f"row {i} {XSS}" if i == 7 else f"row {i} of {sources[i]}" for i in range(n)]
    return PoolView("small", texts=texts, sources=sources, source_note="source: test", vectors=vectors)


def make_round(pool: PoolView, r: int, selected: list[int], seed: int) -> RoundView:
    assert pool.vectors is not None
    rng = np.random.default_rng(seed)
    q = unit(pool.vectors[rng.integers(0, pool.size, 4)] + 0.1 * rng.normal(size=(4, pool.vectors.shape[1])))
    s = q @ pool.vectors.T
    idx = np.argsort(-s, axis=1)[:, :6]
    return RoundView(
        round=r,
        indices=idx,
        scores=np.take_along_axis(s, idx, 1).astype(np.float32),
        selected=np.array(selected),
        strategy="density",
        budget=len(selected),
        max_k=6,
        query_count=4,
        query_texts=[f"query {r}.{i} <b>bold</b>" for i in range(4)],
        query_vectors=q,
        created_at=1.7e9 + r,
    )


@pytest.fixture
def run() -> tuple[PoolView, list[RoundView]]:
    pool = make_pool()
    sels = [list(range(10)), [*range(5, 15), 40], list(range(50, 60))]
    return pool, [make_round(pool, r, s, seed=r) for r, s in enumerate(sels)]


def test_run_numbers_match_an_independent_count(run: tuple[PoolView, list[RoundView]]) -> None:
    pool, rounds = run
    rep = json.loads(json.dumps(build_run_report("r1", rounds[::-1], pool)))  # JSON-able; rounds sorted
    assert [r["round"] for r in rep["rounds"]] == [0, 1, 2]
    assert [r["selected"] for r in rep["rounds"]] == [10, 11, 10]
    assert [r["new"] for r in rep["rounds"]] == [10, 6, 10]
    assert [(r["query_count"], r["max_k"], r["strategy"], r["budget"]) for r in rep["rounds"]][1] == (
        4,
        6,
        "density",
        11,
    )
    sets = [set(r.selected.tolist()) for r in rounds if r.selected is not None]
    for i in range(3):
        for j in range(3):
            inter = len(sets[i] & sets[j])
            assert rep["overlap"]["count"][i][j] == inter
            assert rep["overlap"]["jaccard"][i][j] == pytest.approx(inter / len(sets[i] | sets[j]), abs=1e-4)
    assert rep["overlap"]["count"][1][0] == 5 and rep["overlap"]["jaccard"][1][0] == pytest.approx(5 / 16, abs=1e-4)

    src = rep["sources"]
    assert src["names"] == ["a", "b", "c"]
    assert src["pool_share"] == pytest.approx([0.5, 1 / 3, 1 / 6], abs=1e-6)
    assert src["rounds"][0]["share"] == pytest.approx([1, 0, 0])
    assert src["rounds"][1]["share"] == pytest.approx([10 / 11, 1 / 11, 0], abs=1e-6)
    assert src["rounds"][2]["share"] == pytest.approx([0, 0, 1])

    assert pool.vectors is not None
    for r, sim in zip(rounds, rep["similarity"]["rounds"], strict=True):
        assert r.selected is not None and r.query_vectors is not None
        best = (pool.vectors[r.selected] @ r.query_vectors.T).max(axis=1)
        assert sim["method"] == "vectors"
        assert sim["selected_mean"] == pytest.approx(float(best.mean()), abs=1e-4)
        assert sum(sim["selected"]) == len(r.selected) and sum(sim["pool"]) == pool.size

    for ex in rep["examples"]:
        r = rounds[ex["round"]]
        assert ex["query_text"] == f"query {r.round}.{ex['query']} <b>bold</b>"
        assert r.selected is not None
        for nb, row, score in zip(ex["neighbours"], r.indices[ex["query"]], r.scores[ex["query"]], strict=False):
            assert (nb["row"], nb["selected"]) == (int(row), int(row) in set(r.selected.tolist()))
            assert nb["score"] == pytest.approx(float(score), abs=1e-4)
            assert nb["text"] == pool.texts[int(row)] if pool.texts and int(row) != 7 else True

    m = rep["map"]
    assert len(m["pool"]["x"]) == pool.size and len(m["layers"]) == 3
    assert sorted(m["layers"][1]["row"]) == sorted(sets[1])
    assert len(m["queries"]["x"]) == 12 and "vectors projected" in m["queries"]["note"]


def test_rounds_without_budget_and_without_vectors(run: tuple[PoolView, list[RoundView]]) -> None:
    pool, rounds = run
    bare = PoolView("bare", texts=pool.texts, sources=None, source_note="")
    r0 = rounds[0]
    r = RoundView(0, r0.indices, r0.scores)  # no selection, no query texts or vectors
    rep = build_run_report("r2", [r], bare)
    assert rep["rounds"][0]["selected"] == len(np.unique(r0.indices))
    assert rep["rounds"][0]["selected_from"].startswith("neighbour lists")
    assert rep["similarity"]["rounds"][0]["method"] == "lists"
    assert rep["map"] is None and rep["sources"]["names"] == []
    assert any("not stored" in n for n in rep["notes"]) and any("no map" in n for n in rep["notes"])
    html = render_html(rep)
    assert "(query text not stored)" in html


def test_pool_gone_still_gives_the_numbers(run: tuple[PoolView, list[RoundView]]) -> None:
    _, rounds = run
    rep = build_run_report("r1", rounds, None, pool_name="deleted-pool")
    assert rep["pool"] == {"present": False, "name": "deleted-pool", "rows": None}
    assert [r["selected"] for r in rep["rounds"]] == [10, 11, 10]
    assert rep["overlap"]["count"][1][0] == 5
    assert rep["map"] is None and all(nb["text"] is None for ex in rep["examples"] for nb in ex["neighbours"])
    assert "is gone" in render_html(rep)
    small = PoolView("other", texts=["x"] * 20)  # rows the run names are not in it: not this run's pool
    rep2 = build_run_report("r1", rounds, small)
    assert rep2["pool"]["present"] is False and any("not this run's pool" in n for n in rep2["notes"])


def test_pool_texts_are_escaped_and_nothing_is_fetched(run: tuple[PoolView, list[RoundView]]) -> None:
    pool, rounds = run
    for rep in (build_run_report("r1", rounds, pool), build_pool_report(pool)):
        html = render_html(rep)
        assert "<script>window.__pwned" not in html and "<img src=x" not in html
        assert "<b>bold</b>" not in html
        if rep["kind"] == "run":  # the neighbour table shows row 7's text, escaped
            shown = [nb["row"] for ex in rep["examples"] for nb in ex["neighbours"]]
            assert 7 not in shown or "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
            assert "query 0.0 &lt;b&gt;bold&lt;/b&gt;" in html
        # self-contained: no tag loads anything by URL
        assert not re.findall(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=", html, flags=re.I)
        assert "cdn.bokeh.org" not in html


def test_pool_report_numbers() -> None:
    pool = make_pool(n=90)
    assert pool.vectors is not None and pool.texts is not None
    vectors = pool.vectors.copy()
    vectors[10] = vectors[11]  # an exact copy
    vectors[20] = unit(vectors[21:22] + 0.05 * np.ones((1, vectors.shape[1]), np.float32))[0]  # a near copy
    texts = list(pool.texts)
    texts[30] = texts[31]
    pool = PoolView("p", texts=texts, sources=pool.sources, source_note="n", vectors=vectors)
    s = vectors @ vectors.T
    np.fill_diagonal(s, -np.inf)
    expected = int((s.max(axis=1) >= 0.95 - 1e-6).sum())
    assert expected >= 2
    exact = build_pool_report(pool)["duplicates"]
    assert (exact["method"], exact["rows_with_near_duplicate"]) == ("exact", expected)
    assert (exact["identical_rows"], exact["identical_groups"]) == (2, 1)
    pool.stats = compute_pool_stats(vectors)
    rep = build_pool_report(pool)
    assert (rep["duplicates"]["method"], rep["duplicates"]["rows_with_near_duplicate"]) == ("statistics", expected)
    assert rep["pool"]["rows"] == 90 and rep["sources"]["rows"] == [45, 30, 15]
    lens = [len(t) for t in texts]
    assert rep["lengths"]["max"] == max(lens) and sum(rep["lengths"]["counts"]) == 90
    html = render_html(rep)
    for heading in ("Pool", "Sources", "Text length", "Near-duplicates", "Map of the pool"):
        assert f"<h2>{heading}</h2>" in html


def test_pool_report_with_nothing_but_a_name() -> None:
    rep = build_pool_report(PoolView("empty", rows=5))
    assert rep["lengths"] is None and rep["map"] is None and rep["duplicates"]["rows_with_near_duplicate"] is None
    assert "<h2>Near-duplicates</h2>" in render_html(rep)


def test_render_rejects_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown report kind"):
        render_html({"kind": "other"})


def test_map_is_cached_beside_the_statistics(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    v = make_pool().vectors
    assert v is not None
    fit, coords, computed = pool_projection(tmp_path, "ns", "fp", v)
    assert computed and coords.shape == (len(v), 2)
    np.testing.assert_allclose(coords, (v - fit.mean) @ fit.components.T, atol=1e-5)
    path = map_path(tmp_path, "ns", "fp")
    assert path.name == "fp.map.npz" and path.parent == tmp_path / "pools" / "ns"
    _, again, computed = pool_projection(tmp_path, "ns", "fp", v)
    assert not computed and np.array_equal(again, coords)
    path.write_bytes(b"not a zip")
    _, third, computed = pool_projection(tmp_path, "ns", "fp", v)
    assert computed and np.array_equal(third, coords) and "damaged" in caplog.text
    _, _, computed = pool_projection(tmp_path, "ns", "fp", v[:10])  # another row count: recomputed
    assert computed


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_record_sources(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "1", "dataset": "gsm8k"}, {"text": "2", "dataset": "mbpp"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "3"}])
    assert record_sources([a, b]) == (
        ["gsm8k", "mbpp", "b.jsonl"],
        "source: each row's 'dataset' field, else its file (3 sources)",
    )
    sources, note = record_sources(b)
    assert sources == ["b.jsonl"] and "one source" in note
    sources, note = record_sources([b, write_jsonl(tmp_path / "c.jsonl", [{"text": "4"}, {"text": "5"}])])
    assert sources == ["b.jsonl", "c.jsonl", "c.jsonl"] and "file each row came from" in note
