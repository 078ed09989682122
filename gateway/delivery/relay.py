"""The relay: delivers outbox rows through their connectors, at least once, never two relays on one row.

* Claim: rows that are due (``pending`` and ``next_attempt_at`` passed, or ``delivering`` with an expired lease: a
  relay died holding it) move to ``delivering`` under a fresh lease token. On PostgreSQL one statement with
  ``FOR UPDATE SKIP LOCKED``; on SQLite (one writer at a time) a conditional UPDATE per row.
* Attempt: one call of the connector's ``deliver`` with the row's idempotency key, bounded in time. Every outcome
  is written only if the row still holds this relay's lease (a relay that lost it changes nothing).
* Outcome: delivered; or a retryable failure -> the next attempt after the schedule's delay (jittered, never before
  the receiver's ``Retry-After``), ``dead`` once the schedule is spent; a permanent failure -> ``dead`` at once.
* Circuit: after ``delivery_circuit_failures`` failures in a row a connector instance is left alone for
  ``delivery_circuit_seconds``: its due rows wait (no attempt is spent) instead of hammering a target that is down.
* Batches: a batch with a ``callback_url`` gets its ``batch.completed`` row once all its jobs have finished (a
  sweep; the row's unique idempotency key makes it once).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import and_, exists, func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from connectors.base import DeliveredAsset, Delivery, DeliveryError, PermanentError, RetryableError
from gateway.assets.models import Asset
from gateway.common.outbound import FetchFailed
from gateway.common.time import utcnow
from gateway.db.engine import committed
from gateway.delivery import service
from gateway.delivery.models import ConnectorInstance, DeliveryAttempt, DeliveryRow, DeliveryStatus
from gateway.jobs.models import Job, JobStatus
from gateway.recipes.models import Batch
from gateway.systems.models import System
from policies.ssrf import UrlRefused

if TYPE_CHECKING:
    from gateway.resources import Resources

log = structlog.get_logger("gateway.delivery")
_PENDING = DeliveryStatus.pending.value
_DELIVERING = DeliveryStatus.delivering.value


def next_delay(schedule: list[float], attempts: int, retry_after: float | None) -> float | None:
    """Seconds until the next attempt after ``attempts`` attempts failed, or None when the schedule is spent."""
    if attempts > len(schedule):
        return None
    base = schedule[attempts - 1]
    delay = base * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not crypto
    # A receiver's Retry-After is honoured up to a day (or the schedule's longest wait, if longer).
    ceiling = max([86400.0, *schedule])
    return min(max(delay, retry_after or 0.0), ceiling)


class Relay:
    def __init__(self, res: Resources) -> None:
        self.res = res
        self._task: asyncio.Task[None] | None = None
        self._active: dict[asyncio.Task[None], tuple[str, str]] = {}  # attempt task -> (row id, lease)
        self._wake = asyncio.Event()
        self._stopping = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="delivery-relay")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop claiming, let attempts on their way finish for up to ``grace`` seconds, then cancel the rest and
        hand their rows back (pending now, the attempt uncounted) so that another relay need not wait for the
        lease to run out. A receiver may have seen a cancelled attempt: the repeat carries the same key."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._active:
            await asyncio.wait(list(self._active), timeout=grace)
        unfinished = {task: lease for task, lease in self._active.items() if not task.done()}
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        leases = [lease for task, lease in unfinished.items() if task.cancelled()]
        if leases:
            with contextlib.suppress(Exception):  # if the database is gone too, the leases expire: retried later
                await self._release(leases, utcnow(), uncount=True)
                log.info("delivery.handed_back", count=len(leases))

    async def _loop(self) -> None:
        settings = self.res.settings
        while not self._stopping:
            with contextlib.suppress(Exception):
                await self.sweep_batches()  # its own failure must not stop deliveries
            try:
                free = settings.delivery_concurrency - len(self._active)
                claimed = await self.claim(free) if free > 0 else []
                for row_id, lease in claimed:
                    task = asyncio.create_task(self.attempt(row_id, lease))
                    self._active[task] = (row_id, lease)
                    task.add_done_callback(self._done)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("delivery.relay_error", exc_info=True)
                claimed = []
            if not claimed:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=settings.delivery_poll_seconds)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._active.pop(task, None)

    async def run_once(self) -> int:
        """Claim and deliver what is due now (tests, CLI); returns how many attempts were made."""
        await self.sweep_batches()
        claimed = await self.claim(self.res.settings.delivery_concurrency)
        await asyncio.gather(*(self.attempt(row_id, lease) for row_id, lease in claimed))
        return len(claimed)

    # --- claiming -----------------------------------------------------------------------------------------

    async def claim(self, limit: int) -> list[tuple[str, str]]:
        async def work(session: AsyncSession) -> list[tuple[str, str]]:
            return await claim_due(session, limit, self.res.settings.delivery_lease_seconds)

        return await committed(self.res.sessionmaker, work)

    # --- one attempt --------------------------------------------------------------------------------------

    async def attempt(self, row_id: str, lease: str) -> None:
        """One attempt; any failure of the relay itself is recorded as a retry (the schedule still ends it)."""
        res = self.res
        started_at = utcnow()
        started = time.monotonic()
        try:
            async with res.read_sessionmaker() as session:
                row = await session.get(DeliveryRow, row_id)
                if row is None or row.lease_token != lease:
                    return
                instance = await session.get(ConnectorInstance, row.connector_id) if row.connector_id else None
                system = await session.get(System, row.system_id)
                delivery, connector_error = await self._prepare(session, row, instance, system)
                if row.attempts > len(res.settings.retry_schedule) + 1:  # earlier attempts died unrecorded
                    connector_error = PermanentError(f"gave up after {row.attempts - 1} attempts")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("delivery.prepare_failed", delivery_id=row_id, exc_info=True)
            await self._record(row_id, lease, None, RetryableError("the delivery could not be prepared"), 0, started_at)
            return
        now = utcnow()
        if instance is not None and instance.circuit_open_until is not None and instance.circuit_open_until > now:
            reopen = instance.circuit_open_until + timedelta(seconds=random.uniform(0, 5))  # noqa: S311
            await self._release([(row_id, lease)], reopen)
            return
        outcome: Any
        heartbeat = asyncio.create_task(self._heartbeat(row_id, lease))
        try:
            if connector_error is not None:
                raise connector_error
            assert delivery is not None
            connector = self._connector(row, instance, system)
            async with asyncio.timeout(res.settings.delivery_attempt_timeout_seconds):
                outcome = await connector.deliver(delivery)
        except DeliveryError as exc:
            outcome = exc
        except UrlRefused as exc:
            outcome = PermanentError(f"the target URL is not allowed: {exc}")
        except (FetchFailed, TimeoutError) as exc:
            outcome = RetryableError(f"the target could not be reached: {getattr(exc, 'message', 'timed out')}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a connector's bug: retried (the schedule ends it)
            # Only the type: an exception's text may carry configuration values (secrets among them).
            log.warning("delivery.connector_error", delivery_id=row_id, error=type(exc).__name__)
            outcome = RetryableError(f"the connector failed ({type(exc).__name__})")
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
        elapsed = int((time.monotonic() - started) * 1000)
        await self._record(row_id, lease, row.connector_id, outcome, elapsed, started_at)

    async def _heartbeat(self, row_id: str, lease: str) -> None:
        """Keep the lease while a slow attempt runs, so that no other relay takes the row meanwhile."""
        seconds = self.res.settings.delivery_lease_seconds
        while True:
            await asyncio.sleep(max(0.05, seconds / 3))

            async def renew(session: AsyncSession) -> None:
                await session.execute(
                    update(DeliveryRow)
                    .where(col(DeliveryRow.id) == row_id, col(DeliveryRow.lease_token) == lease)
                    .values(lease_expires_at=utcnow() + timedelta(seconds=seconds))
                )

            with contextlib.suppress(Exception):
                await committed(self.res.sessionmaker, renew)

    async def _prepare(
        self, session: AsyncSession, row: DeliveryRow, instance: ConnectorInstance | None, system: System | None
    ) -> tuple[Delivery | None, DeliveryError | None]:
        if not _is_callback(row) and instance is None:
            return None, PermanentError(f"the connector {row.connector!r} was removed")
        if _is_callback(row) and (system is None or not system.callback_secrets):
            return None, PermanentError("the system has no callback signing secret")
        jobs: list[Job] = []
        metadata: dict[str, Any] = {}
        if row.event == "batch.completed" and row.batch_id:
            batch = await session.get(Batch, row.batch_id)
            query = select(Job).where(col(Job.batch_id) == row.batch_id).order_by(col(Job.batch_index))
            every = list((await session.execute(query)).scalars().all())
            jobs = [j for j in every if j.status == JobStatus.succeeded]
            if batch is not None:
                metadata.update(recipe=batch.recipe, record_id=batch.record_id)
            metadata["status"] = "succeeded" if len(jobs) == len(every) else ("failed" if not jobs else "partial")
        elif row.job_id:
            job = await session.get(Job, row.job_id)
            if job is not None and row.event == "job.failed":
                metadata["error"] = {"code": job.error_code, "message": job.error_message}
            elif job is not None:
                jobs = [job]
                metadata.update(prompt=job.prompt, template=job.template_name, role=job.batch_role)
                if job.batch_id:
                    batch = await session.get(Batch, job.batch_id)
                    metadata["record_id"] = batch.record_id if batch else None
        assets = await self._assets(session, jobs, metadata.get("record_id"))
        return (
            Delivery(
                id=row.id,
                idempotency_key=row.idempotency_key,
                event=row.event if row.event in ("batch.completed", "job.failed") else "job.succeeded",  # type: ignore[arg-type]
                system=system.name if system else "",
                assets=assets,
                target=dict(row.target),
                attempt=row.attempts + 1,
                job_id=row.job_id,
                batch_id=row.batch_id,
                external_id=row.external_id,
                metadata=metadata,
            ),
            None,
        )

    async def _assets(self, session: AsyncSession, jobs: list[Job], record_id: Any) -> list[DeliveredAsset]:
        if not jobs:
            return []
        by_job = {j.id: j for j in jobs}
        result = await session.execute(
            select(Asset).where(col(Asset.job_id).in_(list(by_job))).order_by(col(Asset.job_id), col(Asset.index))
        )
        found = result.scalars().all()
        counts: dict[str, int] = {}
        for asset in found:
            counts[asset.job_id] = counts.get(asset.job_id, 0) + 1
        settings = self.res.settings
        base = settings.public_url or "http://127.0.0.1:8000"
        store = self.res.store
        signer = service.LinkSigner(settings.secret_key)
        out = []
        for asset in sorted(found, key=lambda a: (jobs.index(by_job[a.job_id]), a.index)):
            job = by_job[asset.job_id]
            stem = _safe(str(record_id)) if record_id else job.id
            name = f"{stem}_{_safe(job.batch_name or 'image')}"
            if counts[asset.job_id] > 1:
                name += f"_{asset.index + 1}"

            def reader(sha: str = asset.sha256, fmt: str = asset.format) -> Any:
                return store.read(sha, fmt)

            out.append(
                DeliveredAsset(
                    id=asset.id,
                    job_id=asset.job_id,
                    index=asset.index,
                    format=asset.format,
                    content_type=asset.content_type,
                    width=asset.width,
                    height=asset.height,
                    sha256=asset.sha256,
                    size=asset.bytes,
                    seed=asset.seed,
                    url=signer.url(base, asset.id, settings.delivery_link_ttl_seconds),
                    filename=f"{name}.{asset.format}",
                    tags=list(asset.tags or []),
                    caption=asset.caption,
                    read=reader,
                )
            )
        return out

    def _connector(self, row: DeliveryRow, instance: ConnectorInstance | None, system: System | None) -> Any:
        box = self.res.secret_box
        if _is_callback(row):
            from connectors.webhook import StandardWebhook, WebhookConfig

            assert system is not None
            keys = service.callback_secrets(system, box)
            config = WebhookConfig(
                url=row.target["url"], secret=keys[0], previous_secret=keys[1] if len(keys) > 1 else None
            )
            return StandardWebhook(config, http=self.res.outbound)
        assert instance is not None
        return service.build(instance, box, self.res.outbound)

    # --- writing outcomes ---------------------------------------------------------------------------------

    async def _release(self, leases: list[tuple[str, str]], until: Any, *, uncount: bool = False) -> None:
        """Put rows still under these leases back to pending, due at ``until`` (``uncount``: their attempt is not
        spent). A row whose lease was lost meanwhile is left to the relay that holds it."""
        values: dict[str, Any] = {
            "status": _PENDING,
            "next_attempt_at": until,
            "lease_token": None,
            "lease_expires_at": None,
        }
        if uncount:
            values["attempts"] = col(DeliveryRow.attempts) - 1

        async def work(session: AsyncSession) -> None:
            for row_id, lease in leases:
                await session.execute(
                    update(DeliveryRow)
                    .where(
                        col(DeliveryRow.id) == row_id,
                        col(DeliveryRow.lease_token) == lease,
                        col(DeliveryRow.status) == _DELIVERING,
                    )
                    .values(**values)
                )

        await committed(self.res.sessionmaker, work)

    async def _record(
        self, row_id: str, lease: str, connector_id: str | None, outcome: Any, elapsed_ms: int, started_at: Any
    ) -> None:
        settings = self.res.settings

        async def work(session: AsyncSession) -> str | None:
            row = await session.get(DeliveryRow, row_id, populate_existing=True)
            if row is None or row.lease_token != lease or row.status != _DELIVERING:
                return None  # the lease was lost (expired and taken): the other relay's outcome counts
            number = row.attempts  # counted when it was claimed: a relay that dies mid-attempt still spends one
            logged = await session.scalar(
                select(func.count()).select_from(DeliveryAttempt).where(col(DeliveryAttempt.delivery_id) == row_id)
            )
            now = utcnow()
            values: dict[str, Any] = {"lease_token": None, "lease_expires_at": None}
            attempt = DeliveryAttempt(
                delivery_id=row_id,
                number=(logged or 0) + 1,
                outcome="delivered",
                duration_ms=elapsed_ms,
                started_at=started_at,
            )
            if isinstance(outcome, DeliveryError):
                attempt.status_code = outcome.status
                attempt.error = outcome.message[:2000]
                delay = next_delay(settings.retry_schedule, number, outcome.retry_after) if outcome.retryable else None
                if delay is None:
                    values.update(status=DeliveryStatus.dead.value, last_error=attempt.error)
                    attempt.outcome = "dead"
                else:
                    values.update(
                        status=_PENDING, last_error=attempt.error, next_attempt_at=now + timedelta(seconds=delay)
                    )
                    attempt.outcome = "retry"
                failed = outcome.retryable
            else:
                values.update(
                    status=DeliveryStatus.delivered.value,
                    delivered_at=now,
                    external_id=outcome.external_id,
                    external_url=outcome.url,
                    last_error=None,
                )
                attempt.external_id = outcome.external_id
                failed = False
            result = await session.execute(
                update(DeliveryRow)
                .where(col(DeliveryRow.id) == row_id, col(DeliveryRow.lease_token) == lease)
                .values(**values)
            )
            if getattr(result, "rowcount", 0) != 1:
                return None
            session.add(attempt)
            await _circuit(session, connector_id, failed=failed, settings=settings)  # only under our lease
            return attempt.outcome

        result = await committed(self.res.sessionmaker, work)
        if result is not None:
            log.info("delivery.attempt", delivery_id=row_id, outcome=result, ms=elapsed_ms)

    # --- batches --------------------------------------------------------------------------------------------

    async def sweep_batches(self, limit: int = 50) -> int:
        """Add the ``batch.completed`` row of every finished batch that has a callback and none yet."""

        async with self.res.read_sessionmaker() as read:  # looks first: writes only when there is work
            if not await read.scalar(select(func.count()).select_from(_completed_batches(1).subquery())):
                return 0

        async def work(session: AsyncSession) -> int:
            unfinished = exists().where(
                col(Job.batch_id) == Batch.id, col(Job.status).in_([JobStatus.queued.value, JobStatus.running.value])
            )
            sent = exists().where(col(DeliveryRow.batch_id) == Batch.id, col(DeliveryRow.event) == "batch.completed")
            query = (
                select(Batch)
                .where(col(Batch.callback_url).is_not(None), ~unfinished, ~sent)
                .order_by(col(Batch.id))
                .limit(limit)
            )
            added = 0
            for batch in (await session.execute(query)).scalars().all():
                try:
                    async with session.begin_nested():
                        session.add(
                            DeliveryRow(
                                system_id=batch.system_id,
                                connector=service.CALLBACK,
                                kind="webhook",
                                event="batch.completed",
                                batch_id=batch.id,
                                target={"url": batch.callback_url},
                                idempotency_key=f"{batch.id}:callback",
                                next_attempt_at=utcnow(),
                            )
                        )
                    added += 1
                except IntegrityError:  # another relay added it at the same moment
                    continue
            return added

        return await committed(self.res.sessionmaker, work)


def _completed_batches(limit: int) -> Any:
    unfinished = exists().where(
        col(Job.batch_id) == Batch.id, col(Job.status).in_([JobStatus.queued.value, JobStatus.running.value])
    )
    sent = exists().where(col(DeliveryRow.batch_id) == Batch.id, col(DeliveryRow.event) == "batch.completed")
    return (
        select(Batch.id)
        .where(col(Batch.callback_url).is_not(None), ~unfinished, ~sent)
        .order_by(col(Batch.id))
        .limit(limit)
    )


def _circuit_open(now: Any) -> Any:
    """The row's connector has an open circuit: leave it where it is (no claim, no attempt spent)."""
    return exists().where(
        col(ConnectorInstance.id) == DeliveryRow.connector_id, col(ConnectorInstance.circuit_open_until) > now
    )


async def claim_due(session: AsyncSession, limit: int, lease_seconds: float) -> list[tuple[str, str]]:
    """Move up to ``limit`` due rows to ``delivering`` under new leases; returns ``(id, lease)`` pairs."""
    assert session.bind is not None
    if limit <= 0:
        return []
    lease = secrets.token_hex(16)
    if session.bind.dialect.name == "postgresql":
        now = func.now()
        due = and_(
            or_(
                and_(col(DeliveryRow.status) == _PENDING, col(DeliveryRow.next_attempt_at) <= now),
                and_(col(DeliveryRow.status) == _DELIVERING, col(DeliveryRow.lease_expires_at) < now),
            ),
            ~_circuit_open(now),
        )
        candidates = (
            select(col(DeliveryRow.id))
            .where(due)
            .order_by(col(DeliveryRow.next_attempt_at))
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        result = await session.execute(
            update(DeliveryRow)
            .where(col(DeliveryRow.id).in_(candidates))
            .values(
                status=_DELIVERING,
                lease_token=lease,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=col(DeliveryRow.attempts) + 1,
            )
            .returning(col(DeliveryRow.id))
        )
        return [(row_id, lease) for row_id in result.scalars().all()]
    now_value = utcnow()
    due_sqlite = and_(
        or_(
            and_(col(DeliveryRow.status) == _PENDING, col(DeliveryRow.next_attempt_at) <= now_value),
            and_(col(DeliveryRow.status) == _DELIVERING, col(DeliveryRow.lease_expires_at) < now_value),
        ),
        ~_circuit_open(now_value),
    )
    ids = (
        (
            await session.execute(
                select(col(DeliveryRow.id)).where(due_sqlite).order_by(col(DeliveryRow.next_attempt_at)).limit(limit)
            )
        )
        .scalars()
        .all()
    )
    claimed = []
    for row_id in ids:
        result = await session.execute(
            update(DeliveryRow)
            .where(col(DeliveryRow.id) == row_id, due_sqlite)
            .values(
                status=_DELIVERING,
                lease_token=lease,
                lease_expires_at=now_value + timedelta(seconds=lease_seconds),
                attempts=col(DeliveryRow.attempts) + 1,
            )
        )
        if getattr(result, "rowcount", 0) == 1:
            claimed.append((row_id, lease))
    return claimed


async def _circuit(session: AsyncSession, connector_id: str | None, *, failed: bool, settings: Any) -> None:
    """Count a failure (atomically: several relays may fail at once) or close the circuit on a success."""
    if connector_id is None:
        return
    table = ConnectorInstance
    if not failed:
        await session.execute(
            update(table)
            .where(
                col(table.id) == connector_id,
                or_(col(table.circuit_failures) > 0, col(table.circuit_open_until).is_not(None)),
            )
            .values(circuit_failures=0, circuit_open_until=None)
        )
        return
    result = await session.execute(
        update(table)
        .where(col(table.id) == connector_id)
        .values(circuit_failures=col(table.circuit_failures) + 1)
        .returning(col(table.circuit_failures), col(table.name))
    )
    found = result.first()
    if found is not None and found[0] >= settings.delivery_circuit_failures:
        await session.execute(
            update(table)
            .where(col(table.id) == connector_id)
            .values(circuit_open_until=utcnow() + timedelta(seconds=settings.delivery_circuit_seconds))
        )
        log.warning("delivery.circuit_open", connector=found[1], failures=found[0])


def _is_callback(row: DeliveryRow) -> bool:
    """A callback_url delivery (no connector instance behind it; the name `callback` is reserved)."""
    return row.connector_id is None and row.connector == service.CALLBACK


def _safe(text: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in text)
    return cleaned[:80] or "item"
