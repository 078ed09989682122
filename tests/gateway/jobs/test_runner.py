"""run_job's lease: two runs of one job never both complete it, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update
from sqlmodel import col

from gateway.assets.models import Asset
from gateway.common.time import utcnow
from gateway.db.engine import transaction
from gateway.db.migrate import upgrade
from gateway.jobs.models import Job, JobStatus
from gateway.jobs.reconcile import fail_exhausted
from gateway.jobs.runner import run_job
from gateway.resources import Resources, close_resources, open_resources
from gateway.systems import service as systems_service
from tests.conftest import make_settings


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        url: str = request.getfixturevalue("pg_database")
        return url
    return f"sqlite+aiosqlite:///{tmp_path}/runner.db"


@pytest.fixture
async def res(database_url: str, tmp_path: Path) -> AsyncIterator[Resources]:
    """Resources of a worker whose queue is not running: the tests call run_job themselves."""
    settings = make_settings(tmp_path, database_url=database_url)
    if settings.is_sqlite:
        await upgrade(settings.database_url)
    resources = await open_resources(settings, role="worker")
    if not settings.is_sqlite:
        async with transaction(resources.sessionmaker) as session:
            await session.execute(text("TRUNCATE assets, jobs, tokens, systems CASCADE"))
    yield resources
    await close_resources(resources)


async def _queued_job(res: Resources, *, steps: int = 2, n: int = 2) -> str:
    async with transaction(res.sessionmaker) as session:
        issued = await systems_service.create_system(session, name="crm", scopes="generate")
        job = Job(
            system_id=issued.system.id,
            prompt="a vase",
            width=128,
            height=128,
            steps=steps,
            guidance_scale=7.0,
            seed=7,
            n=n,
            output_format="png",
        )
        session.add(job)
    return job.id


async def _job_and_asset_count(res: Resources, job_id: str) -> tuple[Job, int]:
    async with res.sessionmaker() as session:
        job = await session.get(Job, job_id)
        count = await session.scalar(select(func.count()).select_from(Asset).where(Asset.job_id == job_id))
    assert job is not None
    return job, int(count or 0)


async def test_two_concurrent_runs_of_one_job_complete_it_once(res: Resources) -> None:
    job_id = await _queued_job(res)
    outcomes = await asyncio.gather(*(run_job(res, job_id) for _ in range(4)))
    assert sorted(outcomes) == ["skipped", "skipped", "skipped", "succeeded"]
    job, assets = await _job_and_asset_count(res, job_id)
    assert (job.status, job.attempts, assets) == (JobStatus.succeeded, 1, 2)


async def test_run_whose_lease_expired_and_was_taken_over_cannot_complete(res: Resources) -> None:
    job_id = await _queued_job(res, steps=60)  # 1.2 s of simulated GPU time
    stale = asyncio.create_task(run_job(res, job_id))
    await asyncio.sleep(0.3)
    async with transaction(res.sessionmaker) as session:  # its worker "froze": the lease runs out
        await session.execute(
            update(Job).where(col(Job.id) == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    fresh = await run_job(res, job_id)
    assert fresh == "succeeded"
    assert await stale == "abandoned"
    job, assets = await _job_and_asset_count(res, job_id)
    assert (job.status, job.attempts, assets) == (JobStatus.succeeded, 2, 2)


async def test_cancelled_job_is_not_run(res: Resources) -> None:
    job_id = await _queued_job(res)
    async with transaction(res.sessionmaker) as session:
        await session.execute(update(Job).where(col(Job.id) == job_id).values(status=JobStatus.cancelled.value))
    assert await run_job(res, job_id) == "skipped"


async def test_job_whose_worker_died_on_every_attempt_fails_as_worker_lost(res: Resources) -> None:
    job_id = await _queued_job(res)
    async with transaction(res.sessionmaker) as session:
        await session.execute(
            update(Job)
            .where(col(Job.id) == job_id)
            .values(
                status=JobStatus.running.value,
                attempts=res.settings.job_max_attempts,
                lease_token="dead",
                lease_expires_at=utcnow() - timedelta(seconds=1),
            )
        )
    assert await run_job(res, job_id) == "skipped"
    assert await fail_exhausted(res) == [job_id]
    job, assets = await _job_and_asset_count(res, job_id)
    assert (job.status, job.error_code, assets) == (JobStatus.failed, "worker_lost", 0)


async def test_generation_longer_than_the_job_timeout_fails_with_timeout(res: Resources) -> None:
    res.settings.job_timeout_seconds = 1
    job_id = await _queued_job(res, steps=150)  # 3 s
    assert await run_job(res, job_id) == "failed"
    job, assets = await _job_and_asset_count(res, job_id)
    assert (job.status, job.error_code, assets) == (JobStatus.failed, "timeout", 0)


async def test_run_interrupted_by_a_time_limit_is_claimable_at_once_and_counts_as_an_attempt(res: Resources) -> None:
    job_id = await _queued_job(res, steps=100)
    run = asyncio.create_task(run_job(res, job_id))
    await asyncio.sleep(0.3)
    run.cancel()  # a worker shutting down, or the queue's own time limit
    with pytest.raises(asyncio.CancelledError):
        await run
    assert await run_job(res, job_id) == "succeeded"  # no waiting for the lease to run out
    job, assets = await _job_and_asset_count(res, job_id)
    assert (job.status, job.attempts, assets) == (JobStatus.succeeded, 2, 2)


async def test_run_interrupted_by_a_graceful_shutdown_goes_back_to_the_queue_uncounted(res: Resources) -> None:
    job_id = await _queued_job(res, steps=100)
    run = asyncio.create_task(run_job(res, job_id))
    await asyncio.sleep(0.3)
    res.stopping = True  # what a SIGTERM (arq) or the server's shutdown (embedded runner) sets
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    job, _ = await _job_and_asset_count(res, job_id)
    assert (job.status, job.attempts, job.lease_token) == (JobStatus.queued, 0, None)
    res.stopping = False
    assert await run_job(res, job_id) == "succeeded"
    job, assets = await _job_and_asset_count(res, job_id)
    assert (job.attempts, assets) == (1, 2)
