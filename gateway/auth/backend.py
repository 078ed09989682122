"""Authentication of every /v1 request, before routing: an unauthenticated caller gets its 401 before any
byte of its body is read or parsed. A system over its requests-per-minute limit gets its 429 here too."""

from __future__ import annotations

import structlog
from fastapi.responses import JSONResponse
from starlette.authentication import AuthCredentials, AuthenticationBackend, AuthenticationError, BaseUser
from starlette.requests import HTTPConnection

from gateway.audit.service import Actor
from gateway.auth.access_tokens import looks_like_jwt
from gateway.auth.tokens import well_formed
from gateway.errors import DATABASE_UNAVAILABLE, Unauthorized
from gateway.handlers import unavailable_response
from gateway.quotas.service import QuotaExceeded
from gateway.systems.service import Principal, authenticate, authenticate_access_token

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


class _Refused(AuthenticationError):
    """No valid credential. ``reason`` goes to the audit log only: every caller sees the same 401."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _RateLimited(AuthenticationError):
    def __init__(self, principal: Principal, retry_after: int) -> None:
        super().__init__("rate limited")
        self.principal = principal
        self.retry_after = retry_after


def _protected(conn: HTTPConnection) -> bool:
    path: str = conn.scope["path"]
    root_path: str = conn.scope.get("root_path", "")
    if root_path and path.startswith(root_path):  # mounted under a prefix: match what the router matches
        path = path[len(root_path) :]
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")


async def _principal(conn: HTTPConnection, credentials: str) -> Principal:
    res = conn.app.state.resources
    if looks_like_jwt(credentials):
        claims = res.access_tokens.verify(credentials)
        if claims is None:
            raise _Refused("invalid_access_token")
        async with res.read_sessionmaker() as session:
            principal = await authenticate_access_token(session, claims)
        if principal is None:
            raise _Refused("oauth_client_revoked")
        return principal
    if not well_formed(credentials):
        raise _Refused("malformed_api_key")
    async with res.read_sessionmaker() as session:
        found = await authenticate(session, credentials)
    if found is None:
        raise _Refused("unknown_or_revoked_api_key")
    return found


class ApiKeyBackend(AuthenticationBackend):
    """API keys (``igw_...``) and OAuth2 access tokens (JWTs), both as ``Authorization: Bearer``."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        if not _protected(conn):
            return None  # public routes: health, docs, the token endpoint
        scheme, _, credentials = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise _Refused("missing_bearer_token")
        try:
            principal = await _principal(conn, credentials.strip())
        except DATABASE_UNAVAILABLE as exc:
            log.warning("database_unavailable", error=repr(exc), path=conn.url.path)
            raise _Unavailable from exc
        structlog.contextvars.bind_contextvars(system=principal.system_name)
        if principal.requests_per_minute is not None:
            retry = await conn.app.state.resources.rate_limiter.hit(principal.system_id, principal.requests_per_minute)
            if retry is not None:
                raise _RateLimited(principal, retry)
        return AuthCredentials(sorted(principal.scopes)), PrincipalUser(principal)


def _route(conn: HTTPConnection) -> str:
    return f"route:{conn.scope.get('method', '')} {conn.url.path}"[:200]


def unauthorized(conn: HTTPConnection, exc: AuthenticationError) -> JSONResponse:
    if isinstance(exc, _Unavailable):
        return unavailable_response(conn.scope.get("state", {}).get("request_id"))
    trail = conn.app.state.resources.audit
    if isinstance(exc, _RateLimited):
        p = exc.principal
        assert p.requests_per_minute is not None
        error = QuotaExceeded(
            "requests_per_minute",
            value=p.requests_per_minute,
            used=p.requests_per_minute,
            retry_after=exc.retry_after,
            message=f"More than {p.requests_per_minute} requests in a minute; retry in {exc.retry_after} s.",
        )
        trail.refused(
            Actor.of(conn, p.system_name, p.credential), "quota.refused", target=_route(conn), reason=error.code
        )
        return JSONResponse(error.envelope(), status_code=error.status_code, headers=error.headers)
    reason = exc.reason if isinstance(exc, _Refused) else "unauthenticated"
    trail.refused(Actor.of(conn), "auth.refused", target=_route(conn), reason=reason)
    refusal = Unauthorized()
    return JSONResponse(refusal.envelope(), status_code=refusal.status_code, headers=refusal.headers)
