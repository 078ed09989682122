"""Admin API: read the audit log."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BeforeValidator

from gateway.audit import repository
from gateway.audit.schemas import AuditList, AuditRead
from gateway.auth.dependencies import Authenticator
from gateway.deps import ReadSessionDep
from gateway.systems.service import Principal
from policies.scopes import Scope


def _iso_only(value: object) -> object:
    """Only ISO 8601 text (pydantic would read ``0.5`` as a Unix time); without an offset it is UTC."""
    if not isinstance(value, str):
        return value
    if not _ISO.match(value):
        raise ValueError("expected an ISO 8601 date-time, e.g. 2026-12-01T00:00:00Z")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError("not a date-time that can be expressed in UTC") from None


_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$")
IsoDatetime = Annotated[datetime, BeforeValidator(_iso_only)]
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"

router = APIRouter(prefix="/admin/audit", tags=["admin: audit"])
Admin = Annotated[Principal, Depends(Authenticator(any_of={Scope.admin}))]


@router.get("", response_model=AuditList)
async def list_audit(
    _: Admin,
    session: ReadSessionDep,
    actor: Annotated[str | None, Query(max_length=100, pattern=_PRINTABLE)] = None,
    action: Annotated[
        str | None,
        Query(max_length=64, pattern=_PRINTABLE, description="An action, or its prefix up to a dot (e.g. `quota`)"),
    ] = None,
    target: Annotated[str | None, Query(max_length=200, pattern=_PRINTABLE, description="e.g. `system:crm`")] = None,
    outcome: Literal["ok", "refused"] | None = None,
    since: Annotated[IsoDatetime | None, Query(description="ISO 8601, e.g. 2026-12-01T00:00:00Z")] = None,
    until: Annotated[IsoDatetime | None, Query(description="ISO 8601, exclusive")] = None,
    cursor: Annotated[str | None, Query(max_length=40, pattern=r"^aud_[0-9a-f]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> AuditList:
    """Admin actions and refusals, newest first, with filters."""
    rows = await repository.list_events(
        session,
        actor=actor,
        action=action,
        target=target,
        outcome=outcome,
        since=since,
        until=until,
        cursor=cursor,
        limit=limit + 1,
    )
    page = rows[:limit]
    return AuditList(items=[AuditRead.of(r) for r in page], next_cursor=page[-1].id if len(rows) > limit else None)
