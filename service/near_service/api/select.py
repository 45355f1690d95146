"""``POST /select``: each query's nearest candidates, an optional budget, and the run ledger.

The same core as ``near-select offline`` (:meth:`Pool.rank` on the embedder's query vectors), so
``indices`` equal the offline ``top_indices.npy`` for the same pool, queries and settings. Query
embedding is micro-batched across requests; search, selection and JSON encoding run in worker
threads. With ``run_id`` and ``round`` the answer is stored in the ledger; asking again returns the
stored answer, and asking again with other parameters is a 409 ``conflict``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Response

from near_client.schema import ErrorBody, PoolInfo, SelectRequest, SelectResponse

from ..errors import MaxKError
from ..ledger import StoredRound, check_params
from ..pool import Pool
from ..records import fingerprint
from ..state import ServiceState
from .deps import PoolDep, StateDep

router = APIRouter(tags=["select"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": why} for code, why in [
        (401, "Missing or wrong API key."),
        (409, "This (run_id, round) is stored with different parameters."),
        (413, "Too many queries, a query too long, or a body too large."),
        (422, "Invalid request: max_k over the pool size or limit, budget too large, bad fields."),
        (429, "Queue full; retry after the Retry-After header."),
        (503, "Not ready yet, or run_id given and Redis unavailable."),
    ]}


def _encode(indices: np.ndarray, scores: np.ndarray, selected: list[int] | None, pool: PoolInfo) -> bytes:
    return orjson.dumps({"indices": indices, "scores": scores, "selected": selected,
                         "pool": pool.model_dump()}, option=orjson.OPT_SERIALIZE_NUMPY)


def _params(req: SelectRequest) -> dict[str, Any]:
    """What must match for a stored round to answer a request."""
    return {"queries": fingerprint(req.queries), "query_count": len(req.queries), "max_k": req.max_k,
            "budget": req.budget, "strategy": req.strategy, "exclude_previous": req.exclude_previous}


def _check_max_k(state: ServiceState, pool: Pool, max_k: int) -> None:
    limit = min(pool.size, state.settings.max_k_limit)
    if max_k > limit:
        why = (f"the candidate pool ({pool.size} candidates)" if limit == pool.size
               else f"the limit NEAR_MAX_K_LIMIT={state.settings.max_k_limit}")
        raise MaxKError(f"max_k {max_k} is larger than {why}")


async def _compute(state: ServiceState, pool: Pool, req: SelectRequest,
                   exclude: list[int] | None) -> tuple[np.ndarray, np.ndarray, list[int] | None, dict[str, float]]:
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    qvecs = await state.batcher.embed(req.queries)
    t1 = time.perf_counter()
    result = await loop.run_in_executor(state.search_executor, pool.rank, qvecs, req.max_k, req.budget,
                                        req.strategy, exclude)
    selected = None if result.selected is None else [int(i) for i in result.selected]
    return result.indices, result.scores, selected, {"embed": t1 - t0, **result.timings}


@router.post("/select", response_model=SelectResponse, responses=_ERRORS)
async def select(req: SelectRequest, state: StateDep, pool: PoolDep) -> Response:
    """Find each query's ``max_k`` nearest candidates (nearest first) and, with ``budget``, pick that
    many unique candidates (``round_robin``: DataFlex's order; ``max_score``: best score first).

    With ``run_id`` + ``round`` (needs Redis) the result is stored; the same round asked again returns
    it unchanged (409 if asked with different parameters); ``exclude_previous`` leaves out what the
    run's earlier rounds selected.
    """
    state.check_texts(req.queries)
    _check_max_k(state, pool, req.max_k)
    info = PoolInfo(size=pool.size, fingerprint=pool.fingerprint, model=state.embedder.spec.name)
    loop = asyncio.get_running_loop()
    with state.admitted():
        if req.run_id is None or req.round is None:
            indices, scores, selected, timings = await _compute(state, pool, req, None)
        else:
            ledger = state.require_ledger()
            params = _params(req)
            stored: StoredRound | None = await asyncio.to_thread(ledger.get, req.run_id, req.round)
            timings = {}
            if stored is None:
                exclude = (await asyncio.to_thread(ledger.previous_selected, req.run_id, req.round)
                           if req.exclude_previous else None)
                indices, scores, selected, timings = await _compute(state, pool, req, exclude)
                stored = await asyncio.to_thread(ledger.put, req.run_id, req.round, params, indices, scores,
                                                 selected)
            check_params(req.run_id, stored, params)
            indices, scores, selected = stored.indices, stored.scores, stored.selected
        t = time.perf_counter()
        body = await loop.run_in_executor(state.search_executor, _encode, indices, scores, selected, info)
        timings["encode"] = time.perf_counter() - t
    server_timing = ", ".join(f"{k.removesuffix('_s')};dur={v * 1000:.3f}" for k, v in timings.items())
    return Response(body, media_type="application/json", headers={"Server-Timing": server_timing})
