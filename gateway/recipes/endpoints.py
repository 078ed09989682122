"""Recipes and batches API: run a recipe on a record (a batch of jobs), read batches with their jobs."""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, status
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.assets.models import Asset
from gateway.audit.service import Actor
from gateway.auth.dependencies import Authenticator
from gateway.delivery import service as delivery
from gateway.deps import BaseUrlDep, ReadSessionDep, ResourcesDep, SessionDep
from gateway.errors import error_responses
from gateway.jobs import service as jobs_service
from gateway.jobs.models import Job
from gateway.jobs.schemas import JobRead
from gateway.moderation.service import ContentFiltered
from gateway.quotas.service import QuotaExceeded
from gateway.recipes import repository, service
from gateway.recipes.document import shipped
from gateway.recipes.models import Batch
from gateway.recipes.repository import Progress
from gateway.recipes.schemas import (
    BatchJob,
    BatchList,
    BatchRead,
    BatchSummary,
    RecipeList,
    RecipeRead,
    RecipeRun,
    Skipped,
)
from gateway.systems.service import Principal
from policies.scopes import Scope

router = APIRouter(tags=["recipes"])
log = structlog.get_logger("gateway.recipes")

Runner = Annotated[Principal, Depends(Authenticator(any_of={Scope.batch}))]
Reader = Annotated[Principal, Depends(Authenticator(any_of={Scope.batch, Scope.generate}))]
Name = Annotated[str, Path(max_length=100, pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Retry-safe submission: the same key and body return the same batch.",
    ),
]


@router.get("/recipes", response_model=RecipeList, response_model_by_alias=True)
async def list_recipes(principal: Reader) -> RecipeList:
    """The recipes: what record each takes and the jobs it makes."""
    return RecipeList(items=[RecipeRead.of(r) for r in shipped().values()])


@router.get("/recipes/{name}", response_model=RecipeRead, response_model_by_alias=True, responses=error_responses(404))
async def get_recipe(name: Name, principal: Reader) -> RecipeRead:
    """One recipe: its record schema and roles."""
    return RecipeRead.of(service.recipe_named(name))


@router.post(
    "/recipes/{name}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BatchRead,
    responses=error_responses(404, 409, 429),
)
async def run_recipe(
    name: Name,
    body: RecipeRun,
    request: Request,
    principal: Runner,
    session: SessionDep,
    res: ResourcesDep,
    base: BaseUrlDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> BatchRead:
    """Make a batch of jobs from one record: accepted whole (202) or refused whole (4xx, nothing queued)."""
    recipe = service.recipe_named(name)
    actor = Actor.of(request, principal.system_name, principal.credential)
    digest = service.request_hash(name, body)
    route = "route:POST /v1/recipes/{name}"
    try:
        async with res.read_sessionmaker() as read:
            first = await service.replayed(read, principal=principal, idempotency_key=idempotency_key, digest=digest)
            if first is not None:
                return await _replayed(read, first, response, base)
            preparation = await service.prepare(
                read,
                principal=principal,
                recipe=recipe,
                run=body,
                seconds_per_megapixel_step=res.settings.quota_seconds_per_megapixel_step,
                semantic=res.semantic,
            )
            preparation.deliver = await delivery.checked_destinations(
                read, principal, res.outbound.policy, body.options.deliver, body.callback_url, prefix="options."
            )
        batch, created_jobs, created = await service.create_batch(
            session,
            principal=principal,
            recipe=recipe,
            run=body,
            preparation=preparation,
            idempotency_key=idempotency_key,
            digest=digest,
            store=res.store,
        )
    except ContentFiltered as exc:
        res.audit.refused(actor, "content.refused", target=route, reason=exc.category)
        raise
    except QuotaExceeded as exc:
        if idempotency_key is not None:
            async with res.read_sessionmaker() as read:
                first = await service.replayed(
                    read, principal=principal, idempotency_key=idempotency_key, digest=digest
                )
                if first is not None:
                    return await _replayed(read, first, response, base)
        res.audit.refused(actor, "quota.refused", target=route, reason=exc.code)
        raise
    await session.commit()
    if not created:
        return await _replayed(session, batch, response, base)
    for job in created_jobs:
        try:
            assert job.queue_ref is not None
            await res.queue.enqueue(job.id, job.queue_ref)
        except Exception:
            log.exception("job.enqueue_failed", job_id=job.id)  # committed: the reconciler enqueues it
    log.info("batch.accepted", batch_id=batch.id, recipe=name, jobs=len(created_jobs))
    response.headers["Location"] = f"{base}/v1/batches/{batch.id}"
    return _read(batch, created_jobs, {}, base)


async def _replayed(session: AsyncSession, batch: Batch, response: Response, base: str) -> BatchRead:
    response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"{base}/v1/batches/{batch.id}"
    return await _full(session, batch, base)


async def _full(session: AsyncSession, batch: Batch, base: str) -> BatchRead:
    batch_jobs = list(await repository.jobs_of(session, batch.id))
    assets = await jobs_service.assets_of(session, batch_jobs)
    return _read(batch, batch_jobs, assets, base)


def _read(batch: Batch, batch_jobs: list[Job], assets: dict[str, list[Asset]], base: str) -> BatchRead:
    progress = Progress()
    for job in batch_jobs:
        progress.counts[job.status] = progress.counts.get(job.status, 0) + 1
        if job.finished_at is not None and (progress.finished_at is None or job.finished_at > progress.finished_at):
            progress.finished_at = job.finished_at
    seen: dict[str, int] = {}
    items = []
    for job in batch_jobs:
        role = job.batch_role or ""
        items.append(
            BatchJob(
                name=job.batch_name or role,
                role=role,
                index=seen.get(role, 0),
                job=JobRead.of(job, assets.get(job.id, []), base),
            )
        )
        seen[role] = seen.get(role, 0) + 1
    return BatchRead(**_summary(batch, progress).model_dump(), jobs=items)


def _summary(batch: Batch, progress: Progress) -> BatchSummary:
    state, done = service.aggregate(batch.total, progress)
    return BatchSummary(
        id=batch.id,
        recipe=batch.recipe,
        record_id=batch.record_id,
        status=state,
        done=done,
        total=batch.total,
        counts={s: progress.counts.get(s, 0) for s in _STATUSES},
        created_at=batch.created_at,
        finished_at=progress.finished_at if done else None,
        callback_url=batch.callback_url,
        skipped=[Skipped.model_validate(s) for s in batch.skipped or []],
    )


@router.get("/batches", response_model=BatchList)
async def list_batches(
    principal: Reader,
    session: ReadSessionDep,
    base: BaseUrlDep,
    recipe: Annotated[str | None, Query(max_length=100, pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")] = None,
    record_id: Annotated[str | None, Query(min_length=1, max_length=200, description="The record's `id`")] = None,
    cursor: Annotated[str | None, Query(max_length=40, pattern=r"^bat_[0-9a-f]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> BatchList:
    """Your batches, newest first, with their aggregate status (`GET /v1/batches/{id}` for the jobs)."""
    rows, next_cursor = await service.list_batches(
        session, principal=principal, recipe=recipe, record_id=record_id, cursor=cursor, limit=limit
    )
    progress = await repository.progress_of(session, [b.id for b in rows])
    return BatchList(items=[_summary(b, progress[b.id]) for b in rows], next_cursor=next_cursor)


@router.get("/batches/{batch_id}", response_model=BatchRead, responses=error_responses(404))
async def get_batch(batch_id: str, principal: Reader, session: ReadSessionDep, base: BaseUrlDep) -> BatchRead:
    """One batch: counts per job status, done when every job has finished, and each job with its role."""
    batch = await service.get_batch(session, principal=principal, batch_id=batch_id)
    return await _full(session, batch, base)


_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


@router.post("/batches/{batch_id}/cancel", response_model=BatchRead, responses=error_responses(404))
async def cancel_batch(batch_id: str, principal: Runner, session: SessionDep, base: BaseUrlDep) -> BatchRead:
    """Cancel every job of the batch that has not finished yet (finished ones keep their results)."""
    batch = await service.get_batch(session, principal=principal, batch_id=batch_id)
    await service.cancel_batch(session, batch)
    await session.commit()
    return await _full(session, batch, base)
