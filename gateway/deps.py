"""Typed dependency aliases shared by the routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.errors import ValidationFailed
from gateway.resources import Resources


def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_session(res: ResourcesDep) -> AsyncIterator[AsyncSession]:
    """A session per request; routes that write commit explicitly, anything uncommitted is rolled back."""
    async with res.sessionmaker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def get_read_session(res: ResourcesDep) -> AsyncIterator[AsyncSession]:
    """A session for routes that only read (no write lock on SQLite)."""
    async with res.read_sessionmaker() as session:
        yield session


ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session)]


def _declared_query(request: Request) -> set[str] | None:
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return None

    def names(dep: Any) -> set[str]:
        found = {param.alias for param in dep.query_params}
        for sub in dep.dependencies:
            found |= names(sub)
        return found

    return names(dependant)


async def strict_query(request: Request) -> None:
    """Query strings are as strict as bodies: an unknown parameter (a typo such as ``stauts``) is refused rather
    than ignored, and no route takes a list there, so a repeated one is refused rather than cut to one."""
    declared = _declared_query(request)
    seen: set[str] = set()
    for key, _ in request.query_params.multi_items():
        if declared is not None and key not in declared:
            raise ValidationFailed(
                f"Unknown query parameter {key!r}.", details=[{"field": key, "message": "Unknown query parameter"}]
            )
        if key in seen:
            raise ValidationFailed(
                f"The query parameter {key!r} is given more than once.",
                details=[{"field": key, "message": "given more than once"}],
            )
        seen.add(key)


def base_url(request: Request, res: ResourcesDep) -> str:
    """Where clients reach this gateway, for links in responses."""
    return (res.settings.public_url or str(request.base_url)).rstrip("/")


BaseUrlDep = Annotated[str, Depends(base_url)]
