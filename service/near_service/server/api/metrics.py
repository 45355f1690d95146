"""``GET /metrics``: Prometheus text format, from this app's own registry."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from near_service.server.api.deps import StateDep

router = APIRouter(tags=["status"])


@router.get("/metrics", response_class=Response)
async def metrics(state: StateDep) -> Response:
    """Requests and latency per route, queue depth, cache hits and misses, Redis state."""
    state.update_redis_gauge()
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
