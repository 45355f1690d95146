"""``GET /runs/{run_id}``: the rounds the ledger holds for a training run."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Path

from near_schema import RUN_ID_PATTERN, ErrorBody, PoolInfo, RunInfo, RunRound
from near_service.server.api.deps import PoolDep, StateDep

router = APIRouter(tags=["runs"])


@router.get(
    "/runs/{run_id:path}", response_model=RunInfo, responses={404: {"model": ErrorBody}, 503: {"model": ErrorBody}}
)
async def get_run(state: StateDep, pool: PoolDep, run_id: str = Path(pattern=RUN_ID_PATTERN)) -> RunInfo:
    """The run's stored rounds, in order (404 if the ledger has none for this pool and model)."""
    ledger = state.require_ledger()
    rounds = await asyncio.to_thread(ledger.rounds, run_id)
    return RunInfo(
        run_id=run_id,
        rounds=[RunRound(**r) for r in rounds],
        pool=PoolInfo(size=pool.size, fingerprint=pool.fingerprint, model=state.embedder.spec.name),
    )
