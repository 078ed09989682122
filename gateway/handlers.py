"""Exception handlers: every error on a native route renders to ``{"error": {"code", "message", "details"?}}``."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import sqlalchemy.exc
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from gateway.errors import DATABASE_UNAVAILABLE, ImagegateError

log = structlog.get_logger("gateway.errors")

_HTTP_CODES = {
    400: "invalid_body",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    if loc and loc[0] in ("query", "header", "path"):
        parts = [str(p) for p in loc[1:]]
    return ".".join(parts) or "body"


def _envelope(status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None):
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


async def imagegate_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ImagegateError)
    return JSONResponse(exc.envelope(), status_code=exc.status_code, headers=exc.headers)


async def validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = []
    for error in exc.errors():
        field = _field(tuple(error.get("loc", ())))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "extra_forbidden":
            message = "Unknown field"
        details.append({"field": field, "message": message, "type": error.get("type")})
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5]) or "Invalid request"
    return _envelope(422, "validation_error", summary, details)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    code = _HTTP_CODES.get(status, HTTPStatus(status).phrase.lower().replace(" ", "_"))
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(status).phrase
    headers = dict(getattr(exc, "headers", None) or {})
    if status == 405:
        # Starlette reports only the methods of the first route on the path; a path may have several routes.
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return _envelope(status, code, message, headers=headers or None)


_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> list[str]:
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]


async def unavailable_error(request: Request, exc: Exception) -> JSONResponse:
    """The database is down, saturated or locked: not the caller's fault and not a bug; worth a retry."""
    log.warning("database_unavailable", error=repr(exc), path=request.url.path)
    return unavailable_response(request.scope.get("state", {}).get("request_id"))


def unavailable_response(request_id: str | None) -> JSONResponse:
    return _envelope(
        503,
        "unavailable",
        "The service is briefly unavailable; retry.",
        {"request_id": request_id},
        {"Retry-After": "1"},
    )


# PostgreSQL refuses some text a Python string can hold (a NUL character): that is the caller's input.
_UNSTORABLE_TEXT = {"22021", "22P05"}  # character_not_in_repertoire, untranslatable_character
# Conditions that pass: deadlock, serialization failure, lock/statement timeout, shutting down, too many clients.
_TRANSIENT = {"40P01", "40001", "55P03", "57014", "57P01", "57P03", "53300"}


def _sqlstate(exc: Exception) -> str | None:
    orig = getattr(exc, "orig", None)
    for candidate in (orig, getattr(orig, "__cause__", None)):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str):
            return state
    return None


async def database_error(request: Request, exc: Exception) -> JSONResponse:
    state = _sqlstate(exc)
    if state in _UNSTORABLE_TEXT:
        return _envelope(422, "validation_error", "The request contains characters that cannot be stored (e.g. NUL).")
    if state in _TRANSIENT or getattr(exc, "connection_invalidated", False):
        return await unavailable_error(request, exc)
    raise exc  # a bug: on to the 500 handler with its traceback


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug. Logged with its traceback; the client gets no internals, only the request id to report."""
    request_id = request.scope.get("state", {}).get("request_id")
    log.error("unhandled_error", exc_info=exc, path=request.url.path)
    headers = {"X-Request-ID": request_id} if request_id else None
    return _envelope(500, "internal_error", "An internal error occurred.", {"request_id": request_id}, headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ImagegateError, imagegate_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(sqlalchemy.exc.DBAPIError, database_error)
    for unavailable in DATABASE_UNAVAILABLE:  # subclasses of DBAPIError: their own handler wins
        app.add_exception_handler(unavailable, unavailable_error)
    app.add_exception_handler(Exception, unexpected_error)
