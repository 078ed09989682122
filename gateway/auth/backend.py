"""Authentication of every /v1 request, before routing: an unauthenticated caller gets its 401 before any
byte of its body is read or parsed."""

from __future__ import annotations

import structlog
from fastapi.responses import JSONResponse
from starlette.authentication import AuthCredentials, AuthenticationBackend, AuthenticationError, BaseUser
from starlette.requests import HTTPConnection

from gateway.errors import Unauthorized
from gateway.systems.service import Principal, authenticate

PROTECTED_PREFIX = "/v1"


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


def _protected(path: str) -> bool:
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")


class ApiKeyBackend(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        if not _protected(conn.url.path):
            return None  # public routes: health, docs
        scheme, _, credentials = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise AuthenticationError
        async with conn.app.state.resources.read_sessionmaker() as session:
            principal = await authenticate(session, credentials.strip())
        if principal is None:
            raise AuthenticationError
        structlog.contextvars.bind_contextvars(system=principal.system_name)
        return AuthCredentials(sorted(principal.scopes)), PrincipalUser(principal)


def unauthorized(_: HTTPConnection, __: AuthenticationError) -> JSONResponse:
    error = Unauthorized()
    return JSONResponse(error.envelope(), status_code=error.status_code, headers=error.headers)
