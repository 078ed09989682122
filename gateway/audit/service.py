"""Recording audit events.

Admin actions are written in the same transaction as the change they describe (no change without its record).
Refusals are queued to ``AuditTrail`` and written in batches by a background task: a flood of bad requests costs
one write per batch, not one write (and, on SQLite, one database lock) per request, and never delays the 4xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import re
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection

from gateway.audit.models import AuditEvent
from gateway.db.engine import committed
from gateway.errors import DATABASE_UNAVAILABLE

log = structlog.get_logger("gateway.audit")
_AWAY: tuple[type[BaseException], ...] = (TimeoutError, *DATABASE_UNAVAILABLE)  # the database, not the row


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


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _clean(value: str | None, limit: int) -> str | None:
    """Fit a value to its column: control characters (a NUL in a path) replaced, cut to the column's length."""
    if value is None:
        return None
    return _CONTROL.sub("?", value)[:limit]


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
        actor=_clean(actor.name, 100) or "",
        credential=_clean(actor.credential, 40),
        action=action,
        target=_clean(target, 200) or "",
        outcome=outcome,
        reason=_clean(reason, 1000),
        details=details or {},
        ip=_clean(actor.ip, 64),
        request_id=_clean(actor.request_id, 128),
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

        try:
            await self._write(batch)
            return len(batch)
        except _AWAY:
            log.warning("audit.write_failed", events=len(batch), exc_info=True)
            self._requeue(batch)  # the database is away: keep them for the next try (row by row would only wait)
            return 0
        except Exception:
            log.warning("audit.batch_refused", events=len(batch), exc_info=True)
        # One row the database refuses must not take the rest of the batch with it.
        written = 0
        for one in batch:
            try:
                await self._write([one])
                written += 1
            except _AWAY:
                self._requeue(batch[written:])
                break
            except Exception:
                log.warning("audit.row_refused", action=one.action, exc_info=True)
        return written

    def _requeue(self, events: list[AuditEvent]) -> None:
        for one in events:
            try:
                self._queue.put_nowait(one)
            except asyncio.QueueFull:
                self.dropped += 1

    async def _write(self, events: list[AuditEvent]) -> None:
        async def write(session: AsyncSession) -> None:
            session.add_all([AuditEvent(**e.model_dump()) for e in events])  # fresh rows: a failed try leaves none

        await committed(self._sessionmaker, write, give_up_after=10)

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            self._queue.put_nowait(first)  # flush() takes it with the rest
            await asyncio.sleep(0.2)  # gather a batch
            while await self.flush():
                pass
            if not self._queue.empty():  # the database is away: try again later, not in a tight loop
                await asyncio.sleep(5)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while await self.flush():
            pass
