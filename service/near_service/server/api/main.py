"""Every router of the service, in the order the OpenAPI docs list them."""

from fastapi import APIRouter

from near_service.server.api import embeddings, health, metrics, pools, reports, runs, select

routers: list[APIRouter] = [
    select.router,
    pools.router,
    reports.router,  # before runs: /runs/{run_id:path} would take /runs/x/report too
    runs.router,
    embeddings.router,
    health.router,
    metrics.router,
]
