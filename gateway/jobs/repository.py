"""SQL for jobs. State changes are conditional updates, so that concurrent workers and cancels stay consistent.

Lease times come from the database's clock on PostgreSQL (workers on different hosts agree on one clock);
the embedded SQLite database lives on one host, whose clock it uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col, select

from gateway.common.time import utcnow
from gateway.jobs.models import Job, JobStatus

_RUNNING = JobStatus.running.value
_QUEUED = JobStatus.queued.value


def db_now(session: AsyncSession) -> Any:
    """ "Now" for lease arithmetic: the database's clock where there is a shared one."""
    assert session.bind is not None
    if session.bind.dialect.name == "postgresql":
        return func.now()  # typed DateTime, so that "now() + interval" binds the timedelta as an interval
    return utcnow()


async def db_time(session: AsyncSession) -> datetime:
    """The current time as a value, from the same clock as ``db_now``."""
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        value: datetime = (await session.execute(select(func.now()))).scalar_one()
        return value.astimezone(UTC)
    return utcnow()


def _held(job_id: str, lease_token: str) -> ColumnElement[bool]:
    """The job is still running under this lease (not cancelled, not taken over by another worker)."""
    return and_(col(Job.id) == job_id, col(Job.status) == _RUNNING, col(Job.lease_token) == lease_token)


def _claimable(now: Any, max_attempts: int) -> ColumnElement[bool]:
    return and_(
        or_(
            col(Job.status) == _QUEUED,
            and_(col(Job.status) == _RUNNING, col(Job.lease_expires_at) < now),
        ),
        col(Job.attempts) < max_attempts,
    )


async def get_for_system(session: AsyncSession, job_id: str, system_id: str) -> Job | None:
    """The job if it belongs to the system; another system's job is indistinguishable from a missing one."""
    result = await session.execute(select(Job).where(Job.id == job_id, Job.system_id == system_id))
    return result.scalar_one_or_none()


async def get(session: AsyncSession, job_id: str) -> Job | None:
    return await session.get(Job, job_id, populate_existing=True)


async def by_idempotency_key(session: AsyncSession, system_id: str, key: str) -> Job | None:
    result = await session.execute(select(Job).where(Job.system_id == system_id, Job.idempotency_key == key))
    return result.scalar_one_or_none()


async def list_for_system(
    session: AsyncSession, system_id: str, *, status: str | None, cursor: str | None, limit: int
) -> Sequence[Job]:
    query = select(Job).where(Job.system_id == system_id)
    if status is not None:
        query = query.where(Job.status == status)
    if cursor is not None:
        query = query.where(col(Job.id) < cursor)
    result = await session.execute(query.order_by(col(Job.id).desc()).limit(limit))
    return result.scalars().all()


async def claim(
    session: AsyncSession, job_id: str, *, owner: str, lease_token: str, ttl: float, max_attempts: int
) -> bool:
    """Take the job for one run: queued, or running under a lease that expired (its worker died)."""
    now = db_now(session)
    result = await session.execute(
        update(Job)
        .where(col(Job.id) == job_id, _claimable(now, max_attempts))
        .values(
            status=_RUNNING,
            lease_owner=owner,
            lease_token=lease_token,
            lease_expires_at=now + timedelta(seconds=ttl),
            attempts=col(Job.attempts) + 1,
            progress=0.0,
            started_at=now,
        )
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


async def heartbeat(session: AsyncSession, job_id: str, lease_token: str, *, ttl: float, progress: float) -> bool:
    """Extend the lease and record progress; False when the job was cancelled or taken over."""
    result = await session.execute(
        update(Job)
        .where(_held(job_id, lease_token))
        .values(lease_expires_at=db_now(session) + timedelta(seconds=ttl), progress=progress)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


async def set_backend(session: AsyncSession, job_id: str, lease_token: str, backend: str) -> None:
    await session.execute(update(Job).where(_held(job_id, lease_token)).values(backend=backend))


async def finish(
    session: AsyncSession,
    job_id: str,
    lease_token: str,
    *,
    status: JobStatus,
    error_code: str | None = None,
    error_message: str | None = None,
    notes: list[str] | None = None,
) -> bool:
    """Move a running job to a terminal state, only if this run still holds it."""
    values: dict[str, Any] = {
        "status": status.value,
        "finished_at": db_now(session),
        "lease_token": None,
        "lease_expires_at": None,
        "error_code": error_code,
        "error_message": error_message,
    }
    if status is JobStatus.succeeded:
        values["progress"] = 1.0
    if notes:
        values["notes"] = notes
    result = await session.execute(update(Job).where(_held(job_id, lease_token)).values(**values))
    return result.rowcount == 1  # type: ignore[attr-defined]


async def release(session: AsyncSession, job_id: str, lease_token: str) -> bool:
    """Hand a running job back to the queue (graceful shutdown): the interrupted run is not counted."""
    result = await session.execute(
        update(Job)
        .where(_held(job_id, lease_token))
        .values(
            status=_QUEUED,
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
            progress=0.0,
            backend=None,
            started_at=None,
            attempts=col(Job.attempts) - 1,
        )
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


async def expire_lease(session: AsyncSession, job_id: str, lease_token: str) -> bool:
    """Give up a run that was interrupted other than by a shutdown (the queue's time limit): the job is claimable
    again at once, and the run counts as an attempt, so that a job that always hangs ends as ``worker_lost``."""
    result = await session.execute(
        update(Job).where(_held(job_id, lease_token)).values(lease_expires_at=db_now(session) - timedelta(seconds=1))
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


async def cancel(session: AsyncSession, job_id: str) -> bool:
    result = await session.execute(
        update(Job)
        .where(col(Job.id) == job_id, col(Job.status).in_([_QUEUED, _RUNNING]))
        .values(status=JobStatus.cancelled.value, finished_at=db_now(session), lease_token=None, lease_expires_at=None)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


async def claimable_ids(
    session: AsyncSession, *, max_attempts: int, limit: int, exclude: Sequence[str] = ()
) -> list[str]:
    query = select(Job.id).where(_claimable(db_now(session), max_attempts))
    if exclude:
        query = query.where(col(Job.id).not_in(list(exclude)))
    result = await session.execute(query.order_by(col(Job.created_at), col(Job.id)).limit(limit))
    return list(result.scalars())


def _exhausted(now: Any, max_attempts: int) -> ColumnElement[bool]:
    """Running under an expired lease with no attempt left: its worker died on every allowed attempt."""
    return and_(
        col(Job.status) == _RUNNING,
        col(Job.lease_expires_at) < now,
        col(Job.attempts) >= max_attempts,
    )


async def exhausted_ids(session: AsyncSession, *, max_attempts: int) -> list[str]:
    return list((await session.execute(select(Job.id).where(_exhausted(db_now(session), max_attempts)))).scalars())


async def fail_exhausted(session: AsyncSession, job_ids: Sequence[str], *, max_attempts: int) -> list[str]:
    """Fail these jobs as ``worker_lost`` rather than retry them forever (re-checked: one may have moved on)."""
    now = db_now(session)
    result = await session.execute(
        update(Job)
        .where(col(Job.id).in_(list(job_ids)), _exhausted(now, max_attempts))
        .values(
            status=JobStatus.failed.value,
            finished_at=now,
            lease_token=None,
            lease_expires_at=None,
            error_code="worker_lost",
            error_message=f"The job's run was interrupted on each of {max_attempts} attempts.",
        )
        .returning(col(Job.id))
    )
    return list(result.scalars())


async def lost_candidates(session: AsyncSession, *, grace: float, max_attempts: int) -> Sequence[Job]:
    """Jobs that should be in the queue: queued, or running under an expired lease, and not (re-)enqueued
    within the last ``grace`` seconds. The reconciler then checks whether their entry is still pending."""
    now = db_now(session)
    query = select(Job).where(
        col(Job.attempts) < max_attempts,
        or_(col(Job.enqueued_at).is_(None), col(Job.enqueued_at) < now - timedelta(seconds=grace)),
        or_(
            col(Job.status) == _QUEUED,
            and_(col(Job.status) == _RUNNING, col(Job.lease_expires_at) < now),
        ),
    )
    result = await session.execute(query.order_by(col(Job.created_at)).limit(500))
    return result.scalars().all()


async def set_queue_ref(session: AsyncSession, job_id: str, ref: str) -> None:
    await session.execute(update(Job).where(col(Job.id) == job_id).values(queue_ref=ref, enqueued_at=db_now(session)))


async def cancel_batch(session: AsyncSession, batch_id: str) -> list[str]:
    """Cancel a batch's queued and running jobs in one statement; returns the ids it cancelled."""
    result = await session.execute(
        update(Job)
        .where(col(Job.batch_id) == batch_id, col(Job.status).in_([_QUEUED, _RUNNING]))
        .values(status=JobStatus.cancelled.value, finished_at=db_now(session), lease_token=None, lease_expires_at=None)
        .returning(col(Job.id))
    )
    return sorted(result.scalars().all())
