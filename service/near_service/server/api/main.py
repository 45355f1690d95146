"""Every router of the service, in the order the OpenAPI docs list them."""

from fastapi import APIRouter

from near_service.server.api import embeddings, health, metrics, pools, runs, select

routers: list[APIRouter] = [
    select.router,
    pools.router,
    runs.router,
    embeddings.router,
    health.router,
    metrics.router,
]
