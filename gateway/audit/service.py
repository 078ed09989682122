"""Recording audit events.

Admin actions are written in the same transaction as the change they describe (no change without its record).
Refusals are queued to ``AuditTrail`` and written in batches by a background task: a flood of bad requests costs
one write per batch, not one write (and, on SQLite, one database lock) per request, and never delays the 4xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection

from gateway.audit.models import AuditEvent
from gateway.db.engine import committed

log = structlog.get_logger("gateway.audit")


@dataclass(frozen=True)
class Actor:
    """Who acted, and from where."""

    name: str
    credential: str | None = None
    ip: str | None = None
    request_id: str | None = None

    @classmethod
    def cli(cls) -> Actor:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown"
        return cls(name=f"cli:{user}"[:100])

    @classmethod
    def of(cls, conn: HTTPConnection, name: str = "anonymous", credential: str | None = None) -> Actor:
        state = conn.scope.get("state", {})
        return cls(
            name=name,
            credential=credential,
            ip=conn.client.host if conn.client else None,
            request_id=state.get("request_id"),
        )


def event(
    actor: Actor,
    action: str,
    *,
    target: str = "",
    outcome: str = "ok",
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    return AuditEvent(
        actor=actor.name,
        credential=actor.credential,
        action=action,
        target=target[:200],
        outcome=outcome,
        reason=reason,
        details=details or {},
        ip=actor.ip,
        request_id=actor.request_id,
    )


def record(session: AsyncSession, actor: Actor, action: str, **fields: Any) -> None:
    """Add an admin action's record to the caller's transaction."""
    session.add(event(actor, action, **fields))


class AuditTrail:
    """A bounded queue of refusal events, flushed in batches. When full, events are dropped and counted."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], *, capacity: int = 10_000) -> None:
        self._sessionmaker = sessionmaker
        self._queue: asyncio.Queue[AuditEvent] = asyncio.Queue(maxsize=capacity)
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-trail")

    def refused(self, actor: Actor, action: str, *, target: str = "", reason: str, **details: Any) -> None:
        try:
            self._queue.put_nowait(
                event(actor, action, target=target, outcome="refused", reason=reason, details=details)
            )
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("audit.dropped", dropped=self.dropped)

    async def flush(self) -> int:
        """Write whatever is queued now; returns how many events were written."""
        batch: list[AuditEvent] = []
        while not self._queue.empty() and len(batch) < 500:
            batch.append(self._queue.get_nowait())
        if not batch:
            return 0

        async def write(session: AsyncSession) -> None:
            session.add_all(batch)

        try:
            await committed(self._sessionmaker, write, give_up_after=30)
        except Exception:
            log.warning("audit.write_failed", events=len(batch), exc_info=True)
            return 0
        return len(batch)

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            self._queue.put_nowait(first)  # flush() takes it with the rest
            await asyncio.sleep(0.2)  # gather a batch
            while await self.flush():
                pass

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while await self.flush():
            pass
