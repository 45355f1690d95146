"""``POST /select``: HTTP in, the pool's :class:`~near_service.server.select_handler.SelectHandler`
behind, JSON out."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from near_schema import ErrorBody, SelectRequest, SelectResponse
from near_service.server.api.deps import ClientGone, StateDep, unless_disconnected
from near_service.server.select_handler import SelectHandler

#: Answers with more (query, neighbour) pairs than this are streamed in chunks of rows.
STREAM_ENTRIES = 65536
#: What a client that hung up is "answered" (nginx's convention; nobody reads it, /metrics counts it).
CLIENT_CLOSED = 499

router = APIRouter(tags=["select"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": why}
    for code, why in [
        (401, "Missing or wrong API key."),
        (404, "No pool of that name (pool_not_found)."),
        (409, "This (run_id, round) is stored with different parameters, or the run belongs to another pool."),
        (408, "The request body arrived too slowly (NEAR_BODY_TIMEOUT)."),
        (413, "Too many queries, a query too long, queries x max_k over NEAR_MAX_RESULT_ENTRIES, or a body too large."),
        (422, "Invalid request: bad fields or JSON, max_k over the pool size or limit, budget too large."),
        (429, "Queue full; retry after the Retry-After header."),
        (
            503,
            "The pool is not ready yet (pool_not_ready, with Retry-After), its density statistics are being "
            "computed (stats_pending), or run_id given and Redis unavailable.",
        ),
    ]
}


@router.post("/select", response_model=SelectResponse, responses=_ERRORS)
async def select_endpoint(req: SelectRequest, request: Request, state: StateDep) -> Response:
    """Find each query's ``max_k`` nearest candidates (nearest first) and, with ``budget``, pick that
    many unique candidates (``density``, the default: target density over the candidate's pool
    neighbourhood's; ``round_robin``: DataFlex's order; ``max_score``: best score first;
    ``importance``: target over pool density).

    With ``run_id`` + ``round`` (needs Redis) the result is stored; the same round asked again returns
    it unchanged (``source: stored``; 409 if asked with different parameters); ``exclude_previous``
    leaves out what the run's earlier rounds selected. ``pool`` names a registered pool (default:
    the pool named ``default``).
    """
    entry = await state.engine_call(state.engine.searchable, req.pool, req.strategy, req.budget)
    handler = state.handler(entry)
    handler.check(req)  # a request over the limits is refused before it takes a place in the queue
    entry.in_use += 1
    try:
        return await _answer(req, request, state, handler)
    finally:
        entry.in_use -= 1


async def _answer(req: SelectRequest, request: Request, state: StateDep, handler: SelectHandler) -> Response:
    with state.admitted():
        try:
            result = await unless_disconnected(request, handler.select(req))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        if result.indices.size > STREAM_ENTRIES:  # no second whole copy of a big answer in memory
            return StreamingResponse(
                handler.encode_chunks(result), media_type="application/json", headers=_timing(result.timings)
            )
        body = await handler.encode_async(result)
    return Response(body, media_type="application/json", headers=_timing(result.timings))


def _timing(timings: dict[str, float]) -> dict[str, str]:
    return {"Server-Timing": ", ".join(f"{k.removesuffix('_s')};dur={v * 1000:.3f}" for k, v in timings.items())}
