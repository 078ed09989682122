"""``run_job``: one run of one job, the same function for the embedded runner and for arq workers.

Claim with a lease -> generate on a backend while a heartbeat renews the lease (and notices a cancel) ->
store the images -> write the result in one transaction, only if this run still holds the lease.
Two runs of one job can never both complete it.
"""

from __future__ import annotations

import asyncio
import secrets
from contextlib import suppress
from typing import TYPE_CHECKING

import structlog

from gateway.assets.convert import convert
from gateway.assets.models import Asset
from gateway.assets.storage import CONTENT_TYPES
from gateway.backends.base import Adapter, BackendError, GeneratedImage, GenerationRequest
from gateway.common.time import utcnow
from gateway.db.engine import transaction
from gateway.jobs import repository
from gateway.jobs.models import Job, JobStatus

if TYPE_CHECKING:
    from gateway.resources import Resources

log = structlog.get_logger("gateway.jobs")


class _LeaseLost(Exception):
    """The job was cancelled or taken over while this run was generating."""


def _request_of(job: Job) -> GenerationRequest:
    return GenerationRequest(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        width=job.width,
        height=job.height,
        steps=job.steps,
        guidance_scale=job.guidance_scale,
        seed=job.seed,
        n=job.n,
        model=job.model,
        output_format=job.output_format,
    )


async def run_job(res: Resources, job_id: str) -> str:
    """Run the job once if it can be claimed; returns the outcome (for logs and tests)."""
    settings = res.settings
    lease = secrets.token_hex(16)
    with structlog.contextvars.bound_contextvars(job_id=job_id):
        async with transaction(res.sessionmaker) as session:
            claimed = await repository.claim(
                session,
                job_id,
                owner=res.worker_id,
                lease_token=lease,
                now=utcnow(),
                ttl=settings.job_lease_seconds,
                max_attempts=settings.job_max_attempts,
            )
            job = await repository.get(session, job_id) if claimed else None
        if job is None:
            log.debug("job.skipped", reason="not claimable")
            return "skipped"
        structlog.contextvars.bind_contextvars(system_id=job.system_id)
        log.info("job.started", attempt=job.attempts)
        try:
            outcome = await _run_claimed(res, job, lease)
        except _LeaseLost:
            log.info("job.abandoned", reason="cancelled or taken over")
            return "abandoned"
        except asyncio.CancelledError:
            # The process is stopping: hand the job back so that it runs again at once after restart.
            with suppress(Exception):
                async with transaction(res.sessionmaker) as session:
                    await repository.release(session, job_id, lease)
            raise
        log.info("job.finished", outcome=outcome)
        return outcome


async def _run_claimed(res: Resources, job: Job, lease: str) -> str:
    adapter = res.pool.select(job.model)
    if adapter is None:
        return await _fail(res, job.id, lease, "no_backend", f"No backend serves model {job.model!r}.")
    async with transaction(res.sessionmaker) as session:
        await repository.set_backend(session, job.id, lease, adapter.name)
    try:
        images = await _generate_with_heartbeat(res, job, lease, adapter)
    except BackendError as exc:
        return await _fail(res, job.id, lease, exc.code, exc.message)
    except (_LeaseLost, asyncio.CancelledError):
        raise
    except Exception:
        log.exception("job.internal_error")
        return await _fail(res, job.id, lease, "internal_error", "An internal error stopped this job.")
    return await _complete(res, job, lease, images)


async def _generate_with_heartbeat(res: Resources, job: Job, lease: str, adapter: Adapter) -> list[GeneratedImage]:
    settings = res.settings
    progress = {"value": 0.0}

    async def on_progress(value: float) -> None:
        progress["value"] = max(0.0, min(1.0, value))

    task = asyncio.ensure_future(adapter.generate(_request_of(job), on_progress))
    interval = min(1.0, settings.job_lease_seconds / 3)
    deadline = asyncio.get_running_loop().time() + settings.job_timeout_seconds
    try:
        while True:
            if asyncio.get_running_loop().time() > deadline:
                raise BackendError(f"The generation took longer than {settings.job_timeout_seconds} s.", code="timeout")
            done, _ = await asyncio.wait({task}, timeout=interval)
            if done:
                return task.result()
            async with transaction(res.sessionmaker) as session:
                held = await repository.heartbeat(
                    session,
                    job.id,
                    lease,
                    now=utcnow(),
                    ttl=settings.job_lease_seconds,
                    progress=min(progress["value"], 0.99),
                )
            if not held:
                raise _LeaseLost
    finally:
        if not task.done():
            task.cancel()  # cancelling the adapter call interrupts the generation on its backend
            with suppress(BaseException):
                await task


async def _complete(res: Resources, job: Job, lease: str, images: list[GeneratedImage]) -> str:
    assets = []
    for index, image in enumerate(images):
        data = (
            image.data
            if image.format == job.output_format
            else await asyncio.to_thread(convert, image.data, job.output_format)
        )
        stored = await res.store.put(data, job.output_format)
        assets.append(
            Asset(
                job_id=job.id,
                system_id=job.system_id,
                index=index,
                sha256=stored.sha256,
                bytes=stored.size,
                width=image.width,
                height=image.height,
                format=job.output_format,
                content_type=CONTENT_TYPES[job.output_format],
                seed=image.seed,
            )
        )
    async with transaction(res.sessionmaker) as session:
        if not await repository.finish(session, job.id, lease, status=JobStatus.succeeded, now=utcnow()):
            raise _LeaseLost
        session.add_all(assets)
    return JobStatus.succeeded.value


async def _fail(res: Resources, job_id: str, lease: str, code: str, message: str) -> str:
    async with transaction(res.sessionmaker) as session:
        done = await repository.finish(
            session,
            job_id,
            lease,
            status=JobStatus.failed,
            now=utcnow(),
            error_code=code,
            error_message=message,
        )
    if not done:
        raise _LeaseLost
    log.warning("job.failed", code=code, message=message)
    return JobStatus.failed.value
