"""``GET /health`` (liveness), ``GET /ready`` (503 while the default pool loads), ``GET /info``."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from near_schema import ErrorBody, HealthResponse, InfoResponse, MemoryPlanInfo, PoolInfo, Progress, ReadyResponse
from near_service import __version__
from near_service.server.api.deps import StateDep

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
    """200 once the default pool (if the service has one) is embedded, indexed and has its statistics;
    503 with progress before. A service started without a pool is ready once its model is loaded
    (and serves ``PUT /pools``). Reports Redis as ok, degraded (down: the service computes instead)
    or disabled."""
    status, message, done, total = state.ready_status()
    body = ReadyResponse(
        status=status,
        redis=state.redis_state,
        message=message,
        progress=Progress(done=done, total=total),
        pool=state.engine.default_name,
    )
    return JSONResponse(body.model_dump(), status_code=200 if status == "ready" else 503)


@router.get("/info", response_model=InfoResponse, responses={503: {"model": ErrorBody}})
async def info(state: StateDep) -> InfoResponse:
    """What this service serves: model, backend, device, dtype, dimensions, the default pool, every
    pool, index, the max_k limit (503 until the model is loaded)."""
    engine = state.engine
    engine.require_model()
    d = engine.embedder.describe()
    default = engine.pools.get(engine.default_name or "")
    pool = (
        PoolInfo(size=default.rows, fingerprint=default.fingerprint, model=d["model"], name=default.name)
        if default is not None and default.searchable
        else None
    )
    plan = engine.memory_plan
    return InfoResponse(
        version=__version__,
        model=d["model"],
        revision=d["revision"],
        backend=d["backend"],
        device=d["device"],
        dtype=d["dtype"],
        dim=int(engine.embedder.load().dim),
        max_length=d["max_length"],
        pooling=d["pooling"],
        query_prompt=d["query_prompt"],
        index=state.settings.index,
        redis=state.redis_state,
        pool=pool,
        pools=[e.status(engine.default_name) for e in list(engine.pools.values())],
        memory=MemoryPlanInfo(**dataclasses.asdict(plan)) if plan else None,
        max_k_limit=state.settings.max_k_limit,
    )
