"""Delivery use cases: connector instances of a system, delivery targets on requests, outbox rows, signed links.

Secrets: a connector's ``SecretStr`` fields are sealed together (SecretBox, keyed by ``IMAGEGATE_SECRET_KEY``)
into ``connector_instances.secrets`` and never leave the database again except into a connector instance.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets as secrets_module
import time
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from connectors.base import Connector
from gateway.common.crypto import SecretBox
from gateway.common.ids import is_id
from gateway.common.time import utcnow
from gateway.delivery import registry
from gateway.delivery.models import ConnectorInstance, DeliveryAttempt, DeliveryRow, DeliveryStatus
from gateway.errors import Conflict, NotFound, ValidationFailed
from gateway.jobs.models import Job
from gateway.systems.models import System
from gateway.systems.service import Principal

CALLBACK = "callback"  # the connector name of callback_url deliveries (signed with the system's callback secret)
RESERVED = frozenset({CALLBACK, "kinds"})


def _refused(field: str, message: str, code: str = "validation_error") -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", code=code, details=[{"field": field, "message": message}])


def _first_error(exc: ValidationError, prefix: str) -> ValidationFailed:
    error = exc.errors()[0]
    where = ".".join([prefix, *(str(p) for p in error["loc"])])
    return _refused(where, str(error["msg"]))


def _secret_fields(model: type[BaseModel]) -> set[str]:
    found = set()
    for name, info in model.model_fields.items():
        annotation = str(info.annotation)
        if "SecretStr" in annotation:
            found.add(name)
    return found


def split_config(kind: type[Connector], config: BaseModel) -> tuple[dict[str, Any], dict[str, str]]:
    """``(plain settings, secrets)`` of a validated config."""
    secret_names = _secret_fields(kind.Config)
    plain = config.model_dump(mode="json", exclude=secret_names)
    sealed = {
        name: value.get_secret_value() for name in secret_names if isinstance(value := getattr(config, name), SecretStr)
    }
    return plain, sealed


def connector_kind(name: str) -> type[Connector]:
    kind = registry.kind(name)
    if kind is None:
        known = ", ".join(sorted(registry.kinds()))
        raise _refused("kind", f"no connector kind {name!r} (known: {known})")
    return kind


async def create_instance(
    session: AsyncSession,
    *,
    principal: Principal,
    name: str,
    kind_name: str,
    config: dict[str, Any],
    box: SecretBox,
    replace: bool = False,
) -> ConnectorInstance:
    """Add (or with ``replace``, change) a connector instance. On a change, secrets not given are kept."""
    kind = connector_kind(kind_name)
    if name in RESERVED:
        raise _refused("name", f"{name!r} is reserved")
    existing = await get_instance(session, principal.system_id, name)
    if existing is not None and not replace:
        raise Conflict(
            f"A connector named {name!r} exists; PUT /v1/connectors/{name} changes it.", code="connector_exists"
        )
    given = dict(config)
    kept: dict[str, str] = {}
    if existing is not None and existing.kind == kind_name and existing.secrets:
        kept = json.loads(box.open(existing.secrets))
        for field in _secret_fields(kind.Config):
            if field not in given and field in kept:
                given[field] = kept[field]
    try:
        validated = kind.Config.model_validate(given)
    except ValidationError as exc:
        raise _first_error(exc, "config") from None
    plain, sealed = split_config(kind, validated)
    if existing is None:
        row = ConnectorInstance(system_id=principal.system_id, name=name, kind=kind_name, config=plain)
        row.secrets = box.seal(json.dumps(sealed)) if sealed else None
        try:
            async with session.begin_nested():
                session.add(row)
        except IntegrityError:
            raise Conflict(f"A connector named {name!r} exists.", code="connector_exists") from None
        return row
    existing.kind = kind_name
    existing.config = plain
    existing.secrets = box.seal(json.dumps(sealed)) if sealed else None
    existing.updated_at = utcnow()
    existing.circuit_failures = 0
    existing.circuit_open_until = None
    session.add(existing)
    return existing


async def get_instance(session: AsyncSession, system_id: str, name: str) -> ConnectorInstance | None:
    result = await session.execute(
        select(ConnectorInstance).where(ConnectorInstance.system_id == system_id, ConnectorInstance.name == name)
    )
    return result.scalar_one_or_none()


async def instance_named(session: AsyncSession, principal: Principal, name: str) -> ConnectorInstance:
    row = await get_instance(session, principal.system_id, name)
    if row is None:
        raise NotFound(f"No connector named {name!r}.", code="connector_not_found")
    return row


async def list_instances(session: AsyncSession, principal: Principal) -> Sequence[ConnectorInstance]:
    result = await session.execute(
        select(ConnectorInstance)
        .where(ConnectorInstance.system_id == principal.system_id)
        .order_by(col(ConnectorInstance.name))
    )
    return result.scalars().all()


def secret_names(row: ConnectorInstance, box: SecretBox) -> list[str]:
    if not row.secrets:
        return []
    try:
        return sorted(json.loads(box.open(row.secrets)))
    except ValueError:  # sealed under another IMAGEGATE_SECRET_KEY: set them again with PUT
        return []


def build(row: ConnectorInstance, box: SecretBox, http: Any) -> Connector:
    """A fresh connector for one use, with its secrets opened."""
    kind = registry.kind(row.kind)
    if kind is None:
        raise LookupError(f"the connector kind {row.kind!r} is not installed")
    values = dict(row.config)
    if row.secrets:
        values.update(json.loads(box.open(row.secrets)))
    try:
        config = kind.Config.model_validate(values)
    except ValidationError as exc:  # e.g. a plugin upgrade added a required field; never echo the values
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise ValueError(f"the stored config no longer fits the connector: config.{where}: {error['msg']}") from None
    return kind(config, http=http)


# --- delivery targets on requests -------------------------------------------------------------------------


async def check_targets(
    session: AsyncSession, principal: Principal, deliver: Sequence[dict[str, Any]], field: str = "deliver"
) -> list[dict[str, Any]]:
    """Each target names one of the caller's connectors and carries the fields its kind needs; returns them
    normalised (``{"connector": name, ...fields}``)."""
    checked = []
    seen: set[str] = set()
    for index, target in enumerate(deliver):
        name = target.get("connector")
        if not isinstance(name, str) or not name:
            raise _refused(f"{field}.{index}.connector", "name one of your connectors")
        row = await get_instance(session, principal.system_id, name)
        if row is None:
            raise _refused(f"{field}.{index}.connector", f"no connector named {name!r}", code="connector_not_found")
        kind = registry.kind(row.kind)
        if kind is None:
            raise _refused(f"{field}.{index}.connector", f"the connector kind {row.kind!r} is not installed")
        fields = {k: v for k, v in target.items() if k != "connector"}
        try:
            validated = kind.Target.model_validate(fields)
        except ValidationError as exc:
            raise _first_error(exc, f"{field}.{index}") from None
        normal = {"connector": name, **validated.model_dump(mode="json", exclude_none=True)}
        key = json.dumps(normal, sort_keys=True)
        if key in seen:
            raise _refused(f"{field}.{index}", "the same target twice")
        seen.add(key)
        checked.append(normal)
    return checked


async def checked_destinations(
    session: AsyncSession,
    principal: Principal,
    policy: Any,
    deliver: Sequence[BaseModel] | None,
    callback_url: str | None,
    prefix: str = "",
    callback_field: str = "callback_url",
) -> list[dict[str, Any]]:
    """The request's delivery targets, checked (422 naming the field); the callback URL must be one the outbound
    policy allows and the system must have a callback secret to sign with."""
    checked = await check_targets(session, principal, [t.model_dump() for t in deliver or []], f"{prefix}deliver")
    if callback_url is not None:
        from policies.ssrf import UrlRefused, normalize_host, parse_url, resolve_host

        try:
            parsed = parse_url(callback_url, policy)
            if not isinstance(normalize_host(parsed.host), str):  # an address: checked now (names: when sent)
                await resolve_host(parsed.host, parsed.port, policy)
        except UrlRefused as exc:
            raise _refused(callback_field, f"not a URL the gateway may call: {exc}") from None
        await require_callback_secret(session, principal, callback_field)
    return checked


async def require_callback_secret(session: AsyncSession, principal: Principal, field: str = "callback_url") -> None:
    system = await session.get(System, principal.system_id)
    if system is None or not system.callback_secrets:
        message = "create your callback signing secret first: POST /v1/callback-secret (shown once)"
        raise _refused(field, message, code="callback_secret_missing")


def callback_secrets(system: System, box: SecretBox) -> list[str]:
    return list(json.loads(box.open(system.callback_secrets))) if system.callback_secrets else []


async def rotate_callback_secret(session: AsyncSession, principal: Principal, box: SecretBox) -> str:
    """A new signing secret for callbacks; the previous one still signs (a second signature) until the next
    rotation, so receivers can switch over."""
    system = await session.get(System, principal.system_id)
    assert system is not None
    new = "whsec_" + base64.b64encode(secrets_module.token_bytes(32)).decode()
    previous = callback_secrets(system, box)[:1]
    system.callback_secrets = box.seal(json.dumps([new, *previous]))
    session.add(system)
    return new


# --- the outbox ---------------------------------------------------------------------------------------------


async def enqueue_for_job(session: AsyncSession, job: Job) -> list[DeliveryRow]:
    """One outbox row per target of the job (and its callback): call in the job's success transaction."""
    rows = []
    for index, target in enumerate(job.deliver or []):
        name = str(target.get("connector"))
        instance = await get_instance(session, job.system_id, name)
        rows.append(
            DeliveryRow(
                system_id=job.system_id,
                connector_id=instance.id if instance else None,
                connector=name,
                kind=instance.kind if instance else "missing",
                event="job.succeeded",
                job_id=job.id,
                batch_id=job.batch_id,
                target={k: v for k, v in target.items() if k != "connector"},
                idempotency_key=f"{job.id}:{index}:{name}",
                next_attempt_at=utcnow(),
            )
        )
    if job.callback_url:
        rows.append(
            DeliveryRow(
                system_id=job.system_id,
                connector=CALLBACK,
                kind="webhook",
                event="job.succeeded",
                job_id=job.id,
                batch_id=job.batch_id,
                target={"url": job.callback_url},
                idempotency_key=f"{job.id}:callback",
                next_attempt_at=utcnow(),
            )
        )
    session.add_all(rows)
    return rows


def enqueue_failure_callback(session: AsyncSession, job: Job) -> DeliveryRow:
    """The ``job.failed`` callback: call in the transaction that records the failure."""
    row = DeliveryRow(
        system_id=job.system_id,
        connector=CALLBACK,
        kind="webhook",
        event="job.failed",
        job_id=job.id,
        batch_id=job.batch_id,
        target={"url": job.callback_url},
        idempotency_key=f"{job.id}:callback",
        next_attempt_at=utcnow(),
    )
    session.add(row)
    return row


async def get_delivery(session: AsyncSession, principal: Principal, delivery_id: str) -> DeliveryRow:
    row = await session.get(DeliveryRow, delivery_id) if is_id(delivery_id, "dlv") else None
    if row is None or row.system_id != principal.system_id:
        raise NotFound("No such delivery.", code="delivery_not_found")
    return row


async def attempts_of(session: AsyncSession, delivery_id: str) -> Sequence[DeliveryAttempt]:
    result = await session.execute(
        select(DeliveryAttempt).where(DeliveryAttempt.delivery_id == delivery_id).order_by(col(DeliveryAttempt.number))
    )
    return result.scalars().all()


async def list_deliveries(
    session: AsyncSession,
    principal: Principal,
    *,
    status: str | None,
    connector: str | None,
    job_id: str | None,
    batch_id: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[Sequence[DeliveryRow], str | None]:
    query = select(DeliveryRow).where(DeliveryRow.system_id == principal.system_id)
    for column, value in (
        (DeliveryRow.status, status),
        (DeliveryRow.connector, connector),
        (DeliveryRow.job_id, job_id),
        (DeliveryRow.batch_id, batch_id),
    ):
        if value is not None:
            query = query.where(column == value)
    if cursor is not None:
        query = query.where(col(DeliveryRow.id) < cursor)
    rows = (await session.execute(query.order_by(col(DeliveryRow.id).desc()).limit(limit + 1))).scalars().all()
    page = rows[:limit]
    return page, (page[-1].id if len(rows) > limit else None)


async def replay(session: AsyncSession, principal: Principal, delivery_id: str) -> DeliveryRow:
    """Send again: a dead or delivered delivery goes back to pending with a fresh schedule (same idempotency key)."""
    row = await get_delivery(session, principal, delivery_id)
    callback = row.connector_id is None and row.connector == CALLBACK
    instance = None if callback else await get_instance(session, row.system_id, row.connector)
    result = await session.execute(
        update(DeliveryRow)
        .where(
            col(DeliveryRow.id) == row.id,
            col(DeliveryRow.status).in_([DeliveryStatus.dead.value, DeliveryStatus.delivered.value]),
        )
        .values(
            status=DeliveryStatus.pending.value,
            attempts=0,  # a fresh schedule; the attempt log keeps counting
            next_attempt_at=utcnow(),
            lease_token=None,
            lease_expires_at=None,
            delivered_at=None,
            last_error=None,
            connector_id=instance.id if instance else row.connector_id,
        )
    )
    if getattr(result, "rowcount", 0) != 1:
        raise Conflict("The delivery is already on its way.", code="delivery_in_progress")
    await session.refresh(row)
    return row


# --- signed download links ----------------------------------------------------------------------------------


class LinkSigner:
    """``/files/{asset_id}?expires=..&signature=..``: an asset link that works without a token until it expires."""

    def __init__(self, secret_key: str) -> None:
        self._key = hmac.new(secret_key.encode(), b"imagegate/asset-link/v1", hashlib.sha256).digest()

    def signature(self, asset_id: str, expires: int) -> str:
        return hmac.new(self._key, f"{asset_id}.{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, base: str, asset_id: str, ttl_seconds: int) -> str:
        expires = int(time.time()) + ttl_seconds
        return f"{base.rstrip('/')}/files/{asset_id}?expires={expires}&signature={self.signature(asset_id, expires)}"

    def valid(self, asset_id: str, expires: int, signature: str) -> bool:
        return expires >= int(time.time()) and hmac.compare_digest(self.signature(asset_id, expires), signature)
