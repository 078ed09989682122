"""Placing work on backends: the best slot for each generation, cluster-wide slot limits, retries elsewhere.

Placement (``eft``): among enabled backends with a closed circuit that serve the model, the one with the
earliest expected finish = (work ahead of this job there: what is running, by its remaining expected time,
plus the jobs waiting before it) / slots + this job's expected duration there (learned seconds per unit x
units, plus a checkpoint switch when another model is loaded). The job waits in that backend's line; while
it waits it re-evaluates, and moves when another backend now promises a clearly earlier finish (estimates
are wrong sometimes; backends die). ``round_robin`` is the naive baseline the benchmark compares against.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import structlog

from gateway.backends.base import NO_BACKEND, BackendError
from gateway.backends.ledger import Entry, Ledger, MemoryLedger, model_key
from gateway.backends.pool import BackendPool, PoolEntry
from gateway.config import Settings

log = structlog.get_logger("gateway.backends")
_MOVE_MARGIN = 0.1  # move only for a finish at least 10 % (and 0.25 s) earlier: no ping-pong on noise
_REEVALUATE_SECONDS = 0.5


@dataclass(frozen=True)
class Work:
    """What is being placed: a job's model and size in units (see ``speeds.work_units``)."""

    job_id: str
    model: str | None
    units: float
    capability: str = "generate"


class NoCandidate(Exception):
    """Every backend that could serve the work is excluded (already failed this run)."""


class Scheduler:
    def __init__(self, pool: BackendPool, ledger: Ledger, settings: Settings) -> None:
        self.pool = pool
        self.ledger = ledger
        self.local_ledger = MemoryLedger()  # in-process backends (the preview renderer): this process's CPU
        self.settings = settings
        self._round_robin = itertools.count()

    def ledger_of(self, entry: PoolEntry) -> Ledger:
        return self.local_ledger if entry.adapter.local else self.ledger

    async def _snapshot(self, entries: list[PoolEntry]) -> dict[str, tuple[float, list[Entry]]]:
        """Per backend: its ledger's clock and its live entries."""
        result: dict[str, tuple[float, list[Entry]]] = {}
        for ledger in {id(self.ledger_of(e)): self.ledger_of(e) for e in entries}.values():
            names = [e.name for e in entries if self.ledger_of(e) is ledger]
            now, snap = await ledger.snapshot(names)
            result.update({name: (now, snap.get(name, [])) for name in names})
        return result

    def expected_seconds(self, entry: PoolEntry, work: Work, loaded: int | None = None) -> float:
        """Expected duration of ``work`` on ``entry``; a checkpoint switch is added when the model loaded at
        its start (``loaded``, a ``model_key``; default: what the backend has loaded now) is another one."""
        seconds = self.pool.speeds.seconds_per_unit(entry.name, work.model) * work.units
        if loaded is None and entry.loaded_model is not None:
            loaded = model_key(entry.loaded_model)
        if work.model is not None and loaded is not None and loaded != model_key(work.model):
            seconds += self.settings.backend_switch_seconds
        return seconds

    def _start_estimate(
        self, entry: PoolEntry, entries: list[Entry], now: float, seq: int, job: str
    ) -> tuple[float, int | None]:
        """Seconds until a slot of ``entry`` is expected to be free for the job with place ``seq``, and the
        model the backend will have loaded then (the one of the last job before it; None: unknown)."""
        active = [e for e in entries if e.started is not None and e.job != job]
        ahead = sorted((e for e in entries if e.started is None and e.seq < seq and e.job != job), key=lambda e: e.seq)
        before = ahead[-1] if ahead else max(active, key=lambda e: e.started or 0.0, default=None)
        loaded = before.model if before is not None and before.expected > 0 else None
        if len(active) + len(ahead) < entry.spec.slots:
            return 0.0, loaded
        remaining = sum(max(e.expected - (now - (e.started or now)), 0.05 * e.expected) for e in active)
        return (remaining + sum(e.expected for e in ahead)) / entry.spec.slots, loaded

    def _estimate(
        self, entry: PoolEntry, snap: dict[str, tuple[float, list[Entry]]], seq: int, work: Work
    ) -> tuple[float, float]:
        """(expected finish, expected duration) of ``work`` on ``entry`` given the ledger snapshot."""
        now, entries = snap.get(entry.name, (0.0, []))
        start, loaded = self._start_estimate(entry, entries, now, seq, work.job_id)
        duration = self.expected_seconds(entry, work, loaded)
        return start + duration, duration

    def _finish(self, entry: PoolEntry, snap: dict[str, tuple[float, list[Entry]]], seq: int, work: Work) -> float:
        return self._estimate(entry, snap, seq, work)[0]

    def _choose(
        self, healthy: list[PoolEntry], snap: dict[str, tuple[float, list[Entry]]], seq: int, work: Work
    ) -> PoolEntry:
        if self.settings.scheduler == "round_robin":
            ordered = sorted(healthy, key=lambda e: e.name)
            return ordered[next(self._round_robin) % len(ordered)]
        return min(
            healthy,
            key=lambda e: (self._finish(e, snap, seq, work), e.loaded_model != work.model, e.name),
        )

    @contextlib.asynccontextmanager
    async def slot(self, work: Work, exclude: frozenset[str] = frozenset()) -> AsyncIterator[PoolEntry]:
        """Hold a slot of the best backend for ``work`` while the block runs.

        Raises ``BackendError(no_backend)`` when no enabled backend serves the model, ``NoCandidate`` when all
        that do are in ``exclude``, and ``BackendError(backend_unavailable)`` after waiting
        ``backend_wait_seconds`` for one with a closed circuit.
        """
        entry = await self._acquire(work, exclude)
        ttl = self.settings.job_lease_seconds
        ledger = self.ledger_of(entry)
        renewer = asyncio.create_task(self._renew(ledger, entry.name, work.job_id, ttl))
        try:
            yield entry
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            with contextlib.suppress(Exception):
                await asyncio.shield(ledger.release(entry.name, work.job_id))

    @staticmethod
    async def _renew(ledger: Ledger, backend: str, job: str, ttl: float) -> None:
        while True:
            await asyncio.sleep(ttl / 3)
            with contextlib.suppress(Exception):  # a Redis hiccup: the next renewal tries again
                await ledger.renew(backend, job, ttl)

    async def _acquire(self, work: Work, exclude: frozenset[str]) -> PoolEntry:
        seq = await self.ledger.next_seq()
        current: PoolEntry | None = None
        unhealthy_since: float | None = None
        evaluated = 0.0
        try:
            while True:
                serving = self.pool.candidates(work.model, work.capability)
                if not serving:
                    raise BackendError(_no_backend_message(work), code=NO_BACKEND)
                candidates = [e for e in serving if e.name not in exclude]
                if not candidates:
                    raise NoCandidate
                healthy = [e for e in candidates if e.available()]
                if not healthy:
                    unhealthy_since = unhealthy_since or time.monotonic()
                    waited = self.settings.backend_wait_seconds
                    if time.monotonic() - unhealthy_since > waited:
                        raise BackendError(
                            f"No healthy backend for {_model_text(work)} within {waited:g} s.",
                            code="backend_unavailable",
                        )
                    if current is not None:
                        await self.ledger_of(current).release(current.name, work.job_id)
                        current = None
                    await asyncio.sleep(min(1.0, self.settings.backend_probe_seconds))
                    continue
                unhealthy_since = None
                if current not in healthy or time.monotonic() - evaluated >= _REEVALUATE_SECONDS:
                    current = await self._place(work, healthy, current, seq)
                    evaluated = time.monotonic()
                ttl = self.settings.job_lease_seconds
                ledger = self.ledger_of(current)
                got = await ledger.acquire(current.name, work.job_id, current.spec.slots, ttl)
                if got:
                    current.placed += 1
                    return current
                if got is None:  # our place in line expired (a long stall): take it again
                    duration = self.expected_seconds(current, work)
                    await ledger.reserve(current.name, work.job_id, duration, seq, model_key(work.model))
                    continue
                await ledger.renew(current.name, work.job_id, ttl)
                await ledger.changed(self.settings.scheduler_poll_seconds)
        except BaseException:
            if current is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.ledger_of(current).release(current.name, work.job_id))
            raise

    async def _place(self, work: Work, healthy: list[PoolEntry], current: PoolEntry | None, seq: int) -> PoolEntry:
        """Choose (or keep) the backend to wait on, and write the reservation."""
        if current is not None and current in healthy and self.settings.scheduler == "round_robin":
            return current
        snap = await self._snapshot(healthy)
        best = self._choose(healthy, snap, seq, work)
        if current is not None and current in healthy and best is not current:
            stay = self._finish(current, snap, seq, work)
            move = self._finish(best, snap, seq, work)
            if stay - move < max(0.25, _MOVE_MARGIN * stay):
                return current
        if best is not current:
            if current is not None:
                await self.ledger_of(current).release(current.name, work.job_id)
            duration = self._estimate(best, snap, seq, work)[1]
            await self.ledger_of(best).reserve(best.name, work.job_id, duration, seq, model_key(work.model))
        return best


def _model_text(work: Work) -> str:
    return f"model {work.model!r}" if work.model is not None else "the default model"


def _no_backend_message(work: Work) -> str:
    if work.capability == "describe":
        return "No enabled vision backend is configured to describe images."
    return f"No enabled backend serves {_model_text(work)}."


ProgressSink = Callable[[float], Awaitable[None]]


async def estimated_progress(sink: ProgressSink, expected: float, reported: Callable[[], float]) -> None:
    """For backends whose protocol reports no progress: move ``sink`` with the expected duration (to 95 %),
    never below what the backend itself reported."""
    started = time.monotonic()
    while True:
        await asyncio.sleep(0.5)
        estimate = min(0.95, (time.monotonic() - started) / max(expected, 0.1))
        if estimate > reported():
            await sink(estimate)
