"""The OAuth2 token endpoint (RFC 6749 section 4.4, client credentials). Public: the client authenticates here.

Errors use OAuth2's own body (``{"error", "error_description"}``, section 5.2), which OAuth2 client libraries read.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import FormData

from gateway.audit.service import Actor
from gateway.systems.service import authenticate_client, client_scopes

router = APIRouter(tags=["oauth2"])
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_MAX_FIELDS = 50  # RFC 6749 3.2: unknown parameters are ignored, but not without bound


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = Field(description="`Bearer`")
    expires_in: int = Field(description="Seconds until the token expires")
    scope: str = Field(description="The granted scopes, space-separated")


class OAuthError(BaseModel):
    error: str = Field(description="`invalid_request`, `invalid_client`, `unsupported_grant_type` or `invalid_scope`")
    error_description: str


def _error(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers={**_NO_STORE, **(headers or {})}
    )


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, ValueError):  # ValueError: non-ASCII characters; UnicodeDecodeError is one too
        return None
    client_id, sep, secret = decoded.partition(":")
    # RFC 6749 2.3.1: both parts are form-urlencoded before base64.
    return (unquote(client_id), unquote(secret)) if sep else None


async def _form(request: Request) -> FormData | None:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        return None
    try:
        return await request.form(max_files=0, max_fields=_MAX_FIELDS)
    except Exception:  # a malformed body is the client's error, answered below
        return None


def _one(form: FormData, key: str) -> str | None:
    values = form.getlist(key)
    if len(values) > 1:
        raise ValueError(key)  # RFC 6749 3.2: parameters must not be repeated
    value = values[0] if values else None
    return value if isinstance(value, str) else None


@router.post(
    "/oauth/token",
    response_model=TokenResponse,
    responses={400: {"model": OAuthError}, 401: {"model": OAuthError}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": ["grant_type"],
                        "maxProperties": _MAX_FIELDS,
                        "properties": {
                            "grant_type": {"type": "string", "enum": ["client_credentials"]},
                            "scope": {"type": "string"},
                            "client_id": {"type": "string"},
                            "client_secret": {"type": "string"},
                        },
                    }
                }
            },
        }
    },
)
async def token(request: Request) -> Any:
    """Exchange client credentials (HTTP Basic or form fields) for a short-lived bearer access token."""
    res = request.app.state.resources
    form = await _form(request)
    if form is None:
        return _error(
            400, "invalid_request", f"Send an application/x-www-form-urlencoded body of at most {_MAX_FIELDS} fields."
        )
    try:
        grant, scope, form_id, form_secret = (
            _one(form, k) for k in ("grant_type", "scope", "client_id", "client_secret")
        )
    except ValueError as exc:
        return _error(400, "invalid_request", f"The parameter {exc} is repeated.")
    basic = _basic_credentials(request.headers.get("authorization", ""))
    if basic and (form_id or form_secret):
        return _error(400, "invalid_request", "Authenticate with HTTP Basic or with form fields, not both.")
    client_id, secret = basic or (form_id, form_secret)
    if not client_id or not secret:
        res.audit.refused(Actor.of(request), "auth.refused", target="route:POST /oauth/token", reason="no_client")
        return _error(
            401, "invalid_client", "Client authentication failed.", {"WWW-Authenticate": 'Basic realm="imagegate"'}
        )
    async with res.read_sessionmaker() as session:
        found = await authenticate_client(session, client_id, secret)
    if found is None:
        res.audit.refused(Actor.of(request), "auth.refused", target="route:POST /oauth/token", reason="invalid_client")
        return _error(
            401, "invalid_client", "Client authentication failed.", {"WWW-Authenticate": 'Basic realm="imagegate"'}
        )
    client, system = found
    if grant is None:
        return _error(400, "invalid_request", "grant_type is required.")
    if grant != "client_credentials":
        return _error(400, "unsupported_grant_type", "Only grant_type=client_credentials is supported.")
    held = client_scopes(client, system)
    wanted = set(scope.split()) if scope is not None else set(held)
    if not wanted:
        return _error(400, "invalid_scope", "The scope parameter names no scope.")
    if not wanted <= held:
        return _error(400, "invalid_scope", f"The client does not hold: {', '.join(sorted(wanted - held))}.")
    access_token, ttl = res.access_tokens.issue(client_id=client.id, system_id=system.id, scopes=sorted(wanted))
    body = TokenResponse(
        access_token=access_token,
        token_type="Bearer",  # noqa: S106 - the token type's name
        expires_in=ttl,
        scope=" ".join(sorted(wanted)),
    )
    return JSONResponse(body.model_dump(), headers=_NO_STORE)
