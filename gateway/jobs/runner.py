"""``run_job``: one run of one job, the same function for the embedded runner and for arq workers.

Claim with a lease -> generate on a backend and store the images while a heartbeat renews the lease (and
notices a cancel) -> write the result in one transaction, only if this run still holds the lease.
Two runs of one job can never both complete it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable
from contextlib import suppress
from functools import partial
from typing import TYPE_CHECKING, TypeVar, cast

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.assets.finish import OutputFormat, Watermark, finish
from gateway.assets.models import Asset
from gateway.assets.storage import CONTENT_TYPES
from gateway.backends import generation
from gateway.backends import repository as backends_repository
from gateway.backends.base import BackendError, GenerationRequest
from gateway.backends.describe import Caption, describe_images
from gateway.backends.generation import Generated
from gateway.db.engine import committed
from gateway.delivery import service as delivery
from gateway.jobs import repository
from gateway.jobs.models import Job, JobStatus
from gateway.jobs.schemas import public_watermark as _public
from gateway.quotas import service as quotas
from gateway.systems.models import System

if TYPE_CHECKING:
    from gateway.resources import Resources

log = structlog.get_logger("gateway.jobs")
T = TypeVar("T")
_CANCEL_GRACE_SECONDS = 10.0  # how long an interrupted backend call may take to wind down


class _LeaseLost(Exception):
    """The job was cancelled or taken over while this run was working on it."""


async def _request_of(res: Resources, job: Job) -> GenerationRequest:
    init_image = await res.store.read(job.init_image_sha256, "png") if job.init_image_sha256 else None
    mask = await res.store.read(job.mask_sha256, "png") if job.mask_sha256 else None
    return GenerationRequest(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        width=_generation_size(job.width),
        height=_generation_size(job.height),
        steps=job.steps,
        guidance_scale=job.guidance_scale,
        seed=job.seed,
        n=job.n,
        model=job.model,
        output_format=job.output_format,
        sampler=job.sampler,
        scheduler=job.scheduler,
        init_image=init_image,
        mask=mask,
        denoising_strength=job.denoising_strength,
    )


def _generation_size(side: int) -> int:
    """Models work in multiples of 8 pixels: generate a little larger, then fit to the exact size asked for."""
    return -(-side // 8) * 8


async def run_job(res: Resources, job_id: str) -> str:
    """Run the job once if it can be claimed; returns the outcome (for logs and tests)."""
    settings = res.settings
    lease = secrets.token_hex(16)

    async def claim(session: AsyncSession) -> tuple[Job | None, System | None]:
        claimed = await repository.claim(
            session,
            job_id,
            owner=res.worker_id,
            lease_token=lease,
            ttl=settings.job_lease_seconds,
            max_attempts=settings.job_max_attempts,
        )
        job = await repository.get(session, job_id) if claimed else None
        return job, await session.get(System, job.system_id) if job else None

    with structlog.contextvars.bound_contextvars(job_id=job_id):
        job, system = await committed(res.sessionmaker, claim)
        if job is None:
            log.debug("job.skipped", reason="not claimable")
            return "skipped"
        structlog.contextvars.bind_contextvars(system=system.name if system else job.system_id)
        log.info("job.started", attempt=job.attempts)
        try:
            outcome = await _run_claimed(res, job, lease)
        except _LeaseLost:
            log.info("job.abandoned", reason="cancelled or taken over")
            return "abandoned"
        except asyncio.CancelledError:
            # A graceful shutdown hands the job back without counting the run; any other interruption (the
            # queue's own time limit) counts as an attempt, so that a job that always hangs ends as worker_lost.
            # Either way the job is claimable again at once.
            hand_back = repository.release if res.stopping else repository.expire_lease
            with suppress(Exception):
                await committed(res.sessionmaker, lambda session: hand_back(session, job_id, lease))
            log.info("job.interrupted", shutdown=res.stopping)
            raise
        log.info("job.finished", outcome=outcome)
        return outcome


async def _run_claimed(res: Resources, job: Job, lease: str) -> str:
    progress = _Progress()
    deadline = time.monotonic() + res.settings.job_timeout_seconds  # one budget for placing, generating, storing
    notes: list[str] = list(job.notes or [])  # admission's notes (e.g. masked terms) stay first

    async def placed(backend: str) -> None:
        await committed(res.sessionmaker, lambda session: repository.set_backend(session, job.id, lease, backend))

    async def learned(backend: str, model: str | None, seconds: float, samples: int) -> None:
        await committed(
            res.sessionmaker, lambda session: backends_repository.save_speed(session, backend, model, seconds, samples)
        )

    # The slot ledger's key: one per run, so that a run that lost its lease (still generating somewhere) and
    # the run that took the job over never share, overwrite or release each other's slot.
    run_key = f"{job.id}:{lease[:12]}"
    try:
        logo_sha256 = _logo_of(job)
        logo = await res.store.read(logo_sha256, "png") if logo_sha256 else None
    except FileNotFoundError:  # checked before any GPU time is spent on it
        return await _fail(res, job.id, lease, "logo_missing", "The watermark's logo is no longer stored.", notes)
    try:
        request = await _request_of(res, job)
        work = generation.generate(
            res.scheduler,
            request,
            job_id=run_key,
            progress=progress,
            on_placed=placed,
            on_speed=learned,
            oom_fallback=job.oom_fallback,
        )
        generated = await _with_heartbeat(res, job.id, lease, progress, deadline, work)
        notes += generated.notes
        captions: list[Caption | None] = [None] * len(generated.images)
        if job.describe:
            captions, describe_notes = await _with_heartbeat(
                res, job.id, lease, progress, deadline, describe_images(res.scheduler, run_key, generated.images)
            )
            notes += describe_notes
        assets = await _with_heartbeat(
            res, job.id, lease, progress, deadline, _store(res, job, generated, captions, notes, logo)
        )
    except BackendError as exc:
        return await _fail(res, job.id, lease, exc.code, exc.message, notes + exc.notes)
    except (_LeaseLost, asyncio.CancelledError):
        raise
    except FileNotFoundError:
        return await _fail(res, job.id, lease, "input_missing", "The job's input image is no longer stored.", notes)
    except Exception:
        log.exception("job.internal_error")
        return await _fail(res, job.id, lease, "internal_error", "An internal error stopped this job.", notes)

    async def succeed(session: AsyncSession) -> bool:
        if not await repository.finish(session, job.id, lease, status=JobStatus.succeeded, notes=notes):
            return False
        session.add_all(assets)
        # In the same transaction as the result: a job is charged exactly when it has succeeded, and its
        # deliveries exist exactly when it has (the outbox: a crash cannot lose them or make them twice).
        await quotas.settle(session, job.id, images=len(assets), gpu_seconds=generated.gpu_seconds)
        if job.deliver or job.callback_url:
            await session.flush()  # the asset rows first: deliveries reference the job's results
            await delivery.enqueue_for_job(session, job)
        return True

    if not await committed(res.sessionmaker, succeed):
        raise _LeaseLost
    if res.relay is not None and (job.deliver or job.callback_url):
        res.relay.wake()
    return JobStatus.succeeded.value


class _Progress:
    """The adapter's progress callback; the heartbeat writes the latest value."""

    def __init__(self) -> None:
        self.value = 0.0

    async def __call__(self, value: float) -> None:
        self.value = max(0.0, min(1.0, value))


async def _with_heartbeat(
    res: Resources, job_id: str, lease: str, progress: _Progress, deadline: float, work: Awaitable[T]
) -> T:
    """Await ``work`` while renewing the lease. A cancel or takeover (the renewal finds the lease gone)
    cancels ``work``, which interrupts the generation on its backend. A database hiccup during a renewal
    is tolerated until the lease is nearly out; then the run is abandoned (not failed: it runs again)."""
    settings = res.settings
    ttl = settings.job_lease_seconds
    interval = min(1.0, ttl / 3)
    task = asyncio.ensure_future(work)
    last_renewal = time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=interval)
            if done:
                return task.result()
            if time.monotonic() > deadline:
                raise BackendError(f"The job took longer than {settings.job_timeout_seconds} s.", code="timeout")
            try:
                # Bounded: a stalled database must not keep us from noticing the deadline or a cancel.
                beat = partial(
                    repository.heartbeat, job_id=job_id, lease_token=lease, ttl=ttl, progress=min(progress.value, 0.99)
                )
                held = await committed(res.sessionmaker, beat, give_up_after=ttl / 2)
            except Exception:
                if time.monotonic() - last_renewal > ttl * 0.8:
                    raise _LeaseLost from None
                log.warning("job.heartbeat_failed", exc_info=True)
                continue
            if not held:
                raise _LeaseLost
            last_renewal = time.monotonic()
    finally:
        if not task.done():
            task.cancel()
            # Give the backend call a bounded time to stop (an adapter that ignores cancel cannot hang us).
            await asyncio.wait({task}, timeout=_CANCEL_GRACE_SECONDS)


def _logo_of(job: Job) -> str | None:
    """The content hash of the logo the job's watermark draws, if it draws one."""
    if not job.watermark or not job.watermark.get("logo"):
        return None
    sha256 = job.watermark.get("logo_sha256")
    return sha256 if isinstance(sha256, str) else None


def _target(job: Job, generated: Generated, width: int, height: int) -> tuple[int, int]:
    """The stored size: the size asked for; after the out-of-memory fallback, its aspect within what was made."""
    if not generated.fell_back:
        return job.width, job.height
    scale = min(width / job.width, height / job.height)
    return max(1, round(job.width * scale)), max(1, round(job.height * scale))


async def _store(
    res: Resources,
    job: Job,
    generated: Generated,
    captions: list[Caption | None],
    notes: list[str],
    logo: bytes | None,
) -> list[Asset]:
    """Write the images to the content-addressed store: fitted to the size asked for, watermarked, in the job's
    format (an image the out-of-memory fallback made smaller is cropped to the aspect asked for, not enlarged)."""
    watermark = Watermark.model_validate(_public(job.watermark)) if job.watermark else None
    assets = []
    fitted: set[tuple[int, int, int, int]] = set()
    for index, (image, caption) in enumerate(zip(generated.images, captions, strict=True)):
        data, width, height = image.data, image.width, image.height
        target = _target(job, generated, width, height)
        size = target if target != (width, height) else None
        if size is not None or watermark is not None or image.format != job.output_format:
            done = await asyncio.to_thread(
                finish,
                image.data,
                output_format=cast(OutputFormat, job.output_format),
                size=size,
                watermark=watermark,
                logo=logo,
            )
            data, width, height = done.data, done.width, done.height
            if size is not None:
                fitted.add((image.width, image.height, *size))
        stored = await res.store.put(data, job.output_format)
        tags = list(dict.fromkeys([*(job.tags or []), *((caption.tags or []) if caption else [])]))
        assets.append(
            Asset(
                job_id=job.id,
                system_id=job.system_id,
                index=index,
                sha256=stored.sha256,
                bytes=stored.size,
                width=width,
                height=height,
                format=job.output_format,
                content_type=CONTENT_TYPES[job.output_format],
                seed=image.seed,
                caption=caption.text if caption else None,
                tags=tags or None,
            )
        )
    for w, h, fw, fh in sorted(fitted):
        notes.append(f"Generated at {w}x{h} and fitted to exactly {fw}x{fh} (scaled to cover, centred).")
    return assets


async def _fail(res: Resources, job_id: str, lease: str, code: str, message: str, notes: list[str]) -> str:
    async def fail(session: AsyncSession) -> bool:
        if not await repository.finish(
            session, job_id, lease, status=JobStatus.failed, error_code=code, error_message=message, notes=notes
        ):
            return False
        await quotas.refund(session, job_id)
        failed = await repository.get(session, job_id)
        if failed is not None and failed.callback_url:  # the caller waits for the outcome, whatever it is
            delivery.enqueue_failure_callback(session, failed)
        return True

    if not await committed(res.sessionmaker, fail):
        raise _LeaseLost
    if res.relay is not None:
        res.relay.wake()
    log.warning("job.failed", code=code, message=message)
    return JobStatus.failed.value


__all__ = ["run_job"]
