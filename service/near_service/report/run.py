"""The report of a run: what each round selected, how rounds overlap, where the picks come from,
how close they are to the queries, and where they sit in the pool.

>>> import numpy as np
>>> r = RoundView(0, np.array([[0, 1]]), np.array([[0.9, 0.5]], dtype=np.float32), np.array([0]))
>>> rep = build_run_report("demo", [r], PoolView("p", texts=["a", "b", "c"]))
>>> rep["rounds"][0]["selected"], rep["pool"]["rows"]
(1, 3)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from near_service.core.projection import Pca
from near_service.report import common
from near_service.report.views import PoolView, RoundView

__all__ = ["build_run_report"]

SIM_SAMPLE = 5000  # pool rows whose similarity to the queries is the pool's histogram (with vectors)
EXAMPLE_ROUNDS = 3
EXAMPLE_QUERIES = 3
EXAMPLE_NEIGHBOURS = 5
EXAMPLE_TEXT = 240
MAP_QUERIES = 400


def _selection(r: RoundView) -> tuple[np.ndarray, str]:
    if r.selected is not None:
        return np.asarray(r.selected, dtype=np.int64), "selected"
    return np.unique(np.asarray(r.indices, dtype=np.int64)), "neighbour lists (no budget)"


def _overlap(sels: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise |A ∩ B| and Jaccard of the rounds' selections (R x R; diagonal: |A| and 1).

    Every (row, round) entry sorted by row: the rounds that share a row stand next to each other,
    so the pairs at distance d = 1, 2, ... within a run of equal rows are the rounds' common rows.
    Cost: entries x (most rounds one row is in), not rounds^2 x rows."""
    n = len(sels)
    if n == 0:
        return np.zeros((0, 0), np.int64), np.zeros((0, 0))
    uniq = [np.unique(s) for s in sels]
    sizes = np.array([len(u) for u in uniq], dtype=np.int64)
    elems = np.concatenate(uniq)
    owner = np.repeat(np.arange(n, dtype=np.int64), sizes)
    order = np.argsort(elems, kind="stable")
    e, o = elems[order], owner[order]
    pairs = np.zeros(n * n, dtype=np.int64)
    for d in range(1, n):
        same = e[d:] == e[:-d]
        if not same.any():
            break
        pairs += np.bincount(o[d:][same] * n + o[:-d][same], minlength=n * n)
    counts = pairs.reshape(n, n)
    counts = counts + counts.T
    counts[np.diag_indices(n)] = sizes
    unions = sizes[:, None] + sizes[None, :] - counts
    jac = np.divide(counts, unions, out=np.zeros((n, n)), where=unions > 0)
    return counts, jac


def _new_rows(sels: Sequence[np.ndarray]) -> list[int]:
    """How many of each round's rows no earlier round selected."""
    top = max((int(s.max()) for s in sels if len(s)), default=-1)
    seen = np.zeros(top + 1, dtype=np.bool_)
    out = []
    for s in sels:
        u = np.unique(s)
        out.append(int(len(u) - seen[u].sum()))
        seen[u] = True
    return out


def _best_scores(r: RoundView, rows: np.ndarray) -> np.ndarray:
    """Each of ``rows``' best score over the round's neighbour lists it is in (-inf: in none)."""
    idx = np.asarray(r.indices, dtype=np.int64).ravel()
    sc = np.asarray(r.scores, dtype=np.float32).ravel()
    uniq, inv = np.unique(idx, return_inverse=True)
    best = np.full(len(uniq), -np.inf, dtype=np.float32)
    np.maximum.at(best, inv, sc)
    pos = np.clip(np.searchsorted(uniq, rows), 0, max(len(uniq) - 1, 0))
    found = (uniq[pos] == rows) if len(uniq) else np.zeros(len(rows), bool)
    return np.where(found, best[pos] if len(uniq) else -np.inf, -np.inf).astype(np.float32)


def _max_sim(vectors: np.ndarray, rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
    out = np.empty(len(rows), dtype=np.float32)
    q = np.asarray(queries, dtype=np.float32)
    for r0 in range(0, len(rows), 4096):
        out[r0 : r0 + 4096] = (np.asarray(vectors[rows[r0 : r0 + 4096]], dtype=np.float32) @ q.T).max(axis=1)
    return out


def _sample_max_sims(vectors: np.ndarray, sample: np.ndarray, queries: Sequence[np.ndarray]) -> list[np.ndarray]:
    """For each round's queries, every sampled row's best cosine to them: one pass over the sample
    against all rounds' queries at once (a few large matmuls, not one small one per round)."""
    q = np.concatenate([np.asarray(x, dtype=np.float32) for x in queries])
    starts = np.cumsum([0, *(len(x) for x in queries[:-1])])
    sv = np.asarray(vectors[sample], dtype=np.float32)
    out = np.empty((len(queries), len(sample)), dtype=np.float32)
    step = max(1, (32 << 20) // max(4 * len(q), 1))
    for r0 in range(0, len(sample), step):
        out[:, r0 : r0 + step] = np.maximum.reduceat(sv[r0 : r0 + step] @ q.T, starts, axis=1).T
    return list(out)


def _similarity(rounds: Sequence[RoundView], sels: Sequence[np.ndarray], pool: PoolView | None) -> dict[str, Any]:
    raw: list[tuple[np.ndarray, np.ndarray, str]] = []
    vectors = pool.vectors if pool is not None else None
    sample = common.spaced(len(vectors), SIM_SAMPLE) if vectors is not None else None
    with_vectors = [
        vectors is not None and r.query_vectors is not None and len(r.query_vectors) > 0 and len(sel) > 0
        for r, sel in zip(rounds, sels, strict=True)
    ]
    pool_sims: dict[int, np.ndarray] = {}
    if vectors is not None and sample is not None and any(with_vectors):
        at = [i for i, ok in enumerate(with_vectors) if ok]
        qs = [np.asarray(rounds[i].query_vectors) for i in at]
        pool_sims = dict(zip(at, _sample_max_sims(vectors, sample, qs), strict=True))
    for i, (r, sel) in enumerate(zip(rounds, sels, strict=True)):
        if i in pool_sims and vectors is not None and r.query_vectors is not None:
            raw.append((_max_sim(vectors, sel, r.query_vectors), pool_sims[i], "vectors"))
        else:
            reach = np.unique(np.asarray(r.indices, dtype=np.int64))
            raw.append((_best_scores(r, sel), _best_scores(r, reach), "lists"))
    finite = [a[np.isfinite(a)] for s, p, _ in raw for a in (s, p)]
    edges = common.edges_for(finite)
    out_rounds = []
    for r, (s, p, method) in zip(rounds, raw, strict=True):
        s, p = s[np.isfinite(s)], p[np.isfinite(p)]
        out_rounds.append(
            {
                "round": r.round,
                "method": method,
                "selected": common.histogram(s, edges),
                "pool": common.histogram(p, edges),
                "selected_mean": round(float(s.mean()), 4) if len(s) else None,
                "pool_mean": round(float(p.mean()), 4) if len(p) else None,
            }
        )
    methods = {m for _, _, m in raw}
    what = {
        "vectors": (
            f"a row's similarity = its best cosine to the round's queries (those whose vectors the report has); "
            f"pool = up to {SIM_SAMPLE:,} evenly spaced pool rows"
        ),
        "lists": (
            "a row's similarity = its best score in the round's neighbour lists (top max_k of each query); "
            "pool = every row those lists reach (query vectors not at hand)"
        ),
    }
    return {
        "edges": [round(float(e), 4) for e in edges],
        "what": [what[m] for m in sorted(methods)],
        "rounds": out_rounds,
    }


def _sources(sels: Sequence[np.ndarray], rounds: Sequence[RoundView], pool: PoolView | None) -> dict[str, Any]:
    if pool is None:
        return {"note": "the pool is gone: no sources", "names": [], "pool_share": [], "rounds": []}
    coded = common.source_codes(pool)
    if coded is None:
        return {
            "note": pool.source_note or "the pool's rows have no sources",
            "names": [],
            "pool_share": [],
            "rounds": [],
        }
    codes, names = coded
    return {
        "note": pool.source_note,
        "names": names,
        "pool_share": common.shares(codes, len(names)),
        "rounds": [
            {"round": r.round, "share": common.shares(codes[s], len(names)), "count": len(s)}
            for r, s in zip(rounds, sels, strict=True)
        ],
    }


def _examples(rounds: Sequence[RoundView], sels: Sequence[np.ndarray], pool: PoolView | None) -> list[dict[str, Any]]:
    out = []
    for pos in common.spaced(len(rounds), EXAMPLE_ROUNDS):
        r, chosen = rounds[pos], set(sels[pos].tolist())
        known = len(r.query_texts) if r.query_texts else len(r.indices)
        for qi in common.spaced(min(known, len(r.indices)), EXAMPLE_QUERIES):
            neighbours = []
            for row, score in list(zip(r.indices[qi], r.scores[qi], strict=True))[:EXAMPLE_NEIGHBOURS]:
                text = None
                if pool is not None and pool.texts is not None:
                    text = common.truncate(pool.texts[int(row)], EXAMPLE_TEXT)
                neighbours.append(
                    {"row": int(row), "score": round(float(score), 4), "selected": int(row) in chosen, "text": text}
                )
            qtext = common.truncate(r.query_texts[qi], EXAMPLE_TEXT) if r.query_texts else None
            out.append({"round": r.round, "query": int(qi), "query_text": qtext, "neighbours": neighbours})
    return out


def _query_points(rounds: Sequence[RoundView], fit: Pca | None, coords: np.ndarray) -> dict[str, Any]:
    """Where the queries sit on the map: their vectors projected where the report has them and the
    map's PCA, else the mean of their top 10 neighbours' map positions (the PCA is linear: that is
    the projection of the neighbours' mean vector)."""
    xs, ys, texts, labels = [], [], [], []
    how = set()
    per_round = max(1, MAP_QUERIES // max(len(rounds), 1))
    for r in rounds:
        for qi in common.spaced(len(r.indices), per_round):
            if fit is not None and r.query_vectors is not None and qi < len(r.query_vectors):
                xy = (np.asarray(r.query_vectors[qi], dtype=np.float32) - fit.mean) @ fit.components.T
                how.add("their vectors projected")
            else:
                xy = coords[np.asarray(r.indices[qi][:10], dtype=np.int64)].mean(axis=0)
                how.add("the mean map position of their top 10 neighbours")
            xs.append(round(float(xy[0]), 4))
            ys.append(round(float(xy[1]), 4))
            known = r.query_texts is not None and qi < len(r.query_texts)
            texts.append(
                common.truncate(r.query_texts[qi], common.MAP_TEXT) if known and r.query_texts else f"query {qi}"
            )
            labels.append(f"round {r.round}")
    note = f"{len(xs):,} queries drawn at " + " or ".join(sorted(how))
    return {"x": xs, "y": ys, "text": texts, "round": labels, "note": note}


def _check_pool(rounds: Sequence[RoundView], pool: PoolView | None) -> str | None:
    if pool is None:
        return None
    top = max((int(np.max(r.indices)) for r in rounds if np.size(r.indices)), default=-1)
    top = max([top, *(int(np.max(r.selected)) for r in rounds if r.selected is not None and len(r.selected))])
    if top >= pool.size:
        return f"the run names row {top} but the pool {pool.name!r} has {pool.size} rows: it is not this run's pool"
    return None


def build_run_report(
    run_id: str, rounds: Sequence[RoundView], pool: PoolView | None, pool_name: str | None = None
) -> dict[str, Any]:
    """The run's report as JSON-able data (what ``GET /runs/{id}/report.json`` returns and
    :func:`~near_service.report.render.render_html` draws). ``pool=None``: the pool is gone (the
    run's numbers still come out, and the report says so)."""
    rounds = sorted(rounds, key=lambda r: r.round)
    notes: list[str] = []
    mismatch = _check_pool(rounds, pool)
    if mismatch is not None:
        notes.append(mismatch)
        pool_name, pool = pool.name if pool else pool_name, None
    if pool is None:
        name = pool_name or "(unknown)"
        notes.append(
            f"the pool {name!r} is gone (deleted, evicted or replaced): the run's numbers only, no texts or map"
        )
        pool_info: dict[str, Any] = {"present": False, "name": name, "rows": None}
    else:
        pool_info = {"present": True, "name": pool.name, "rows": pool.size, "fingerprint": pool.fingerprint}
        if pool.texts is None:
            notes.append("the pool's texts are not at hand: rows are shown by number")
        if pool.vectors is None and pool.projection is None:
            notes.append("the pool's vectors are not at hand: no map")
    sels_what = [_selection(r) for r in rounds]
    sels = [s for s, _ in sels_what]
    if any(w != "selected" for _, w in sels_what):
        notes.append("rounds without a budget count the union of their neighbour lists as their selection")
    if rounds and all(r.query_texts is None for r in rounds):
        notes.append("the queries' texts are not stored: queries are shown by number")
    counts, jac = _overlap(sels)
    new = _new_rows(sels)
    table = [
        {
            "round": r.round,
            "strategy": r.strategy,
            "budget": r.budget,
            "max_k": r.max_k
            if r.max_k is not None
            else int(np.shape(r.indices)[1])
            if np.ndim(r.indices) == 2
            else None,
            "selected": len(s),
            "unique_reached": len(np.unique(r.indices)),
            "query_count": r.query_count if r.query_count is not None else len(r.indices),
            "new": new[i],
            "exclude_previous": r.exclude_previous,
            "created_at": r.created_at,
            "selected_from": w,
        }
        for i, (r, (s, w)) in enumerate(zip(rounds, sels_what, strict=True))
    ]
    fit, coords = common.pool_coords(pool) if pool is not None else (None, None)
    groups = common.round_groups([r.round for r in rounds])
    layers = []
    for g in groups:
        lo, hi = rounds[g[0]].round, rounds[g[-1]].round
        label = f"round {lo}" if lo == hi else f"rounds {lo}-{hi}"
        layers.append((label + " selected", np.concatenate([sels[i] for i in g])))
    map_ = None
    if pool is not None and coords is not None:
        pv = PoolView(pool.name, pool.texts, pool.sources, pool.source_note, projection=coords, map_fit=fit)
        map_ = common.map_section(pv, layers, _query_points(rounds, fit, coords))
    return {
        "kind": "run",
        "title": f"Run {run_id}",
        "run_id": run_id,
        "generated_at": time.time(),
        "notes": notes,
        "pool": pool_info,
        "rounds": table,
        "overlap": {
            "rounds": [r.round for r in rounds],
            "count": counts.tolist(),
            "jaccard": np.round(jac, 4).tolist(),
        },
        "sources": _sources(sels, rounds, pool),
        "similarity": _similarity(rounds, sels, pool),
        "examples": _examples(rounds, sels, pool),
        "map": map_,
    }
