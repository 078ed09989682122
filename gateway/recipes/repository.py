"""SQL for batches and the aggregate state of their jobs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from gateway.jobs.models import Job
from gateway.recipes.models import Batch


@dataclass
class Progress:
    counts: dict[str, int] = field(default_factory=dict)
    finished_at: datetime | None = None


async def get_for_system(session: AsyncSession, batch_id: str, system_id: str) -> Batch | None:
    result = await session.execute(select(Batch).where(Batch.id == batch_id, Batch.system_id == system_id))
    return result.scalar_one_or_none()


async def by_idempotency_key(session: AsyncSession, system_id: str, key: str) -> Batch | None:
    result = await session.execute(select(Batch).where(Batch.system_id == system_id, Batch.idempotency_key == key))
    return result.scalar_one_or_none()


async def list_for_system(
    session: AsyncSession, system_id: str, *, recipe: str | None, record_id: str | None, cursor: str | None, limit: int
) -> Sequence[Batch]:
    query = select(Batch).where(Batch.system_id == system_id)
    if recipe is not None:
        query = query.where(Batch.recipe == recipe)
    if record_id is not None:
        query = query.where(Batch.record_id == record_id)
    if cursor is not None:
        query = query.where(col(Batch.id) < cursor)
    result = await session.execute(query.order_by(col(Batch.id).desc()).limit(limit))
    return result.scalars().all()


async def progress_of(session: AsyncSession, batch_ids: Sequence[str]) -> dict[str, Progress]:
    """Jobs per status and the latest finish, per batch, in one query."""
    found: dict[str, Progress] = {batch_id: Progress() for batch_id in batch_ids}
    if not batch_ids:
        return found
    query = (
        select(col(Job.batch_id), col(Job.status), func.count(), func.max(col(Job.finished_at)))
        .where(col(Job.batch_id).in_(list(batch_ids)))
        .group_by(col(Job.batch_id), col(Job.status))
    )
    for batch_id, status, count, finished in (await session.execute(query)).all():
        entry = found[str(batch_id)]
        entry.counts[status] = count
        if finished is not None and (entry.finished_at is None or finished > entry.finished_at):
            entry.finished_at = finished
    return found


async def jobs_of(session: AsyncSession, batch_id: str) -> Sequence[Job]:
    result = await session.execute(select(Job).where(Job.batch_id == batch_id).order_by(col(Job.batch_index)))
    return result.scalars().all()
