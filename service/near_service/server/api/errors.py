"""One error body for everything: ``{"error": {"code": str, "message": str}}``.

NEAR errors keep their code and status; FastAPI's validation errors become 422 ``invalid_input``
with a readable message; Starlette's HTTP errors (404 route, 405 method) keep their status; anything
else is a 500 ``internal`` that names no internals.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from near_service.core.errors import NearError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    413: "too_large",
    415: "unsupported_media_type",
}


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def error_response(exc: NearError, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:10]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    async def near_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, NearError)
        return error_response(exc)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse(error_body("invalid_input", _validation_message(exc)), status_code=422)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 400:  # FastAPI: a body that is not UTF-8 JSON; the same 422 as any bad body
            message = f"invalid request: {exc.detail} (send a UTF-8 JSON body)"
            return JSONResponse(error_body("invalid_input", message), status_code=422)
        code = _HTTP_CODES.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # the body names no internals (not even the exception class); the id finds the traceback in the log
        request_id = uuid.uuid4().hex[:16]
        log.error("unhandled error on %s %s [request %s]", request.method, request.url.path, request_id, exc_info=exc)
        return JSONResponse(
            error_body("internal", f"internal error; see the service log (request {request_id})"),
            status_code=500,
            headers={"X-Request-ID": request_id},
        )

    app.add_exception_handler(NearError, near_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
