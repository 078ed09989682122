"""Per-route scope declarations on top of the authentication done by ``gateway.auth.backend``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.audit.service import Actor
from gateway.auth.backend import PrincipalUser
from gateway.errors import Forbidden, Unauthorized
from gateway.systems.service import Principal
from policies.scopes import allows

# Documents the scheme in OpenAPI (the "Authorize" button of /docs); the key itself is checked by the middleware.
_bearer = HTTPBearer(
    auto_error=False,
    description="An API key (`igw_...`) of a calling system, or an OAuth2 access token from `POST /oauth/token`.",
)


async def authenticated(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """Every route under /v1 depends on this: without a principal set by the middleware, no entry."""
    user = request.scope.get("user")
    if not isinstance(user, PrincipalUser):
        raise Unauthorized
    return user.principal


class Authenticator:
    """``Depends(Authenticator(any_of={...}))``: the caller must hold at least one of these scopes."""

    def __init__(self, *, any_of: Iterable[str]) -> None:
        self.any_of = frozenset(any_of)
        if not self.any_of:
            raise ValueError("a route must declare at least one scope")

    async def __call__(self, request: Request, principal: Annotated[Principal, Depends(authenticated)]) -> Principal:
        if not allows(principal.scopes, any_of=self.any_of):
            needed = ", ".join(sorted(self.any_of))
            request.app.state.resources.audit.refused(
                Actor.of(request, principal.system_name, principal.credential),
                "scope.refused",
                target=f"route:{request.method} {request.url.path}"[:200],
                reason=f"needs one of: {needed}",
            )
            raise Forbidden(f"This route needs one of the scopes: {needed}.")
        return principal
