"""Dependencies that hand the lifespan's resources to routes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import Depends, Request

from near_service.server.state import ServiceState


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.near
    return state


T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its answer was ready; the work for it was cancelled."""


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client goes away first (raises :class:`ClientGone`).

    The request body has been read by then, so the next ASGI message is the disconnect. Cancelling
    drops the request's embedding chunks that have not run yet.
    """
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this request itself was cancelled
        task.cancel()
        raise
    finally:
        watch.cancel()
    if not task.done():
        task.cancel()
        await asyncio.wait({task})  # let it unwind (its queued chunks are dropped)
        raise ClientGone
    return task.result()


StateDep = Annotated[ServiceState, Depends(get_state)]
