"""Authentication attached to the router tree (fail closed) and per-route scope declarations."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.deps import ReadSessionDep
from gateway.errors import Forbidden, Unauthorized
from gateway.systems.service import Principal, authenticate
from policies.scopes import allows

_bearer = HTTPBearer(auto_error=False, description="An API key (`igw_...`) of a calling system.")


async def authenticated(
    request: Request,
    session: ReadSessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Every route under /v1 depends on this: no valid key, no entry, whatever the route declares."""
    if credentials is None:
        raise Unauthorized
    principal = await authenticate(session, credentials.credentials)
    if principal is None:
        raise Unauthorized
    request.state.principal = principal
    structlog.contextvars.bind_contextvars(system=principal.system_name)
    return principal


class Authenticator:
    """``Depends(Authenticator(any_of={...}))``: the caller must hold at least one of these scopes."""

    def __init__(self, *, any_of: Iterable[str]) -> None:
        self.any_of = frozenset(any_of)
        if not self.any_of:
            raise ValueError("a route must declare at least one scope")

    async def __call__(self, principal: Annotated[Principal, Depends(authenticated)]) -> Principal:
        if not allows(principal.scopes, any_of=self.any_of):
            raise Forbidden(f"This route needs one of the scopes: {', '.join(sorted(self.any_of))}.")
        return principal
