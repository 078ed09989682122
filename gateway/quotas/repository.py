"""SQL for quotas. Admission is a chain of conditional updates: a row that does not match is a refusal."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, or_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from gateway.common.time import utcnow
from gateway.quotas.models import ChargeState, JobCharge, Quota, UsageDay


async def _insert_missing(session: AsyncSession, model: Any, values: dict[str, Any]) -> None:
    """Create the row unless it exists (racing creators are fine: one wins, the others do nothing)."""
    assert session.bind is not None
    insert = pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert
    await session.execute(insert(model).values(**values).on_conflict_do_nothing())


async def get_quota(session: AsyncSession, system_id: str) -> Quota | None:
    return await session.get(Quota, system_id, populate_existing=True)


async def get_usage(session: AsyncSession, system_id: str, day: str) -> UsageDay | None:
    return await session.get(UsageDay, (system_id, day), populate_existing=True)


async def set_limits(session: AsyncSession, system_id: str, limits: dict[str, Any]) -> Quota:
    await _insert_missing(session, Quota, {"system_id": system_id, "active_jobs": 0, "updated_at": utcnow()})
    await session.execute(update(Quota).where(col(Quota.system_id) == system_id).values(**limits, updated_at=utcnow()))
    quota = await get_quota(session, system_id)
    assert quota is not None
    return quota


async def take_job_slot(session: AsyncSession, system_id: str) -> Quota | None:
    """Count one more unfinished job, unless that passes the limit (None). Locks the system's quota row."""
    await _insert_missing(session, Quota, {"system_id": system_id, "active_jobs": 0, "updated_at": utcnow()})
    result = await session.execute(
        update(Quota)
        .where(
            col(Quota.system_id) == system_id,
            or_(col(Quota.concurrent_jobs).is_(None), col(Quota.active_jobs) < col(Quota.concurrent_jobs)),
        )
        .values(active_jobs=col(Quota.active_jobs) + 1)
        .returning(Quota)
    )
    return result.scalar_one_or_none()


async def spend(
    session: AsyncSession, system_id: str, day: str, *, images: int, gpu_seconds: float, quota: Quota
) -> bool:
    """Add to the day's use unless that passes a daily limit."""
    await _insert_missing(session, UsageDay, {"system_id": system_id, "day": day, "images": 0, "gpu_seconds": 0.0})
    conditions = [col(UsageDay.system_id) == system_id, col(UsageDay.day) == day]
    if quota.images_per_day is not None:
        conditions.append(col(UsageDay.images) + images <= quota.images_per_day)
    if quota.gpu_seconds_per_day is not None:
        conditions.append(col(UsageDay.gpu_seconds) + gpu_seconds <= quota.gpu_seconds_per_day)
    result = await session.execute(
        update(UsageDay)
        .where(and_(*conditions))
        .values(images=col(UsageDay.images) + images, gpu_seconds=col(UsageDay.gpu_seconds) + gpu_seconds)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


async def close_charge(
    session: AsyncSession, job_id: str, *, state: ChargeState, images: int, gpu_seconds: float
) -> JobCharge | None:
    """Move a reserved charge to settled/refunded; None when there is none or it already moved."""
    result = await session.execute(
        update(JobCharge)
        .where(col(JobCharge.job_id) == job_id, col(JobCharge.state) == ChargeState.reserved.value)
        .values(state=state.value, settled_images=images, settled_gpu_seconds=gpu_seconds, settled_at=utcnow())
        .returning(JobCharge)
    )
    return result.scalar_one_or_none()


async def release(session: AsyncSession, charge: JobCharge, *, images: int, gpu_seconds: float) -> None:
    """Replace the charge's reservation by the final figures (in the admission's lock order: quota, then day)."""
    await session.execute(
        update(Quota)
        .where(col(Quota.system_id) == charge.system_id, col(Quota.active_jobs) > 0)
        .values(active_jobs=col(Quota.active_jobs) - 1)
    )
    await session.execute(
        update(UsageDay)
        .where(col(UsageDay.system_id) == charge.system_id, col(UsageDay.day) == charge.day)
        .values(
            images=col(UsageDay.images) - charge.images + images,
            gpu_seconds=col(UsageDay.gpu_seconds) - charge.gpu_seconds + gpu_seconds,
        )
    )


async def open_charges(session: AsyncSession, job_ids: list[str]) -> list[JobCharge]:
    """Reserved charges of these jobs, in the order admission locks rows (by system), to rule out deadlocks."""
    result = await session.execute(
        select(JobCharge)
        .where(col(JobCharge.job_id).in_(job_ids), col(JobCharge.state) == ChargeState.reserved.value)
        .order_by(col(JobCharge.system_id), col(JobCharge.job_id))
    )
    return list(result.scalars())
