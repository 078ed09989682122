"""Admin API for the backend pool: add, list, change, disable, remove and probe GPU servers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status

from gateway.audit.service import Actor, record
from gateway.auth.dependencies import Authenticator
from gateway.backends import repository, service
from gateway.backends.models import Backend
from gateway.backends.schemas import BackendCreate, BackendList, BackendRead, BackendUpdate
from gateway.common.crypto import SecretBox
from gateway.deps import ReadSessionDep, ResourcesDep, SessionDep
from gateway.errors import error_responses
from gateway.systems.service import Principal
from policies.scopes import Scope

router = APIRouter(prefix="/admin/backends", tags=["admin: backends"])
Admin = Annotated[Principal, Depends(Authenticator(any_of={Scope.admin}))]
Name = Annotated[str, Path(max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="The backend's name")]


def _actor(request: Request, admin: Principal) -> Actor:
    return Actor.of(request, admin.system_name, admin.credential)


def _safe(body: BackendCreate | BackendUpdate) -> dict[str, Any]:
    """What changed, for the audit log: the fields given, with the credentials left out."""
    changed = body.model_dump(mode="json", include=body.model_fields_set, exclude={"auth"})
    if "auth" in body.model_fields_set:
        changed["auth"] = "changed"
    return changed


async def _read(session: ReadSessionDep | SessionDep, row: Backend) -> BackendRead:
    speeds = await service.speeds_of(session, [row.name])
    return BackendRead.of(row, speeds[row.name])


@router.get("", response_model=BackendList)
async def list_backends(_: Admin, session: ReadSessionDep) -> BackendList:
    """List every backend with its health, models and learned speeds."""
    rows = await repository.list_backends(session)
    speeds = await service.speeds_of(session, [r.name for r in rows])
    return BackendList(items=[BackendRead.of(r, speeds[r.name]) for r in rows])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=BackendRead, responses=error_responses(409))
async def create_backend(
    body: BackendCreate,
    admin: Admin,
    request: Request,
    session: SessionDep,
    res: ResourcesDep,
    probe: Annotated[bool, Query(description="Ask the server for its models and health now")] = True,
) -> BackendRead:
    """Add a backend; with `probe` (default) its models are discovered at once."""
    box = SecretBox(res.settings.secret_key)
    row = await service.create_backend(session, body=body, box=box)
    record(session, _actor(request, admin), "backend.create", target=f"backend:{row.name}", details=_safe(body))
    await session.commit()
    if probe:  # after the commit: no write lock is held while the server answers
        outcome = await service.probe_server(repository.spec_of(row, box))
        row = await service.record_probe(session, name=row.name, outcome=outcome)
        await session.commit()
    return await _read(session, row)


@router.get("/{name}", response_model=BackendRead, responses=error_responses(404))
async def get_backend(name: Name, _: Admin, session: ReadSessionDep) -> BackendRead:
    """One backend."""
    return await _read(session, await service.get_backend(session, name))


@router.patch("/{name}", response_model=BackendRead, responses=error_responses(404))
async def update_backend(
    name: Name, body: BackendUpdate, admin: Admin, request: Request, session: SessionDep, res: ResourcesDep
) -> BackendRead:
    """Change a backend (e.g. `{"enabled": false}` to drain it: running jobs finish, no new ones start)."""
    row = await service.update_backend(session, name=name, body=body, box=SecretBox(res.settings.secret_key))
    record(session, _actor(request, admin), "backend.update", target=f"backend:{name}", details=_safe(body))
    await session.commit()
    return await _read(session, row)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404))
async def delete_backend(name: Name, admin: Admin, request: Request, session: SessionDep) -> Response:
    """Remove a backend (running jobs on it finish)."""
    await service.delete_backend(session, name=name)
    record(session, _actor(request, admin), "backend.delete", target=f"backend:{name}")
    await session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{name}/probe", response_model=BackendRead, responses=error_responses(404))
async def probe_backend(name: Name, _: Admin, session: SessionDep, res: ResourcesDep) -> BackendRead:
    """Probe a backend now: health, models, loaded model."""
    spec = repository.spec_of(await service.get_backend(session, name), SecretBox(res.settings.secret_key))
    await session.rollback()  # nothing written yet: hold no transaction while the server answers
    outcome = await service.probe_server(spec)
    row = await service.record_probe(session, name=name, outcome=outcome)
    await session.commit()
    return await _read(session, row)
