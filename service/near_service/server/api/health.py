"""``GET /health`` (liveness), ``GET /ready`` (503 while the pool loads), ``GET /info``."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from near_schema import ErrorBody, HealthResponse, InfoResponse, MemoryPlanInfo, PoolInfo, Progress, ReadyResponse
from near_service import __version__
from near_service.server.api.deps import PoolDep, StateDep

router = APIRouter(tags=["status"])


@router.get("/health", response_model=HealthResponse)
async def health() -> HealthResponse:
    """Liveness: the process answers. Never needs the API key."""
    return HealthResponse()


@router.get(
    "/ready",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "Loading (with progress) or failed."}},
)
async def ready(state: StateDep) -> JSONResponse:
    """200 once the pool is embedded and indexed; 503 with progress before. Reports Redis as ok,
    degraded (down: the service computes instead) or disabled."""
    loading = state.loading
    body = ReadyResponse(
        status=loading.status,
        redis=state.redis_state,
        message=loading.message,
        progress=Progress(done=loading.done, total=loading.total),
    )
    return JSONResponse(body.model_dump(), status_code=200 if loading.status == "ready" else 503)


@router.get("/info", response_model=InfoResponse, responses={503: {"model": ErrorBody}})
async def info(state: StateDep, pool: PoolDep) -> InfoResponse:
    """What this service serves: model, backend, device, dtype, dimensions, pool, index."""
    d = state.embedder.describe()
    return InfoResponse(
        version=__version__,
        model=d["model"],
        revision=d["revision"],
        backend=d["backend"],
        device=d["device"],
        dtype=d["dtype"],
        dim=int(pool.vectors.shape[1]),
        max_length=d["max_length"],
        pooling=d["pooling"],
        query_prompt=d["query_prompt"],
        index=state.settings.index,
        redis=state.redis_state,
        pool=PoolInfo(size=pool.size, fingerprint=pool.fingerprint, model=d["model"]),
        memory=MemoryPlanInfo(**dataclasses.asdict(state.memory_plan)) if state.memory_plan else None,
    )
