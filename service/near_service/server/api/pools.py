"""``/pools``: register (``PUT``), list, show and delete pools while the service serves.

``PUT /pools/{name}`` takes ``{"texts": [...]}``, ``{"files": [...], "template": ...}`` (files under
NEAR_POOL_DIR) or an NDJSON body (``Content-Type: application/x-ndjson``: one JSON string per line,
read as it streams in, so a large pool is never held twice). It answers 202 at once (embedding runs
in the engine's background), 200 when the name already holds the same content (nothing embedded),
409 when it holds other content (``?replace=true`` replaces it) and 507 when the pool does not fit
NEAR_MAX_POOL_MEMORY or the disk is full (nothing is registered then).
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from near_schema import POOL_NAME_PATTERN, ErrorBody, PoolList, PoolRequest, PoolStatus
from near_service.core.errors import InputError
from near_service.server.api.deps import StateDep
from near_service.server.state import ServiceState

router = APIRouter(tags=["pools"])

NDJSON = "application/x-ndjson"
CLIENT_CLOSED = 499
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": why}
    for code, why in [
        (401, "Missing or wrong API key (PUT and DELETE: the admin key, where one is set)."),
        (404, "No pool of that name (pool_not_found)."),
        (408, "The body arrived too slowly."),
        (409, "The name holds other content (pool_conflict); PUT with ?replace=true replaces it."),
        (413, "A body over NEAR_MAX_POOL_BODY_BYTES, or more pools than NEAR_MAX_POOLS."),
        (422, "Bad body, texts, template or file paths (invalid_input, invalid_record, invalid_pool_path)."),
        (
            507,
            "The pool's memory plan does not fit NEAR_MAX_POOL_MEMORY, even after evicting idle pools "
            "(insufficient_memory), or the disk is full (insufficient_storage).",
        ),
    ]
}
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PoolRequest.model_json_schema()},
            NDJSON: {"schema": {"type": "string", "description": "One JSON string (a text) per line."}},
        },
    }
}
NamePath = Path(pattern=POOL_NAME_PATTERN, description="Pool name: letters, digits, '.', '_' and '-'; 1-64 chars.")


def _status(state: ServiceState, name: str) -> PoolStatus:
    return state.engine.get(name).status(state.engine.default_name)


@router.get("/pools", response_model=PoolList)
async def list_pools(state: StateDep) -> PoolList:
    """Every pool: state, rows, fingerprint, progress, memory, and which is the default."""
    engine = state.engine
    return PoolList(
        pools=[e.status(engine.default_name) for e in list(engine.pools.values())],
        default=engine.default_name,
        memory_bytes=engine.memory_used(),
        max_memory_bytes=engine.max_memory,
    )


@router.get("/pools/{name}", response_model=PoolStatus, responses={404: {"model": ErrorBody}})
async def get_pool(state: StateDep, name: str = NamePath) -> PoolStatus:
    """One pool's state, progress (done/total, rows/s, ETA), statistics and memory."""
    return _status(state, name)


@router.delete("/pools/{name}", response_model=PoolStatus, responses=_ERRORS)
async def delete_pool(state: StateDep, name: str = NamePath) -> PoolStatus:
    """Free the pool's memory and its vector file. Runs that used it keep their ledger; a later
    ``/select`` for it is 404. A request already searching it finishes."""
    entry = await state.engine_call(state.engine.delete_pool, name)
    state.forget_handler(name)
    status = entry.status(state.engine.default_name)
    return status


@router.put(
    "/pools/{name}",
    response_model=PoolStatus,
    status_code=202,
    responses={200: {"model": PoolStatus, "description": "Already registered with this content."}, **_ERRORS},
    openapi_extra=_BODY,
)
async def put_pool(
    request: Request,
    state: StateDep,
    name: str = NamePath,
    replace: bool = Query(False, description="Replace a pool of this name that holds other content."),
    density_stats: Literal["auto", "load", "off"] | None = Query(None, description="NDJSON bodies: this option."),
) -> Response:
    """Register a pool; embedding runs in the background (202), ``GET /pools/{name}`` shows progress."""
    texts: list[str] | None
    try:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() == NDJSON:
            texts, files, stats_opt = await _ndjson_texts(request), None, density_stats
            tmpl = "default"
        else:
            req = _parse_json(await request.body())
            texts, files, tmpl, stats_opt = req.texts, req.files, req.template, req.density_stats
    except ClientDisconnect:  # nothing was registered
        return Response(status_code=CLIENT_CLOSED)
    engine = state.engine
    if files is not None:
        texts = await state.engine_call(engine.files_texts, files, tmpl)
    assert texts is not None
    entry, created = await state.engine_call(
        engine.put_pool, name, texts, "files" if files else "texts", files or (), tmpl, stats_opt, replace
    )
    state.forget_handler(name)
    body = entry.status(engine.default_name).model_dump(mode="json")
    return JSONResponse(body, status_code=202 if created else 200)


def _parse_json(raw: bytes) -> PoolRequest:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InputError(
            f'invalid request: the body is not JSON ({exc}); send {{"texts": [...]}} or NDJSON with '
            f"Content-Type: {NDJSON}"
        ) from None
    try:
        return PoolRequest.model_validate(data)
    except ValidationError as exc:
        parts = []
        for err in exc.errors()[:10]:
            loc = ".".join(str(p) for p in err.get("loc", ())) or "body"
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
        raise InputError("invalid request: " + "; ".join(parts)) from None


async def _ndjson_texts(request: Request) -> list[str]:
    """The texts of an NDJSON body, parsed line by line as it arrives (the raw body is never held whole)."""
    texts: list[str] = []
    pending: list[bytes] = []

    def take(line: bytes) -> None:
        if not line.strip():
            return
        n = len(texts) + 1
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"NDJSON line {n} is not JSON ({exc}); each line is one JSON string") from None
        if not isinstance(value, str):
            raise InputError(f"NDJSON line {n} is {type(value).__name__}, not a JSON string")
        if not value.strip():
            raise InputError(f"NDJSON line {n} is an empty text: every row needs text")
        texts.append(value)

    async for chunk in request.stream():
        if not chunk:
            continue
        parts = chunk.split(b"\n")
        if len(parts) == 1:
            pending.append(chunk)
            continue
        take(b"".join([*pending, parts[0]]))
        for mid in parts[1:-1]:
            take(mid)
        pending = [parts[-1]]
    take(b"".join(pending))
    if not texts:
        raise InputError("the NDJSON body holds no texts")
    return texts
