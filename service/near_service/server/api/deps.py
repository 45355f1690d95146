"""Dependencies that hand the lifespan's resources to routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from near_service.core.pool import Pool
from near_service.server.selector import Selector
from near_service.server.state import ServiceState


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.near
    return state


def get_pool(state: Annotated[ServiceState, Depends(get_state)]) -> Pool:
    return state.require_selector().pool


def get_selector(state: Annotated[ServiceState, Depends(get_state)]) -> Selector:
    return state.require_selector()


StateDep = Annotated[ServiceState, Depends(get_state)]
PoolDep = Annotated[Pool, Depends(get_pool)]
SelectorDep = Annotated[Selector, Depends(get_selector)]
