"""Native jobs API: submit, read, list, cancel."""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.service import Actor
from gateway.auth.dependencies import Authenticator
from gateway.delivery import service as delivery
from gateway.deps import BaseUrlDep, ReadSessionDep, ResourcesDep, SessionDep
from gateway.errors import error_responses
from gateway.jobs import service
from gateway.jobs.models import Job, JobStatus
from gateway.jobs.schemas import JobCreate, JobList, JobRead
from gateway.moderation import service as moderation
from gateway.moderation.service import ContentFiltered
from gateway.quotas import service as quotas
from gateway.quotas.service import QuotaExceeded
from gateway.systems.service import Principal
from gateway.templates import service as templates
from policies.scopes import Scope

router = APIRouter(prefix="/jobs", tags=["jobs"])
log = structlog.get_logger("gateway.jobs")

Submitter = Annotated[Principal, Depends(Authenticator(any_of={Scope.generate}))]
Reader = Annotated[Principal, Depends(Authenticator(any_of={Scope.generate, Scope.batch}))]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Retry-safe submission: the same key and body return the same job.",
    ),
]


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobRead, responses=error_responses(404, 409, 429))
async def submit_job(
    body: JobCreate,
    request: Request,
    principal: Submitter,
    session: SessionDep,
    res: ResourcesDep,
    base: BaseUrlDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobRead:
    """Queue a generation job; it runs asynchronously (poll it, or wait for its callback)."""
    actor = Actor.of(request, principal.system_name, principal.credential)
    sent = body  # as the caller sent it: idempotency compares this, not what a template fills in
    digest = service.request_hash(sent)
    template = None
    try:
        # Before the write transaction: no database lock is held while the filter runs or a URL is fetched.
        # A retry of an accepted submission is answered first: it is not screened, fetched or charged again.
        async with res.read_sessionmaker() as read:
            replayed = await service.replayed(read, principal=principal, idempotency_key=idempotency_key, body=sent)
            if replayed is not None:
                return await _replayed(read, replayed, response, base)
            if body.template is not None:
                assert body.record is not None
                template = await templates.resolve(
                    read, principal=principal, name=body.template, version=body.template_version
                )
                body = service.with_template(body, await templates.render(template, body.record))
            assert body.prompt is not None
            demand = service.demand_of(body, res.settings.quota_seconds_per_megapixel_step)
            await quotas.precheck(read, system_id=principal.system_id, demand=demand)
            screened = await moderation.screen(
                read,
                system_id=principal.system_id,
                prompt=body.prompt,
                negative_prompt=body.negative_prompt,
                semantic=res.semantic,
            )
            deliver = await delivery.checked_destinations(
                read, principal, res.outbound.policy, body.deliver, body.callback_url
            )
        fetched = await service.fetch_inputs(body, res.outbound.get_bytes)
        job, created = await service.create_job(
            session,
            principal=principal,
            body=body,
            idempotency_key=idempotency_key,
            store=res.store,
            screened=screened,
            demand=demand,
            fetch=fetched.lookup,
            digest=digest,
            template=template,
            deliver=deliver,
        )
    except ContentFiltered as exc:
        res.audit.refused(actor, "content.refused", target="route:POST /v1/jobs", reason=exc.category)
        raise
    except QuotaExceeded as exc:
        if idempotency_key is not None:
            # The same key's first request may have committed meanwhile and spent what was left: that is a retry.
            async with res.read_sessionmaker() as read:
                first = await service.replayed(read, principal=principal, idempotency_key=idempotency_key, body=sent)
                if first is not None:
                    return await _replayed(read, first, response, base)
        res.audit.refused(actor, "quota.refused", target="route:POST /v1/jobs", reason=exc.code)
        raise
    await session.commit()
    if not created:
        return await _replayed(session, job, response, base)
    try:
        assert job.queue_ref is not None
        await res.queue.enqueue(job.id, job.queue_ref)
    except Exception:
        # Committed means accepted: the reconciler enqueues it once the queue is back.
        log.exception("job.enqueue_failed", job_id=job.id)
    response.headers["Location"] = f"{base}/v1/jobs/{job.id}"
    return JobRead.of(job, [], base)


async def _replayed(session: AsyncSession, job: Job, response: Response, base: str) -> JobRead:
    """The answer to a retried submission: the first request's job, as it is now."""
    response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"{base}/v1/jobs/{job.id}"
    assets = await service.assets_of(session, [job])
    return JobRead.of(job, assets.get(job.id, []), base)


@router.get("", response_model=JobList)
async def list_jobs(
    principal: Reader,
    session: ReadSessionDep,
    base: BaseUrlDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    cursor: Annotated[str | None, Query(max_length=40, pattern=r"^job_[0-9a-f]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JobList:
    """List the caller's jobs, newest first."""
    jobs, next_cursor = await service.list_jobs(
        session, principal=principal, status=status_filter, cursor=cursor, limit=limit
    )
    assets = await service.assets_of(session, jobs)
    return JobList(items=[JobRead.of(j, assets.get(j.id, []), base) for j in jobs], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobRead, responses=error_responses(404))
async def get_job(job_id: str, principal: Reader, session: ReadSessionDep, base: BaseUrlDep) -> JobRead:
    """Read one job: status, progress, parameters with the resolved seed, error and assets."""
    job = await service.get_job(session, principal=principal, job_id=job_id)
    assets = await service.assets_of(session, [job])
    return JobRead.of(job, assets.get(job.id, []), base)


@router.post("/{job_id}/cancel", response_model=JobRead, responses=error_responses(404, 409))
async def cancel_job(job_id: str, principal: Submitter, session: SessionDep, base: BaseUrlDep) -> JobRead:
    """Cancel a queued or running job."""
    job = await service.cancel_job(session, principal=principal, job_id=job_id)
    await session.commit()
    return JobRead.of(job, [], base)
