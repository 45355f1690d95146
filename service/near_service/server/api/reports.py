"""Reports: ``GET /runs/{run_id}/report[.json]`` and ``GET /pools/{name}/report[.json]``.

The HTML is one self-contained page (no request leaves it); the JSON holds the same numbers. Both
need the same key as ``/runs`` (the API key). A run whose pool was deleted still gives its numbers
and says the pool is gone.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse, JSONResponse

from near_schema import POOL_NAME_PATTERN, RUN_ID_PATTERN, ErrorBody
from near_service.core.records import record_sources
from near_service.engine.pools import PoolEntry
from near_service.report import PoolView, RoundView, build_pool_report, build_run_report, render_html
from near_service.server.api.deps import StateDep
from near_service.server.api.runs import run_ledger
from near_service.server.state import ServiceState
from near_service.stores.pool_map import pool_projection

router = APIRouter(tags=["reports"])
_ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody}, 503: {"model": ErrorBody}}
# The HTML routes' errors are the one JSON error body too (with "model", FastAPI would document them as text/html).
_HTML_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {
        "description": "Error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
    for code in (404, 503)
}


def pool_view(state: ServiceState, entry: PoolEntry) -> PoolView:
    """What a report needs of a searchable pool: texts, sources, vectors, statistics, the cached map."""
    pool = entry.pool
    assert pool is not None
    engine = state.engine
    sources: list[str] | None = None
    if entry.source == "texts":
        note = "registered as texts (PUT /pools): no per-row source, one source"
    else:
        paths = state.settings.candidates if entry.source == "startup" else engine.pool_paths(entry.files)
        try:
            found, note = record_sources(paths)
            sources = found if len(found) == pool.size else None
        except Exception as exc:  # the files changed or vanished since: the report says so
            note = f"sources unavailable ({type(exc).__name__}: {exc})"
    fit, coords, _ = pool_projection(
        state.settings.cache_dir, engine.embedder.namespace, pool.fingerprint, pool.vectors
    )
    return PoolView(
        entry.name,
        texts=pool.texts,
        sources=sources,
        source_note=note,
        vectors=pool.vectors,
        stats=pool.density_stats,
        projection=coords,
        map_fit=fit,
        fingerprint=pool.fingerprint,
        rows=pool.size,
    )


def run_report(state: ServiceState, run_id: str) -> dict[str, Any]:
    ledger, info, gone = run_ledger(state, run_id)
    rounds = [RoundView.from_stored(stored, texts) for stored, texts in ledger.stored_rounds(run_id)]
    view = None
    if not gone:
        entry = state.engine.searchable(info.name)
        view = pool_view(state, entry)
    return build_run_report(run_id, rounds, view, pool_name=info.name)


def pool_report(state: ServiceState, name: str) -> dict[str, Any]:
    return build_pool_report(pool_view(state, state.engine.searchable(name)))


@router.get("/runs/{run_id:path}/report.json", responses=_ERRORS)
async def run_report_json(state: StateDep, run_id: str = Path(pattern=RUN_ID_PATTERN)) -> JSONResponse:
    """The run's report numbers, round by round (what the HTML page draws)."""
    return JSONResponse(await asyncio.to_thread(run_report, state, run_id))


@router.get("/runs/{run_id:path}/report", response_class=HTMLResponse, responses=_HTML_ERRORS)
async def run_report_html(state: StateDep, run_id: str = Path(pattern=RUN_ID_PATTERN)) -> HTMLResponse:
    """The run's report as one self-contained HTML page (opens offline, from disk)."""
    report = await asyncio.to_thread(run_report, state, run_id)
    return HTMLResponse(await asyncio.to_thread(render_html, report))


@router.get("/pools/{name}/report.json", responses=_ERRORS)
async def pool_report_json(state: StateDep, name: str = Path(pattern=POOL_NAME_PATTERN)) -> JSONResponse:
    """The pool's report numbers: rows, sources, text lengths, near-duplicates, the 2D map."""
    return JSONResponse(await asyncio.to_thread(pool_report, state, name))


@router.get("/pools/{name}/report", response_class=HTMLResponse, responses=_HTML_ERRORS)
async def pool_report_html(state: StateDep, name: str = Path(pattern=POOL_NAME_PATTERN)) -> HTMLResponse:
    """The pool's report as one self-contained HTML page."""
    report = await asyncio.to_thread(pool_report, state, name)
    return HTMLResponse(await asyncio.to_thread(render_html, report))
