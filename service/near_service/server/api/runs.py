"""``GET /runs/{run_id}``: the rounds the ledger holds for a training run, and the pool it belongs to;
``GET /runs/{run_id}/rounds/{round}``: one stored round with its selection."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Path

from near_schema import DEFAULT_POOL, RUN_ID_PATTERN, ErrorBody, PoolInfo, RunInfo, RunRound, RunRoundDetail
from near_service.core.errors import NotFoundError, UnavailableError
from near_service.server.api.deps import StateDep
from near_service.server.state import ServiceState
from near_service.stores.ledger import Ledger

router = APIRouter(tags=["runs"])


def run_ledger(state: ServiceState, run_id: str) -> tuple[Ledger, PoolInfo, bool]:
    """The ledger that holds ``run_id``'s rounds, its pool and whether that pool is gone (blocking).

    A run is bound to the pool of its first round; a run stored before bindings existed is looked
    up in the default pool's ledger."""
    engine, model = state.engine, state.engine.embedder.spec.name
    if state.redis is None or engine.bindings is None:
        raise UnavailableError(
            "run_id needs the run ledger, which needs Redis: set NEAR_REDIS_URL (or leave out run_id and round)"
        )
    bound = engine.bindings.get(run_id)
    if bound is None:
        default = engine.get(DEFAULT_POOL)
        ledger = state.require_ledger(default.ledger)
        return (
            ledger,
            PoolInfo(size=default.rows, fingerprint=default.fingerprint, model=model, name=default.name),
            False,
        )
    entry = engine.pools.get(bound["pool"])
    if entry is not None and entry.fingerprint != bound["fingerprint"]:
        raise NotFoundError(
            f"no run {run_id!r} for pool {entry.name!r} as it is now: the run belongs to that name's earlier content "
            f"(fingerprint {bound['fingerprint']}, now {entry.fingerprint})"
        )
    gone = entry is None
    rows = entry.rows if entry is not None else 0
    info = PoolInfo(size=rows, fingerprint=bound["fingerprint"], model=model, name=bound["pool"])
    return state.redis.ledger(bound["ledger_scope"]), info, gone


@router.get(
    "/runs/{run_id:path}/rounds/{round}",
    response_model=RunRoundDetail,
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
async def get_run_round(
    state: StateDep,
    run_id: str = Path(pattern=RUN_ID_PATTERN),
    round: int = Path(ge=0, le=100_000),
) -> RunRoundDetail:
    """One stored round: what was asked (strategy, max_k, budget, query count) and its selection,
    read without asking the queries again (404 if the run or the round is not stored; 409
    ``ledger_damaged`` if its entry cannot be read back). A resumed trainer replays it from here."""

    def read() -> RunRoundDetail:
        ledger, info, gone = run_ledger(state, run_id)
        stored = ledger.get(run_id, round)
        if stored is None:
            raise NotFoundError(f"run {run_id!r} has no round {round} in the ledger for this pool and model")
        p, selected = stored.params, stored.result.selected
        return RunRoundDetail(
            run_id=run_id,
            round=round,
            strategy=p["strategy"],
            max_k=p["max_k"],
            budget=p.get("budget"),
            query_count=p.get("query_count"),
            exclude_previous=bool(p.get("exclude_previous", False)),
            created_at=stored.created_at,
            selected=None if selected is None else [int(i) for i in selected],
            pool=info,
            pool_deleted=gone,
        )

    return await asyncio.to_thread(read)


@router.get(
    "/runs/{run_id:path}", response_model=RunInfo, responses={404: {"model": ErrorBody}, 503: {"model": ErrorBody}}
)
async def get_run(state: StateDep, run_id: str = Path(pattern=RUN_ID_PATTERN)) -> RunInfo:
    """The run's stored rounds, in order (404 if the ledger has none), and its pool (``pool_deleted``
    when that pool was deleted or replaced since: the rounds stay)."""

    def read() -> RunInfo:
        ledger, info, gone = run_ledger(state, run_id)
        rounds = ledger.rounds(run_id)
        return RunInfo(run_id=run_id, rounds=[RunRound(**r) for r in rounds], pool=info, pool_deleted=gone)

    return await asyncio.to_thread(read)
