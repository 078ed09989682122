"""SQL for backends and their learned speeds."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from gateway.backends.base import BackendAuth, BackendSpec
from gateway.backends.models import Backend, BackendSpeed
from gateway.backends.registry import adapter_class
from gateway.common.crypto import SecretBox
from gateway.common.time import utcnow


async def get_by_name(session: AsyncSession, name: str) -> Backend | None:
    result = await session.execute(select(Backend).where(Backend.name == name))
    return result.scalar_one_or_none()


async def list_backends(session: AsyncSession, *, enabled_only: bool = False) -> Sequence[Backend]:
    query = select(Backend).order_by(col(Backend.name))
    if enabled_only:
        query = query.where(col(Backend.enabled).is_(True))
    result = await session.execute(query)
    return result.scalars().all()


async def record_health(
    session: AsyncSession,
    name: str,
    *,
    healthy: bool,
    error: str | None,
    models: list[str] | None,
    loaded_model: str | None,
) -> None:
    values: dict[str, object] = {
        "health": "healthy" if healthy else "unhealthy",
        "health_error": error,
        "checked_at": utcnow(),
        "loaded_model": loaded_model,
    }
    if healthy:
        values["discovered_models"] = models
    await session.execute(update(Backend).where(col(Backend.name) == name).values(**values))


async def list_speeds(session: AsyncSession) -> Sequence[BackendSpeed]:
    result = await session.execute(select(BackendSpeed))
    return result.scalars().all()


async def save_speed(session: AsyncSession, backend: str, model: str | None, seconds: float, samples: int) -> None:
    row = await session.get(BackendSpeed, (backend, model or ""))
    if row is None:
        session.add(BackendSpeed(backend=backend, model=model or "", seconds_per_unit=seconds, samples=samples))
    else:
        row.seconds_per_unit, row.samples, row.updated_at = seconds, samples, utcnow()


async def delete_speeds(session: AsyncSession, backend: str) -> None:
    for row in (await session.execute(select(BackendSpeed).where(BackendSpeed.backend == backend))).scalars():
        await session.delete(row)


def spec_of(row: Backend, box: SecretBox) -> BackendSpec:
    """The adapter's view of a row (the secret decrypted; ValueError if it cannot be)."""
    secret = box.open(row.auth_secret) if row.auth_secret else None
    if row.auth_kind == "basic":
        auth = BackendAuth(kind="basic", username=row.auth_username, password=secret)
    elif row.auth_kind == "bearer":
        auth = BackendAuth(kind="bearer", token=secret)
    else:
        auth = BackendAuth()
    # A row written before a kind's slot limit (or by hand) still never gets more than the protocol can use.
    limit = adapter_class(row.kind).max_slots
    slots = row.slots if limit is None else min(row.slots, limit)
    return BackendSpec(
        name=row.name,
        kind=row.kind,
        url=row.url,
        auth=auth,
        slots=slots,
        models=tuple(row.models),
        options=dict(row.options),
        timeout_seconds=row.timeout_seconds,
    )
