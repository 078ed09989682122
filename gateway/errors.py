"""One error base class; every expected failure is a subclass that carries its HTTP status and code.

Rendered to the single native envelope ``{"error": {"code", "message", "details"?}}``. Only a bug is a 500.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy.exc
from pydantic import BaseModel, Field


class ImagegateError(Exception):
    """An expected failure with an HTTP status, a stable machine-readable code and a human message."""

    status_code: int = 400
    code: str = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        details: Any = None,
        headers: dict[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers
        if code is not None:
            self.code = code

    def envelope(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return {"error": body}


class Unauthorized(ImagegateError):
    status_code = 401
    code = "unauthorized"

    def __init__(self) -> None:
        # One body for every authentication failure: missing, malformed, unknown, revoked, expired.
        super().__init__(
            "A valid bearer token is required.",
            headers={"WWW-Authenticate": 'Bearer realm="imagegate"'},
        )


class Forbidden(ImagegateError):
    status_code = 403
    code = "insufficient_scope"


class NotFound(ImagegateError):
    status_code = 404
    code = "not_found"


class Conflict(ImagegateError):
    status_code = 409
    code = "conflict"


class ValidationFailed(ImagegateError):
    status_code = 422
    code = "validation_error"


# Exceptions meaning the database is down, saturated (pool timeout) or locked: answered 503, not 500.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    sqlalchemy.exc.TimeoutError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    ConnectionError,
)


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. `validation_error`, `job_not_found`.")
    message: str = Field(description="What went wrong, for a human.")
    details: Any | None = Field(default=None, description="Structured context, e.g. the invalid fields.")


class ErrorEnvelope(BaseModel):
    """The body of every error answer on a native route."""

    error: ErrorBody


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses, all with the one envelope."""
    descriptions = {
        400: "The body could not be parsed",
        401: "Missing, malformed, unknown or revoked token",
        403: "The token lacks the scope this route needs",
        404: "No such resource for this caller",
        409: "Conflicts with the resource's current state",
        413: "Body too large",
        422: "Invalid input; `details` names each field",
        429: "Over a quota or rate limit",
        503: "A dependency is unavailable",
    }
    return {status: {"model": ErrorEnvelope, "description": descriptions[status]} for status in statuses}
