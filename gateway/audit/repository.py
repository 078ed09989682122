"""SQL for the audit log: insert (via the session) and filtered, newest-first pages."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from gateway.audit.models import AuditEvent


async def list_events(
    session: AsyncSession,
    *,
    actor: str | None,
    action: str | None,
    target: str | None,
    outcome: str | None,
    since: datetime | None,
    until: datetime | None,
    cursor: str | None,
    limit: int,
) -> Sequence[AuditEvent]:
    query = select(AuditEvent)
    if actor is not None:
        query = query.where(AuditEvent.actor == actor)
    if action is not None:
        # "quota" matches quota.set and quota.refused: a prefix up to a dot, or the exact action
        query = query.where(
            (col(AuditEvent.action) == action) | col(AuditEvent.action).startswith(action + ".", autoescape=True)
        )
    if target is not None:
        query = query.where(AuditEvent.target == target)
    if outcome is not None:
        query = query.where(AuditEvent.outcome == outcome)
    if since is not None:
        query = query.where(col(AuditEvent.at) >= since)
    if until is not None:
        query = query.where(col(AuditEvent.at) < until)
    if cursor is not None:
        query = query.where(col(AuditEvent.id) < cursor)
    result = await session.execute(query.order_by(col(AuditEvent.id).desc()).limit(limit))
    return result.scalars().all()
