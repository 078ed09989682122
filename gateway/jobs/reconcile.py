"""The reconciler: the database is the truth, so jobs it says should be queued are put (back) in the queue.

It repairs a lost queue entry (Redis restarted or flushed, an enqueue that failed after commit) and a
worker that died mid-job (its lease expired), and fails jobs that exhausted their attempts.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.engine import committed
from gateway.jobs import repository
from gateway.jobs.queue import queue_ref
from gateway.quotas import service as quotas

if TYPE_CHECKING:
    from gateway.resources import Resources

log = structlog.get_logger("gateway.reconciler")


async def fail_exhausted(res: Resources) -> list[str]:
    """Called on every poll: looks with a read-only session, and writes (takes SQLite's lock) only when needed."""
    max_attempts = res.settings.job_max_attempts
    async with res.read_sessionmaker() as session:
        failed = await repository.exhausted_ids(session, max_attempts=max_attempts)
    if not failed:
        return []
    candidates = failed

    async def fail(session: AsyncSession) -> list[str]:
        ids = await repository.fail_exhausted(session, candidates, max_attempts=max_attempts)
        await quotas.refund_all(session, ids)
        return ids

    failed = await committed(res.sessionmaker, fail)
    for job_id in failed:
        log.warning("job.failed", job_id=job_id, code="worker_lost")
    return failed


async def reconcile(res: Resources) -> list[str]:
    """One pass; returns the ids of the jobs it re-enqueued."""
    await fail_exhausted(res)
    settings = res.settings
    async with res.read_sessionmaker() as session:
        candidates = await repository.lost_candidates(
            session, grace=settings.reconcile_grace_seconds, max_attempts=settings.job_max_attempts
        )
    requeued = []
    for job in candidates:
        # Queued, or running under a dead run's lease, and not enqueued within the grace period: unless an entry
        # is still waiting in the queue, the job needs a new one.
        if job.queue_ref and await res.queue.is_waiting(job.queue_ref):
            continue
        generation = int(job.queue_ref.rsplit(":", 1)[1]) + 1 if job.queue_ref else 0
        ref = queue_ref(job.id, generation)
        await committed(res.sessionmaker, partial(repository.set_queue_ref, job_id=job.id, ref=ref))
        await res.queue.enqueue(job.id, ref)
        requeued.append(job.id)
        log.info("job.requeued", job_id=job.id, ref=ref, status=job.status)
    return requeued
