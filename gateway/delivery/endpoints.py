"""Connectors (a system's delivery targets), deliveries (the outbox, with attempts and replay), callback secrets
and the signed download links sent to targets that take a link."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.convertors import StringConvertor, register_url_convertor

from gateway.assets.models import Asset
from gateway.audit.service import Actor, record
from gateway.auth.dependencies import Authenticator
from gateway.common.ids import is_id
from gateway.delivery import registry, service
from gateway.delivery.models import ConnectorInstance, DeliveryAttempt, DeliveryRow, DeliveryStatus
from gateway.deps import ReadSessionDep, ResourcesDep, SessionDep
from gateway.errors import NotFound, error_responses
from gateway.systems.service import Principal
from policies.scopes import Scope


class _ConnectorName(StringConvertor):
    """A path segment that is not `kinds`: `/v1/connectors/kinds` is the list of kinds, whatever the method."""

    regex = "(?!kinds(?:/|$))[^/]+"


register_url_convertor("connector_name", _ConnectorName())

router = APIRouter(tags=["delivery"])
files_router = APIRouter(tags=["delivery"])
Writer = Annotated[Principal, Depends(Authenticator(any_of={Scope.connectors_write}))]
Reader = Annotated[Principal, Depends(Authenticator(any_of={Scope.connectors_write, Scope.generate, Scope.batch}))]
Sender = Annotated[Principal, Depends(Authenticator(any_of={Scope.generate, Scope.batch}))]
Name = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*$")]


class KindRead(BaseModel):
    kind: str
    capability: str
    title: str
    config_schema: dict[str, Any] = Field(description="JSON schema of `config` (what the admin console renders)")
    target_schema: dict[str, Any] = Field(description="JSON schema of the fields a `deliver` target adds")
    secret_fields: list[str] = Field(description="Config fields that are secrets: stored encrypted, never returned")


class KindList(BaseModel):
    items: list[KindRead]


class ConnectorCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*$")]
    kind: Annotated[str, Field(min_length=1, max_length=64)]
    config: dict[str, Any] = Field(default_factory=dict)


class ConnectorReplace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Annotated[str, Field(min_length=1, max_length=64)]
    config: dict[str, Any] = Field(
        default_factory=dict, description="The whole configuration; secret fields left out keep their stored value"
    )


class Circuit(BaseModel):
    failures: int = Field(description="Failed attempts in a row")
    open_until: datetime | None = Field(description="No attempts until then (the target looked down)")


class ConnectorRead(BaseModel):
    name: str
    kind: str
    capability: str | None
    config: dict[str, Any] = Field(description="The settings without the secrets")
    secrets: list[str] = Field(description="Names of the secrets that are set (their values are never returned)")
    circuit: Circuit
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: ConnectorInstance, secrets: list[str]) -> ConnectorRead:
        kind = registry.kind(row.kind)
        return cls(
            name=row.name,
            kind=row.kind,
            capability=kind.capability if kind else None,
            config=dict(row.config),
            secrets=secrets,
            circuit=Circuit(failures=row.circuit_failures, open_until=row.circuit_open_until),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


class ConnectorList(BaseModel):
    items: list[ConnectorRead]


class TestResult(BaseModel):
    ok: bool
    message: str
    status_code: int | None = None


class AttemptRead(BaseModel):
    number: int
    outcome: str = Field(description="delivered, retry (another attempt is scheduled) or dead")
    status_code: int | None = Field(description="The receiver's HTTP status, if it answered")
    error: str | None
    external_id: str | None
    duration_ms: int
    started_at: datetime

    @classmethod
    def of(cls, row: DeliveryAttempt) -> AttemptRead:
        return cls.model_validate(row, from_attributes=True)


class DeliveryRead(BaseModel):
    id: str
    status: DeliveryStatus
    connector: str
    kind: str
    event: str
    job_id: str | None
    batch_id: str | None
    target: dict[str, Any]
    idempotency_key: str = Field(description="The same on every attempt; receivers use it to drop duplicates")
    attempts: int
    next_attempt_at: datetime | None = Field(description="When the next attempt is due (pending deliveries)")
    external_id: str | None = Field(description="The receiver's id of what was delivered")
    external_url: str | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: list[AttemptRead] | None = Field(default=None, description="Every attempt (one delivery only)")

    @classmethod
    def of(cls, row: DeliveryRow, attempts: list[DeliveryAttempt] | None = None) -> DeliveryRead:
        return cls(
            id=row.id,
            status=DeliveryStatus(row.status),
            connector=row.connector,
            kind=row.kind,
            event=row.event,
            job_id=row.job_id,
            batch_id=row.batch_id,
            target=dict(row.target),
            idempotency_key=row.idempotency_key,
            attempts=row.attempts,
            next_attempt_at=row.next_attempt_at if row.status == DeliveryStatus.pending else None,
            external_id=row.external_id,
            external_url=row.external_url,
            last_error=row.last_error,
            created_at=row.created_at,
            delivered_at=row.delivered_at,
            attempt_log=[AttemptRead.of(a) for a in attempts] if attempts is not None else None,
        )


class DeliveryList(BaseModel):
    items: list[DeliveryRead]
    next_cursor: str | None


class CallbackSecret(BaseModel):
    secret: str = Field(description="`whsec_...`: verify `webhook-signature` with it (shown once)")
    previous_still_signs: bool = Field(description="Callbacks carry a second signature with the previous secret")


@router.get("/connectors/kinds", response_model=KindList)  # `{name:connector_name}` never matches `kinds`
async def list_kinds(principal: Reader) -> KindList:
    """Every installed connector kind with the JSON schemas of its config and of its per-delivery target."""
    items = []
    for name, kind in sorted(registry.kinds().items()):
        items.append(
            KindRead(
                kind=name,
                capability=kind.capability,
                title=kind.title or name,
                config_schema=kind.Config.model_json_schema(),
                target_schema=kind.Target.model_json_schema(),
                secret_fields=sorted(service._secret_fields(kind.Config)),
            )
        )
    return KindList(items=items)


@router.get("/connectors", response_model=ConnectorList)
async def list_connectors(principal: Reader, session: ReadSessionDep, res: ResourcesDep) -> ConnectorList:
    """Your connectors (secrets never shown)."""
    rows = await service.list_instances(session, principal)
    return ConnectorList(items=[ConnectorRead.of(r, service.secret_names(r, res.secret_box)) for r in rows])


@router.post(
    "/connectors", status_code=status.HTTP_201_CREATED, response_model=ConnectorRead, responses=error_responses(409)
)
async def create_connector(
    body: ConnectorCreate, request: Request, principal: Writer, session: SessionDep, res: ResourcesDep
) -> ConnectorRead:
    """Add a connector: its kind and config (checked against the kind's schema; secrets stored encrypted)."""
    row = await service.create_instance(
        session, principal=principal, name=body.name, kind_name=body.kind, config=body.config, box=res.secret_box
    )
    actor = Actor.of(request, principal.system_name, principal.credential)
    record(session, actor, "connector.created", target=f"connector:{principal.system_name}/{body.name}")
    await session.commit()
    return ConnectorRead.of(row, service.secret_names(row, res.secret_box))


@router.get("/connectors/{name:connector_name}", response_model=ConnectorRead, responses=error_responses(404))
async def get_connector(name: Name, principal: Reader, session: ReadSessionDep, res: ResourcesDep) -> ConnectorRead:
    row = await service.instance_named(session, principal, name)
    return ConnectorRead.of(row, service.secret_names(row, res.secret_box))


@router.put("/connectors/{name:connector_name}", response_model=ConnectorRead, responses=error_responses(404))
async def replace_connector(
    name: Name, body: ConnectorReplace, request: Request, principal: Writer, session: SessionDep, res: ResourcesDep
) -> ConnectorRead:
    """Change a connector's config (secrets left out keep their values); its circuit is closed again."""
    await service.instance_named(session, principal, name)
    row = await service.create_instance(
        session,
        principal=principal,
        name=name,
        kind_name=body.kind,
        config=body.config,
        box=res.secret_box,
        replace=True,
    )
    actor = Actor.of(request, principal.system_name, principal.credential)
    record(session, actor, "connector.changed", target=f"connector:{principal.system_name}/{name}")
    await session.commit()
    return ConnectorRead.of(row, service.secret_names(row, res.secret_box))


@router.delete(
    "/connectors/{name:connector_name}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(404),
)
async def delete_connector(name: Name, request: Request, principal: Writer, session: SessionDep) -> Response:
    """Remove a connector (its pending deliveries become dead when their turn comes)."""
    row = await service.instance_named(session, principal, name)
    await session.delete(row)
    actor = Actor.of(request, principal.system_name, principal.credential)
    record(session, actor, "connector.removed", target=f"connector:{principal.system_name}/{name}")
    await session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/connectors/{name:connector_name}/test", response_model=TestResult, responses=error_responses(404))
async def test_connector(name: Name, principal: Writer, session: ReadSessionDep, res: ResourcesDep) -> TestResult:
    """Run the connector's connection test against its target (nothing is delivered)."""
    from connectors.base import DeliveryError
    from gateway.common.outbound import FetchFailed
    from policies.ssrf import UrlRefused

    row = await service.instance_named(session, principal, name)
    try:
        connector = service.build(row, res.secret_box, res.outbound)
        async with asyncio.timeout(res.settings.delivery_attempt_timeout_seconds):
            message = await connector.test_connection()
    except DeliveryError as exc:
        return TestResult(ok=False, message=exc.message, status_code=exc.status)
    except UrlRefused as exc:
        return TestResult(ok=False, message=f"the target URL is not allowed: {exc.message}")
    except FetchFailed as exc:
        return TestResult(ok=False, message=exc.message, status_code=exc.status_code)
    except (LookupError, ValueError) as exc:  # messages of our own making: no configuration values in them
        return TestResult(ok=False, message=str(exc)[:500])
    except TimeoutError:
        return TestResult(ok=False, message="the target did not answer in time")
    except Exception as exc:  # a plugin's bug: named, not echoed (its text may carry configuration values)
        return TestResult(ok=False, message=f"the connector failed ({type(exc).__name__})")
    return TestResult(ok=True, message=message)


@router.get("/deliveries", response_model=DeliveryList)
async def list_deliveries(
    principal: Reader,
    session: ReadSessionDep,
    status_filter: Annotated[DeliveryStatus | None, Query(alias="status")] = None,
    connector: Annotated[str | None, Query(max_length=64)] = None,
    job: Annotated[str | None, Query(max_length=40, pattern=r"^job_[0-9a-f]+$")] = None,
    batch: Annotated[str | None, Query(max_length=40, pattern=r"^bat_[0-9a-f]+$")] = None,
    cursor: Annotated[str | None, Query(max_length=40, pattern=r"^dlv_[0-9a-f]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> DeliveryList:
    """Your deliveries, newest first; filter by status (e.g. `dead`), connector, job or batch."""
    rows, next_cursor = await service.list_deliveries(
        session,
        principal,
        status=status_filter.value if status_filter else None,
        connector=connector,
        job_id=job,
        batch_id=batch,
        cursor=cursor,
        limit=limit,
    )
    return DeliveryList(items=[DeliveryRead.of(r) for r in rows], next_cursor=next_cursor)


@router.get("/deliveries/{delivery_id}", response_model=DeliveryRead, responses=error_responses(404))
async def get_delivery(delivery_id: str, principal: Reader, session: ReadSessionDep) -> DeliveryRead:
    """One delivery with every attempt (status code, error, duration)."""
    row = await service.get_delivery(session, principal, delivery_id)
    return DeliveryRead.of(row, list(await service.attempts_of(session, row.id)))


@router.post(
    "/deliveries/{delivery_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeliveryRead,
    responses=error_responses(404, 409),
)
async def replay_delivery(
    delivery_id: str, request: Request, principal: Reader, session: SessionDep, res: ResourcesDep
) -> DeliveryRead:
    """Deliver again (a dead one too): a fresh schedule, the same idempotency key."""
    row = await service.replay(session, principal, delivery_id)
    actor = Actor.of(request, principal.system_name, principal.credential)
    record(session, actor, "delivery.replayed", target=f"delivery:{row.id}")
    await session.commit()
    if res.relay is not None:
        res.relay.wake()
    return DeliveryRead.of(row, list(await service.attempts_of(session, row.id)))


@router.post("/callback-secret", status_code=status.HTTP_201_CREATED, response_model=CallbackSecret)
async def rotate_callback_secret(
    request: Request, principal: Sender, session: SessionDep, res: ResourcesDep
) -> CallbackSecret:
    """A new secret for the signatures on your `callback_url` webhooks (shown once). The previous secret keeps
    signing too (a second signature) until the next rotation, so you can switch receivers over."""
    had = False
    from gateway.systems.models import System

    system = await session.get(System, principal.system_id)
    if system is not None and system.callback_secrets:
        had = True
    secret = await service.rotate_callback_secret(session, principal, res.secret_box)
    actor = Actor.of(request, principal.system_name, principal.credential)
    record(session, actor, "callback_secret.rotated", target=f"system:{principal.system_name}")
    await session.commit()
    return CallbackSecret(secret=secret, previous_still_signs=had)


@files_router.get(
    "/files/{asset_id}",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}, **error_responses(404)},
)
async def signed_file(
    asset_id: str,
    session: ReadSessionDep,
    res: ResourcesDep,
    expires: Annotated[int, Query(ge=0, le=2**40)],
    signature: Annotated[str, Query(min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$")],
) -> FileResponse:
    """An image by its signed, expiring link (sent to targets that take a link: no token needed)."""
    signer = service.LinkSigner(res.settings.secret_key)
    asset = (
        await session.get(Asset, asset_id)
        if is_id(asset_id, "ast") and signer.valid(asset_id, expires, signature)
        else None
    )
    path = res.store.path_for(asset.sha256, asset.format) if asset else None
    if asset is None or path is None or not path.is_file():
        raise NotFound("No such file, or the link has expired.", code="file_not_found")
    return FileResponse(
        path,
        media_type=asset.content_type,
        headers={"ETag": f'"{asset.sha256}"', "Cache-Control": "private, max-age=3600"},
        filename=f"{asset.id}.{path.suffix.lstrip('.')}",
        content_disposition_type="inline",
    )
