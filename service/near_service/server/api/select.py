"""``POST /select``: HTTP in, :class:`~near_service.server.selector.Selector` behind, JSON out."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from near_schema import ErrorBody, SelectRequest, SelectResponse

from near_service.server.api.deps import SelectorDep, StateDep

router = APIRouter(tags=["select"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": why}
    for code, why in [
        (401, "Missing or wrong API key."),
        (409, "This (run_id, round) is stored with different parameters."),
        (413, "Too many queries, a query too long, or a body too large."),
        (422, "Invalid request: max_k over the pool size or limit, budget too large, bad fields."),
        (429, "Queue full; retry after the Retry-After header."),
        (503, "Not ready yet, or run_id given and Redis unavailable."),
    ]
}


@router.post("/select", response_model=SelectResponse, responses=_ERRORS)
async def select_endpoint(req: SelectRequest, state: StateDep, selector: SelectorDep) -> Response:
    """Find each query's ``max_k`` nearest candidates (nearest first) and, with ``budget``, pick that
    many unique candidates (``round_robin``: DataFlex's order; ``max_score``: best score first).

    With ``run_id`` + ``round`` (needs Redis) the result is stored; the same round asked again returns
    it unchanged (``source: stored``; 409 if asked with different parameters); ``exclude_previous``
    leaves out what the run's earlier rounds selected.
    """
    with state.admitted():
        result = await selector.select(req)
        body = await selector.encode_async(result)
    timing = ", ".join(f"{k.removesuffix('_s')};dur={v * 1000:.3f}" for k, v in result.timings.items())
    return Response(body, media_type="application/json", headers={"Server-Timing": timing})
