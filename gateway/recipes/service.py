"""Recipe use cases: plan a record's jobs, render and screen each, admit them all or none; read batches.

Preparing (templates, rendering, the content filter) happens on a read session before the write transaction,
as for a single job; admission then writes the batch and every job with its quota reservation in one
transaction: a batch is accepted whole or refused whole.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.assets.storage import LocalAssetStore
from gateway.common.ids import is_id
from gateway.errors import Conflict, NotFound, ValidationFailed
from gateway.jobs import repository as jobs_repository
from gateway.jobs import service as jobs
from gateway.jobs.models import Job, JobStatus
from gateway.jobs.schemas import MAX_SEED, JobCreate
from gateway.moderation import service as moderation
from gateway.moderation.service import ContentFiltered, Screened
from gateway.quotas import service as quotas
from gateway.quotas.service import Demand, QuotaExceeded
from gateway.recipes import repository
from gateway.recipes.document import (
    Planned,
    RecipeDocument,
    RecipeError,
    plan,
    role_name,
    role_templates,
    shipped,
    valid_template_name,
)
from gateway.recipes.models import Batch
from gateway.recipes.repository import Progress
from gateway.recipes.schemas import BatchStatus, RecipeRun
from gateway.systems.service import Principal
from gateway.templates import service as templates
from gateway.templates.document import TemplateInvalid
from gateway.templates.models import TemplateVersion
from policies.semantic import SemanticCheck


@dataclass
class Preparation:
    jobs: list[Prepared]
    skipped: list[dict[str, Any]]
    deliver: list[dict[str, Any]] = field(default_factory=list)  # checked targets of every job


@dataclass
class Prepared:
    """One job of a batch, rendered and screened, ready to be admitted."""

    name: str
    role: str
    position: int
    body: JobCreate
    template: TemplateVersion
    screened: Screened
    demand: Demand
    tags: list[str]


def recipe_named(name: str) -> RecipeDocument:
    recipe = shipped().get(name)
    if recipe is None:
        raise NotFound(f"No recipe {name!r}.", code="recipe_not_found")
    return recipe


def request_hash(name: str, run: RecipeRun) -> str:
    canonical = json.dumps({"recipe": name, **run.model_dump(mode="json")}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _refused(field: str, message: str, code: str = "validation_error") -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", code=code, details=[{"field": field, "message": message}])


async def replayed(
    session: AsyncSession, *, principal: Principal, idempotency_key: str | None, digest: str
) -> Batch | None:
    """The batch an earlier request with this key created (409 if its body differed), or None."""
    if idempotency_key is None:
        return None
    existing = await repository.by_idempotency_key(session, principal.system_id, idempotency_key)
    if existing is None:
        return None
    if existing.request_hash != digest:
        raise Conflict(
            "This Idempotency-Key was already used with a different request body.", code="idempotency_key_reused"
        )
    return existing


async def prepare(
    session: AsyncSession,
    *,
    principal: Principal,
    recipe: RecipeDocument,
    run: RecipeRun,
    seconds_per_megapixel_step: float,
    semantic: SemanticCheck | None,
) -> Preparation:
    """Every job the record makes, rendered from its template and screened; 422 naming what is wrong."""
    try:
        recipe.validate_record(run.record)
        planned = plan(recipe, run.record, run.options.styles)
    except TemplateInvalid as exc:
        raise _refused(exc.field, exc.message) from None
    except RecipeError as exc:
        raise _refused(exc.field, exc.message) from None
    chosen, skipped = await _with_templates(session, principal, recipe, planned, run)
    names = _names([p.role for p, _ in chosen])
    await _check_role_options(session, principal, recipe, run, made={p.role for p, _ in chosen})
    base_seeds: dict[str, int] = {}
    screenings: dict[tuple[str, str], Screened] = {}  # repeated jobs often share their prompt
    prepared: list[Prepared] = []
    for position, ((item, template), name) in enumerate(zip(chosen, names, strict=True)):
        body = _body(item, run)
        try:
            rendered = await templates.render(template, item.record)
            body = _seeded(jobs.with_template(body, rendered), item, base_seeds)
        except ValidationFailed as exc:
            exc.message = f"{name}: {exc.message}"
            raise
        assert body.prompt is not None
        try:
            key = (body.prompt, body.negative_prompt)
            if key not in screenings:
                screenings[key] = await moderation.screen(
                    session,
                    system_id=principal.system_id,
                    prompt=body.prompt,
                    negative_prompt=body.negative_prompt,
                    semantic=semantic,
                )
            screened = screenings[key]
        except ContentFiltered as exc:
            exc.message = f"{name}: {exc.message}"
            exc.details = {**exc.details, "job": name}
            raise
        prepared.append(
            Prepared(
                name=name,
                role=item.role,
                position=position,
                body=body,
                template=template,
                screened=screened,
                demand=jobs.demand_of(body, seconds_per_megapixel_step),
                tags=list(dict.fromkeys([*item.tags, *rendered.tags, *run.options.tags])),
            )
        )
    total = Demand(
        images=sum(p.demand.images for p in prepared), gpu_seconds=round(sum(p.demand.gpu_seconds for p in prepared), 3)
    )
    await quotas.precheck(session, system_id=principal.system_id, demand=total, jobs=len(prepared))
    return Preparation(jobs=prepared, skipped=skipped)


async def _check_role_options(
    session: AsyncSession, principal: Principal, recipe: RecipeDocument, run: RecipeRun, made: set[str]
) -> None:
    """422 for per-role options no record could use; a role only this record lacks is passed over."""

    async def makeable(role: str) -> bool:
        for template in role_templates(recipe, role, run.options.styles):
            try:
                await templates.resolve(session, principal=principal, name=template)
                return True
            except NotFound:
                continue
        return False

    for role in sorted(set(run.options.roles) - made):
        if await makeable(role):
            continue
        message = f"the recipe {recipe.name} makes no role {role!r} (this batch's roles: {', '.join(sorted(made))})"
        spelled = role_name(role)
        if spelled != role and (spelled in made or await makeable(spelled)):
            message += f"; roles from the record are written {spelled!r}"
        raise _refused(f"options.roles.{role}", message)


async def _with_templates(
    session: AsyncSession, principal: Principal, recipe: RecipeDocument, planned: list[Planned], run: RecipeRun
) -> tuple[list[tuple[Planned, TemplateVersion]], list[dict[str, Any]]]:
    """The planned jobs with their templates, and the items left out for want of one (``skip_missing``)."""
    found: dict[str, TemplateVersion | None] = {}
    chosen: list[tuple[Planned, TemplateVersion]] = []
    skipped: list[dict[str, Any]] = []
    for index, item in enumerate(planned):
        if item.template not in found:
            row = None
            if valid_template_name(item.template):
                try:
                    row = await templates.resolve(session, principal=principal, name=item.template)
                except NotFound:
                    row = None
            found[item.template] = row
        template = found[item.template]
        if template is not None:
            chosen.append((item, template))
        elif item.skip_missing:
            named = valid_template_name(item.template)
            skipped.append(
                {
                    "role": item.role,
                    "template": item.template if named else None,
                    "reason": f"no template {item.template!r}" if named else "not a template name",
                }
            )
        else:
            field = f"options.styles.{index}" if run.options.styles is not None else "record"
            what = f"style {item.role!r}" if run.options.styles is not None else f"role {item.role!r}"
            raise _refused(field, f"no template {item.template!r} for the {what}", code="template_missing")
    if not chosen:
        kinds = sorted({p.role for p in planned})
        message = f"nothing to make: no template for any of {', '.join(kinds)}" if kinds else "nothing to make"
        raise _refused("record", message, code="nothing_to_make")
    return chosen, skipped


def _names(roles: list[str]) -> list[str]:
    """``main``, ``scene``, ``detail-1``, ``detail-2``: the role, numbered when it has several jobs."""
    totals = {role: roles.count(role) for role in roles}
    seen: dict[str, int] = {}
    names = []
    for role in roles:
        seen[role] = seen.get(role, 0) + 1
        names.append(role if totals[role] == 1 else f"{role}-{seen[role]}")
    return names


def _body(item: Planned, run: RecipeRun) -> JobCreate:
    """The job's explicit parameters (options, then the role's overrides): they win over the template's.

    The prompt is a stand-in until the template is rendered (``with_template`` replaces it); the record is not
    part of the body, so its size is checked once, on the request."""
    values: dict[str, Any] = {"prompt": "-"}
    if run.options.output_format is not None:
        values["output_format"] = run.options.output_format
    if run.options.watermark is not None:
        values["watermark"] = run.options.watermark.model_dump()
    override = run.options.roles.get(item.role)
    overridden = override.model_dump(exclude_unset=True) if override is not None else {}
    values.update(overridden)
    try:
        return JobCreate.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"])
        where = f"options.roles.{item.role}.{field}" if error["loc"] and error["loc"][0] in overridden else field
        raise _refused(where, str(error["msg"])) from None


def _seeded(body: JobCreate, item: Planned, base_seeds: dict[str, int]) -> JobCreate:
    """Distinct seeds for the jobs of one role: job k's images start at base + k x n (image i of a job uses
    seed + i), from the role's random or given base (``repeat``) or from a seed the role's options gave."""
    if item.seed_offset is not None:
        if item.role not in base_seeds:  # the role's first job: its given seed, else a random one
            base_seeds[item.role] = body.seed if body.seed >= 0 else secrets.randbelow(MAX_SEED + 1)
        base, offset = base_seeds[item.role], item.seed_offset
    elif body.seed >= 0 and item.index > 0:  # a given seed for a role of several jobs: not one picture each
        base, offset = body.seed, item.index
    else:
        return body
    return body.model_copy(update={"seed": (base + offset * body.n) % (MAX_SEED + 1)})


async def create_batch(
    session: AsyncSession,
    *,
    principal: Principal,
    recipe: RecipeDocument,
    run: RecipeRun,
    preparation: Preparation,
    idempotency_key: str | None,
    digest: str,
    store: LocalAssetStore,
) -> tuple[Batch, list[Job], bool]:
    """Write the batch and all its jobs (each with its quota reservation), or nothing: ``(batch, jobs, created)``."""
    prepared = preparation.jobs
    record_id = run.record.get("id")
    batch = Batch(
        system_id=principal.system_id,
        recipe=recipe.name,
        record_id=str(record_id)[:200]
        if isinstance(record_id, str | int) and not isinstance(record_id, bool)
        else None,
        options=run.options.model_dump(mode="json", exclude_defaults=True),
        total=len(prepared),
        skipped=preparation.skipped,
        callback_url=run.callback_url,
        idempotency_key=idempotency_key,
        request_hash=digest,
    )
    created: list[Job] = []
    try:
        async with session.begin_nested():
            session.add(batch)
            await session.flush()
            for item in prepared:
                job, _ = await jobs.create_job(
                    session,
                    principal=principal,
                    body=item.body,
                    idempotency_key=None,
                    store=store,
                    screened=item.screened,
                    demand=item.demand,
                    template=item.template,
                    tags=item.tags,
                    batch=jobs.BatchSlot(batch_id=batch.id, role=item.role, position=item.position, name=item.name),
                    deliver=preparation.deliver,
                )
                created.append(job)
    except (IntegrityError, QuotaExceeded):
        if idempotency_key is None:
            raise
        existing = await repository.by_idempotency_key(session, principal.system_id, idempotency_key)
        if existing is None:
            raise
        if existing.request_hash != digest:
            raise Conflict(
                "This Idempotency-Key was already used with a different request body.",
                code="idempotency_key_reused",
            ) from None
        return existing, [], False
    return batch, created, True


def aggregate(total: int, progress: Progress) -> tuple[BatchStatus, bool]:
    counts = progress.counts
    succeeded = counts.get(JobStatus.succeeded, 0)
    cancelled = counts.get(JobStatus.cancelled, 0)
    finished = succeeded + counts.get(JobStatus.failed, 0) + cancelled
    if finished < total:
        return ("queued" if counts.get(JobStatus.queued, 0) == total else "running"), False
    if succeeded == total:
        return "succeeded", True
    if cancelled == total:
        return "cancelled", True
    return ("failed" if succeeded == 0 else "partial"), True


async def get_batch(session: AsyncSession, *, principal: Principal, batch_id: str) -> Batch:
    batch = await repository.get_for_system(session, batch_id, principal.system_id) if is_id(batch_id, "bat") else None
    if batch is None:
        raise NotFound("No such batch.", code="batch_not_found")
    return batch


async def list_batches(
    session: AsyncSession,
    *,
    principal: Principal,
    recipe: str | None,
    record_id: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[Sequence[Batch], str | None]:
    rows = await repository.list_for_system(
        session, principal.system_id, recipe=recipe, record_id=record_id, cursor=cursor, limit=limit + 1
    )
    page = rows[:limit]
    return page, (page[-1].id if len(rows) > limit else None)


async def cancel_batch(session: AsyncSession, batch: Batch) -> int:
    """Cancel the batch's queued and running jobs (each refunded); returns how many were cancelled."""
    ids = await jobs_repository.cancel_batch(session, batch.id)
    await quotas.refund_all(session, ids)  # after every job row: the lock order of admission and completion
    return len(ids)
