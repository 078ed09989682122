"""Authentication of every /v1 request, before routing: an unauthenticated caller gets its 401 before any
byte of its body is read or parsed."""

from __future__ import annotations

import structlog
from fastapi.responses import JSONResponse
from starlette.authentication import AuthCredentials, AuthenticationBackend, AuthenticationError, BaseUser
from starlette.requests import HTTPConnection

from gateway.errors import DATABASE_UNAVAILABLE, Unauthorized
from gateway.handlers import unavailable_response
from gateway.systems.service import Principal, authenticate

PROTECTED_PREFIX = "/v1"
log = structlog.get_logger("gateway.auth")


class PrincipalUser(BaseUser):
    """Starlette's view of an authenticated caller; the gateway uses ``principal``."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.principal.system_name


class _Unavailable(AuthenticationError):
    """The key could not be checked because the database is unavailable (answered 503, not 401)."""


def _protected(conn: HTTPConnection) -> bool:
    path: str = conn.scope["path"]
    root_path: str = conn.scope.get("root_path", "")
    if root_path and path.startswith(root_path):  # mounted under a prefix: match what the router matches
        path = path[len(root_path) :]
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")


class ApiKeyBackend(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        if not _protected(conn):
            return None  # public routes: health, docs
        scheme, _, credentials = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise AuthenticationError
        try:
            async with conn.app.state.resources.read_sessionmaker() as session:
                principal = await authenticate(session, credentials.strip())
        except DATABASE_UNAVAILABLE as exc:
            log.warning("database_unavailable", error=repr(exc), path=conn.url.path)
            raise _Unavailable from exc
        if principal is None:
            raise AuthenticationError
        structlog.contextvars.bind_contextvars(system=principal.system_name)
        return AuthCredentials(sorted(principal.scopes)), PrincipalUser(principal)


def unauthorized(conn: HTTPConnection, exc: AuthenticationError) -> JSONResponse:
    if isinstance(exc, _Unavailable):
        return unavailable_response(conn.scope.get("state", {}).get("request_id"))
    error = Unauthorized()
    return JSONResponse(error.envelope(), status_code=error.status_code, headers=error.headers)
