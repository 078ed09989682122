"""Managing backends (admin API and CLI). Services take the session explicitly and never commit."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.backends import repository
from gateway.backends.base import BackendError, BackendSpec
from gateway.backends.models import Backend, BackendSpeed
from gateway.backends.registry import adapter_class, build_adapter
from gateway.backends.schemas import Auth, BackendCreate, BackendUpdate, BasicAuth, BearerAuth
from gateway.common.crypto import SecretBox
from gateway.common.time import utcnow
from gateway.errors import Conflict, NotFound, ValidationFailed

_PROBE_TIMEOUT = 10.0


def _apply_auth(row: Backend, auth: Auth | None, box: SecretBox) -> None:
    if isinstance(auth, BasicAuth):
        row.auth_kind, row.auth_username, row.auth_secret = "basic", auth.username, box.seal(auth.password)
    elif isinstance(auth, BearerAuth):
        row.auth_kind, row.auth_username, row.auth_secret = "bearer", None, box.seal(auth.token)
    else:
        row.auth_kind, row.auth_username, row.auth_secret = "none", None, None


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", details=[{"field": field, "message": message}])


async def _check_usable(row: Backend, box: SecretBox, *, slots: bool = True) -> None:
    """Refuse what the adapter cannot work with (options of the wrong type or value, more slots than the
    protocol can keep apart) before anything is written, so that a bad row never reaches the pool."""
    cls = adapter_class(row.kind)
    if slots and cls.max_slots is not None and row.slots > cls.max_slots:
        raise _invalid("slots", f"a {row.kind} server runs one generation at a time: at most {cls.max_slots}")
    spec = repository.spec_of(row, box)
    try:
        httpx.URL(spec.url)  # what the schema's pattern lets through but no client can use (a port "abc")
    except httpx.InvalidURL as exc:
        raise _invalid("url", str(exc)[:300]) from None
    try:
        adapter = build_adapter(spec)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise _invalid("options", str(exc)[:300] or type(exc).__name__) from None
    await adapter.aclose()


async def get_backend(session: AsyncSession, name: str) -> Backend:
    row = await repository.get_by_name(session, name)
    if row is None:
        raise NotFound(f"No backend named {name!r}.")
    return row


async def create_backend(session: AsyncSession, *, body: BackendCreate, box: SecretBox) -> Backend:
    if await repository.get_by_name(session, body.name) is not None:
        raise Conflict(f"Backend {body.name!r} already exists.", code="backend_exists")
    row = Backend(
        name=body.name,
        kind=body.kind,
        url=body.url.rstrip("/"),
        slots=body.slots or adapter_class(body.kind).default_slots,
        models=list(dict.fromkeys(body.models)),
        options=body.options,
        enabled=body.enabled,
        timeout_seconds=body.timeout_seconds,
    )
    _apply_auth(row, body.auth, box)
    await _check_usable(row, box)
    session.add(row)
    await session.flush()
    return row


async def update_backend(session: AsyncSession, *, name: str, body: BackendUpdate, box: SecretBox) -> Backend:
    row = await get_backend(session, name)
    given = body.model_fields_set
    if "url" in given and body.url is not None:
        row.url = body.url.rstrip("/")
    if "auth" in given:
        _apply_auth(row, body.auth, box)
    if body.slots is not None:
        row.slots = body.slots
    if body.models is not None:
        row.models = list(dict.fromkeys(body.models))
    if body.options is not None:
        row.options = body.options
    if body.enabled is not None:
        row.enabled = body.enabled
    if body.timeout_seconds is not None:
        row.timeout_seconds = body.timeout_seconds
    if given & {"url", "auth", "slots", "options", "timeout_seconds"}:  # enabling, disabling, models: always fine
        await _check_usable(row, box, slots="slots" in given)
    row.updated_at = utcnow()
    await session.flush()
    return row


async def delete_backend(session: AsyncSession, *, name: str) -> None:
    row = await get_backend(session, name)
    await repository.delete_speeds(session, name)
    await session.delete(row)
    await session.flush()


@dataclass(frozen=True)
class ProbeOutcome:
    healthy: bool
    error: str | None = None
    models: list[str] | None = None
    loaded_model: str | None = None


async def probe_server(spec: BackendSpec) -> ProbeOutcome:
    """Ask the server now: health, the models it has, the one loaded. Call it outside a transaction (it may
    take seconds); an unreachable server is an outcome, not an error (it may be booting)."""
    adapter = build_adapter(spec)
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT):
            result = await adapter.probe()
    except (BackendError, TimeoutError) as exc:
        return ProbeOutcome(healthy=False, error=getattr(exc, "message", None) or "the probe timed out")
    except Exception as exc:  # a surprising answer (not the protocol's shape) is an unhealthy server, not a 500
        return ProbeOutcome(healthy=False, error=f"the probe failed: {type(exc).__name__}: {exc}"[:500])
    finally:
        await adapter.aclose()
    return ProbeOutcome(healthy=True, models=result.models, loaded_model=result.loaded_model)


async def record_probe(session: AsyncSession, *, name: str, outcome: ProbeOutcome) -> Backend:
    row = await get_backend(session, name)
    row.health = "healthy" if outcome.healthy else "unhealthy"
    row.health_error = outcome.error
    if outcome.healthy:
        row.discovered_models = outcome.models
        row.loaded_model = outcome.loaded_model
    row.checked_at = utcnow()
    await session.flush()
    return row


async def speeds_of(session: AsyncSession, names: Sequence[str]) -> dict[str, list[BackendSpeed]]:
    by_backend: dict[str, list[BackendSpeed]] = {name: [] for name in names}
    for speed in await repository.list_speeds(session):
        if speed.backend in by_backend:
            by_backend[speed.backend].append(speed)
    return by_backend
