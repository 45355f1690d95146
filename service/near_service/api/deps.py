"""Dependencies that hand the lifespan's resources to routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..pool import Pool
from ..state import ServiceState


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.near
    return state


def get_pool(state: Annotated[ServiceState, Depends(get_state)]) -> Pool:
    return state.require_pool()


StateDep = Annotated[ServiceState, Depends(get_state)]
PoolDep = Annotated[Pool, Depends(get_pool)]
