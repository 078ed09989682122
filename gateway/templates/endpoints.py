"""Templates API: list, read (with versions), save a new version, and render a record (a preview)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.service import Actor, record
from gateway.auth.dependencies import Authenticator
from gateway.deps import ReadSessionDep, ResourcesDep, SessionDep
from gateway.errors import error_responses
from gateway.jobs import service as jobs
from gateway.jobs.schemas import JobCreate
from gateway.moderation import service as moderation
from gateway.systems.service import Principal
from gateway.templates import repository, service
from gateway.templates.models import TemplateVersion
from gateway.templates.schemas import (
    RenderedRead,
    TemplateList,
    TemplateRead,
    TemplateRender,
    TemplateSave,
    TemplateSummary,
    VersionRead,
)
from policies.scopes import Scope

router = APIRouter(prefix="/templates", tags=["templates"], responses=error_responses(404))
Reader = Annotated[
    Principal,
    Depends(Authenticator(any_of={Scope.templates_read, Scope.templates_write, Scope.generate, Scope.batch})),
]
Writer = Annotated[Principal, Depends(Authenticator(any_of={Scope.templates_write}))]
Name = Annotated[str, Path(max_length=100, pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")]


async def _read(session: AsyncSession, row: TemplateVersion) -> TemplateRead:
    history = await repository.versions(session, row.owner_key, row.name)
    return TemplateRead(
        **TemplateSummary.of(row).model_dump(), source=row.source, versions=[VersionRead.of(v) for v in history]
    )


@router.get("", response_model=TemplateList)
async def list_templates(principal: Reader, session: ReadSessionDep) -> TemplateList:
    """The templates you can use: the shared library and your own private ones (newest version of each)."""
    return TemplateList(items=[TemplateSummary.of(r) for r in await service.visible(session, principal=principal)])


@router.get("/{name}", response_model=TemplateRead)
async def get_template(
    name: Name,
    principal: Reader,
    session: ReadSessionDep,
    version: Annotated[int | None, Query(ge=1, le=1_000_000, description="An older version's source")] = None,
) -> TemplateRead:
    """One template: its source (newest, or `version`) and every version."""
    row = await service.resolve(session, principal=principal, name=name, version=version)
    return await _read(session, row)


@router.put("/{name}", response_model=TemplateRead, responses=error_responses(409))
async def save_template(
    name: Name, body: TemplateSave, principal: Writer, request: Request, session: SessionDep, response: Response
) -> TemplateRead:
    """Save a new version (201); the same text as an existing version answers that version (200)."""
    row, created = await service.save(session, principal=principal, name=name, source=body.source)
    if created:
        record(
            session,
            Actor.of(request, principal.system_name, principal.credential),
            "template.save",
            target=f"template:{name}",
            details={"version": row.version, "private": row.owner_key != ""},
        )
        response.status_code = status.HTTP_201_CREATED
    await session.commit()
    return await _read(session, row)


@router.post("/{name}/render", response_model=RenderedRead)
async def render_template(
    name: Name, body: TemplateRender, principal: Reader, session: ReadSessionDep, res: ResourcesDep
) -> RenderedRead:
    """Render a record: the prompt and parameters a job would get, after the content policy. Generates nothing."""
    row = await service.resolve(session, principal=principal, name=name, version=body.version)
    rendered = await service.render(row, body.record)
    # What a job would refuse (a prompt too long, a control character from the template's data), the preview too.
    jobs.with_template(JobCreate.model_validate({"prompt": "-"}), rendered)
    screened = await moderation.screen(
        session,
        system_id=principal.system_id,
        prompt=rendered.prompt,
        negative_prompt=rendered.negative_prompt,
        semantic=res.semantic,
    )
    return RenderedRead(
        template=row.name,
        version=row.version,
        prompt=screened.prompt,
        negative_prompt=screened.negative_prompt,
        parameters=rendered.parameters,
        tags=rendered.tags,
        notes=screened.notes,
    )
