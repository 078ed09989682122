"""A system's logo, for watermarks (``watermark: {"logo": true}``): upload, read back, remove."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.responses import FileResponse

from gateway.assets.finish import load_logo
from gateway.audit.service import Actor, record
from gateway.auth.dependencies import Authenticator
from gateway.deps import ReadSessionDep, ResourcesDep, SessionDep
from gateway.errors import NotFound, ValidationFailed, error_responses
from gateway.systems import repository
from gateway.systems.service import Principal
from policies.scopes import Scope

router = APIRouter(prefix="/logo", tags=["assets"])
Caller = Annotated[Principal, Depends(Authenticator(any_of={Scope.generate, Scope.batch}))]
MAX_LOGO_BYTES = 2 * 1024 * 1024
_TYPES = ("image/png", "image/jpeg", "image/webp")


@router.put(
    "",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in _TYPES},
        }
    },
)
async def put_logo(request: Request, principal: Caller, session: SessionDep, res: ResourcesDep) -> Response:
    """Set your logo (PNG, JPEG or WEBP, at most 2 MB and 4096x4096 px; transparency is kept)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in _TYPES:
        message = "send the image itself as the body, with Content-Type image/png, image/jpeg or image/webp"
        raise ValidationFailed(message, details=[{"field": "body", "message": message}])
    data = await request.body()
    if len(data) > MAX_LOGO_BYTES:
        message = f"a logo is at most {MAX_LOGO_BYTES // (1024 * 1024)} MB"
        raise ValidationFailed(message, details=[{"field": "body", "message": message}])
    try:
        png = await asyncio.to_thread(load_logo, data)
    except ValueError as exc:
        raise ValidationFailed(str(exc), details=[{"field": "body", "message": str(exc)}]) from None
    stored = await res.store.put(png, "png")
    await repository.set_logo(session, principal.system_id, stored.sha256)
    record(
        session,
        Actor.of(request, principal.system_name, principal.credential),
        "logo.set",
        target=f"system:{principal.system_name}",
    )
    await session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}}, **error_responses(404)},
)
async def get_logo(principal: Caller, session: ReadSessionDep, res: ResourcesDep) -> FileResponse:
    """Your logo as stored (PNG)."""
    system = await repository.get(session, principal.system_id)
    path = res.store.path_for(system.logo_sha256, "png") if system and system.logo_sha256 else None
    if path is None or not path.is_file():
        raise NotFound("This system has no logo.", code="logo_not_found")
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, no-cache"})


@router.delete("", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
async def delete_logo(request: Request, principal: Caller, session: SessionDep) -> Response:
    """Remove your logo (jobs already accepted with a logo watermark still use the one they were given)."""
    await repository.set_logo(session, principal.system_id, None)
    record(
        session,
        Actor.of(request, principal.system_name, principal.credential),
        "logo.removed",
        target=f"system:{principal.system_name}",
    )
    await session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
