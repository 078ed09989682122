"""Job use cases. Services take the session explicitly and never commit; routes commit, then enqueue."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.assets import repository as asset_repository
from gateway.assets.models import Asset
from gateway.assets.storage import LocalAssetStore
from gateway.common.ids import is_id
from gateway.errors import Conflict, NotFound, ValidationFailed
from gateway.jobs import repository
from gateway.jobs.inputs import Fetch, fetch_input, is_url, store_input
from gateway.jobs.models import Job, JobStatus
from gateway.jobs.queue import queue_ref
from gateway.jobs.schemas import MAX_SEED, JobCreate
from gateway.moderation.service import Screened
from gateway.quotas import service as quotas
from gateway.quotas.service import Demand, QuotaExceeded
from gateway.systems import repository as systems_repository
from gateway.systems.service import Principal
from gateway.templates.document import Rendered
from gateway.templates.models import TemplateVersion


def request_hash(body: JobCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def create_job(
    session: AsyncSession,
    *,
    principal: Principal,
    body: JobCreate,
    idempotency_key: str | None,
    store: LocalAssetStore,
    screened: Screened,
    demand: Demand,
    fetch: Fetch | None = None,
    digest: str | None = None,
    template: TemplateVersion | None = None,
    tags: list[str] | None = None,
    batch: BatchSlot | None = None,
    deliver: list[dict[str, Any]] | None = None,
) -> tuple[Job, bool]:
    """Persist a queued job with its quota reservation; returns ``(job, created)``.

    ``screened`` is the prompt after the content policy; a repeated idempotency key returns the first job
    (and reserves nothing). QuotaExceeded leaves nothing written.
    """
    digest = digest or request_hash(body)  # of the body as sent (a template's rendering fills in more)
    if idempotency_key is not None:
        existing = await repository.by_idempotency_key(session, principal.system_id, idempotency_key)
        if existing is not None:
            return _replay(existing, digest), False
    init_image = mask = None
    if body.init_image is not None:
        init_image = await store_input(
            session, store, system_id=principal.system_id, value=body.init_image, field="init_image", fetch=fetch
        )
    if body.mask is not None:
        mask = await store_input(
            session, store, system_id=principal.system_id, value=body.mask, field="mask", fetch=fetch
        )
    watermark = await _watermark(session, principal, body)
    now = await repository.db_time(session)  # the clock the reconciler compares enqueued_at with
    job = Job(
        system_id=principal.system_id,
        prompt=screened.prompt,
        negative_prompt=screened.negative_prompt,
        notes=list(screened.notes),
        template_version_id=template.id if template else None,
        template_name=template.name if template else None,
        template_version=template.version if template else None,
        width=body.width,
        height=body.height,
        steps=body.steps,
        guidance_scale=body.guidance_scale,
        seed=body.seed if body.seed >= 0 else secrets.randbelow(MAX_SEED + 1),
        n=body.n,
        model=body.model,
        output_format=body.output_format,
        sampler=body.sampler,
        scheduler=body.scheduler,
        denoising_strength=body.denoising_strength,
        init_image_sha256=init_image,
        mask_sha256=mask,
        describe=body.describe,
        oom_fallback=body.oom_fallback,
        tags=_merged(tags, body.tags) or None,
        watermark=watermark,
        batch_id=batch.batch_id if batch else None,
        batch_role=batch.role if batch else None,
        batch_index=batch.position if batch else None,
        batch_name=batch.name if batch else None,
        deliver=deliver or None,
        callback_url=body.callback_url,
        idempotency_key=idempotency_key,
        request_hash=digest,
        created_at=now,
        enqueued_at=now,
    )
    job.queue_ref = queue_ref(job.id, 0)
    try:
        async with session.begin_nested():
            # Reserve first: on PostgreSQL this locks the system's quota row, serialising its admissions.
            charge = await quotas.reserve(session, system_id=principal.system_id, job_id=job.id, demand=demand)
            session.add(job)
            await session.flush()
            session.add(charge)
            await session.flush()
    except (IntegrityError, QuotaExceeded):
        if idempotency_key is None:
            raise
        # A concurrent request with the same key won the race (on PostgreSQL we waited for its commit on the
        # quota row, and may then find the quota spent by that very job): answer with its job.
        existing = await repository.by_idempotency_key(session, principal.system_id, idempotency_key)
        if existing is None:
            raise
        return _replay(existing, digest), False
    return job, True


@dataclass(frozen=True)
class BatchSlot:
    """Where a job sits in its batch."""

    batch_id: str
    role: str
    position: int
    name: str


def _merged(*lists: list[str] | None) -> list[str]:
    """Tags in order of first appearance, without repeats."""
    return list(dict.fromkeys(tag for tags in lists for tag in (tags or [])))


async def _watermark(session: AsyncSession, principal: Principal, body: JobCreate) -> dict[str, Any] | None:
    """The watermark to store on the job; a logo watermark pins the system's current logo (content-addressed)."""
    if body.watermark is None:
        return None
    stored: dict[str, Any] = body.watermark.model_dump(mode="json", exclude_defaults=False)
    if body.watermark.logo:
        system = await systems_repository.get(session, principal.system_id)
        if system is None or system.logo_sha256 is None:
            message = "this system has no logo yet: upload one with PUT /v1/logo, or use a text watermark"
            raise ValidationFailed(
                message, code="logo_missing", details=[{"field": "watermark.logo", "message": message}]
            )
        stored["logo_sha256"] = system.logo_sha256
    return stored


class _Fetched(dict[str, bytes]):
    async def lookup(self, url: str) -> bytes:
        """A ``Fetch`` that answers from what ``fetch_inputs`` downloaded."""
        return self[url]


async def fetch_inputs(body: JobCreate, fetch: Fetch) -> _Fetched:
    """Download input images given as URLs (through the outbound guard) before any database work."""
    fetched = _Fetched()
    for field, value in (("init_image", body.init_image), ("mask", body.mask)):
        if value is not None and is_url(value) and value not in fetched:
            fetched[value] = await fetch_input(value, field, fetch)
    return fetched


def with_template(body: JobCreate, rendered: Rendered) -> JobCreate:
    """The body a template makes: its prompt and parameters, under what the caller set explicitly."""
    given = body.model_fields_set
    values = {k: v for k, v in rendered.parameters.items() if k not in given and v is not None}
    values["prompt"] = rendered.prompt
    if "negative_prompt" not in given:
        values["negative_prompt"] = rendered.negative_prompt
    sent = body.model_dump(exclude_unset=True, exclude={"template", "template_version", "record"})
    try:  # validated like a prompt the caller wrote: length, control characters
        return JobCreate.model_validate({**sent, **values})
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"]) or "prompt"
        message = f"the rendered {field} is not valid: {error['msg']}"
        raise ValidationFailed(
            message, code="template_invalid", details=[{"field": field, "message": message}]
        ) from None


def demand_of(body: JobCreate, seconds_per_megapixel_step: float) -> Demand:
    return Demand.of(
        width=body.width,
        height=body.height,
        steps=body.steps,
        n=body.n,
        seconds_per_megapixel_step=seconds_per_megapixel_step,
    )


async def replayed(
    session: AsyncSession, *, principal: Principal, idempotency_key: str | None, body: JobCreate
) -> Job | None:
    """The job an earlier request with this key created (409 if its body differed), or None."""
    if idempotency_key is None:
        return None
    existing = await repository.by_idempotency_key(session, principal.system_id, idempotency_key)
    return _replay(existing, request_hash(body)) if existing is not None else None


def _replay(existing: Job, digest: str) -> Job:
    if existing.request_hash != digest:
        raise Conflict(
            "This Idempotency-Key was already used with a different request body.",
            code="idempotency_key_reused",
        )
    return existing


async def get_job(session: AsyncSession, *, principal: Principal, job_id: str) -> Job:
    job = await repository.get_for_system(session, job_id, principal.system_id) if is_id(job_id, "job") else None
    if job is None:
        raise NotFound("No such job.", code="job_not_found")
    return job


async def list_jobs(
    session: AsyncSession, *, principal: Principal, status: JobStatus | None, cursor: str | None, limit: int
) -> tuple[Sequence[Job], str | None]:
    rows = await repository.list_for_system(
        session, principal.system_id, status=status.value if status else None, cursor=cursor, limit=limit + 1
    )
    page = rows[:limit]
    return page, (page[-1].id if len(rows) > limit else None)


async def assets_of(session: AsyncSession, jobs: Sequence[Job]) -> dict[str, list[Asset]]:
    return await asset_repository.for_jobs(session, [j.id for j in jobs if j.status == JobStatus.succeeded])


async def cancel_job(session: AsyncSession, *, principal: Principal, job_id: str) -> Job:
    """Cancel a queued or running job (a running one is interrupted on its backend by its worker)."""
    job = await get_job(session, principal=principal, job_id=job_id)
    if job.status == JobStatus.cancelled:
        return job
    if await repository.cancel(session, job.id):
        await quotas.refund(session, job.id)
    else:
        current = await repository.get(session, job.id)
        status = current.status if current else job.status
        raise Conflict(
            f"The job has already {status}; only queued or running jobs can be cancelled.",
            code="job_not_cancellable",
        )
    refreshed = await repository.get(session, job.id)
    assert refreshed is not None
    return refreshed
