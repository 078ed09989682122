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

from gateway.backends.base import NO_BACKEND, BackendError, GenerationRequest
from gateway.backends.ledger import Entry, Ledger, MemoryLedger, model_key
from gateway.backends.pool import BackendPool, PoolEntry
from gateway.backends.speeds import work_units
from gateway.config import Settings

log = structlog.get_logger("gateway.backends")
_MOVE_MARGIN = 0.1  # move only for a finish at least 10 % (and 0.25 s) earlier: no ping-pong on noise
_REEVALUATE_SECONDS = 0.5
# How many later arrivals a job may pass in a backend's line to join a run of its own model (see _position).
_JUMP_WINDOW = 32


@dataclass(frozen=True)
class Work:
    """What is being placed: a job's model and size in units (see ``speeds.work_units``)."""

    job_id: str
    model: str | None
    units: float
    capability: str = "generate"
    request: GenerationRequest | None = None  # when given, backends whose adapter refuses it are passed over

    def units_on(self, entry: PoolEntry) -> float:
        """The units ``entry`` will really run: what its adapter sends (Z-Image runs 8 steps whatever was asked),
        the measure its speed was learned in."""
        if self.request is None:
            return self.units
        try:
            sent = entry.adapter.adjust(self.request)[0]
        except BackendError:
            return self.units
        return work_units(sent.width, sent.height, sent.steps, sent.n)


def _refusal(entry: PoolEntry, request: GenerationRequest | None) -> BackendError | None:
    """Why ``entry`` cannot run ``request`` at all (e.g. Z-Image and image-to-image), None if it can."""
    if request is None:
        return None
    try:
        entry.adapter.adjust(request)
    except BackendError as exc:
        return exc
    return None


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
        seconds = self.pool.speeds.seconds_per_unit(entry.name, work.model) * work.units_on(entry)
        if loaded is None and entry.loaded_model is not None:
            loaded = model_key(entry.loaded_model)
        if work.model is not None and loaded is not None and loaded != model_key(work.model):
            seconds += self.settings.backend_switch_seconds
        return seconds

    @staticmethod
    def _position(entries: list[Entry], seq: float, work: Work) -> float:
        """Where in a backend's line the job waits: at its own place ``seq`` (first come, first served), or
        right behind the last waiting job of its model when that is earlier, so that jobs of one model run
        back to back instead of paying a checkpoint switch each (twice: there and back). It only passes jobs
        that arrived at most ``_JUMP_WINDOW`` places before it: a job that has waited longer is never overtaken."""
        key = model_key(work.model)
        waiting = sorted((e for e in entries if e.started is None and e.job != work.job_id), key=lambda e: e.seq)
        same = [e for e in waiting if e.model == key and e.seq < seq]
        if not same:
            return seq
        anchor = same[-1]
        passed = [e for e in waiting if anchor.seq < e.seq < seq]
        if not passed or any(e.seq < seq - _JUMP_WINDOW for e in passed):
            return seq
        middle = (anchor.seq + passed[0].seq) / 2
        return middle if anchor.seq < middle < passed[0].seq else seq  # no room left between them: keep its place

    def _start_estimate(
        self, entry: PoolEntry, entries: list[Entry], now: float, seq: float, job: str
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
        self, entry: PoolEntry, snap: dict[str, tuple[float, list[Entry]]], seq: float, work: Work, *, fixed: bool
    ) -> tuple[float, float, float]:
        """(expected finish, expected duration, position in line) of ``work`` on ``entry`` given the ledger
        snapshot: at position ``seq`` if ``fixed`` (where it already waits), else where it would be placed."""
        if self.settings.scheduler == "round_robin":
            fixed = True  # the baseline keeps plain first come, first served
        now, entries = snap.get(entry.name, (0.0, []))
        position = seq if fixed else self._position(entries, seq, work)
        start, loaded = self._start_estimate(entry, entries, now, position, work.job_id)
        duration = self.expected_seconds(entry, work, loaded)
        return start + duration, duration, position

    def _choose(
        self,
        healthy: list[PoolEntry],
        snap: dict[str, tuple[float, list[Entry]]],
        seq: int,
        work: Work,
        held: tuple[PoolEntry, float] | None = None,
    ) -> PoolEntry:
        """The backend with the earliest expected finish; ``held`` (the backend the job waits on and its
        position there) is scored where the job really is."""
        if self.settings.scheduler == "round_robin":
            ordered = sorted(healthy, key=lambda e: e.name)
            return ordered[next(self._round_robin) % len(ordered)]

        def finish(entry: PoolEntry) -> float:
            if held is not None and entry is held[0]:
                return self._estimate(entry, snap, held[1], work, fixed=True)[0]
            return self._estimate(entry, snap, seq, work, fixed=False)[0]

        return min(healthy, key=lambda e: (finish(e), e.loaded_model != work.model, e.name))

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
        position: float = seq  # where the job waits in ``current``'s line
        refusals: dict[PoolEntry, BackendError | None] = {}  # per live backend: why it cannot run the request
        unhealthy_since: float | None = None
        evaluated = 0.0
        try:
            while True:
                serving = self.pool.candidates(work.model, work.capability)
                if not serving:
                    raise BackendError(_no_backend_message(work), code=NO_BACKEND)
                for entry in serving:
                    if entry not in refusals:
                        refusals[entry] = _refusal(entry, work.request)
                fitting = [e for e in serving if refusals[e] is None]
                if not fitting:  # every backend of the model refuses this request: say why (the first one's words)
                    raise next(r for e in serving if (r := refusals[e]) is not None)
                candidates = [e for e in fitting if e.name not in exclude]
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
                    current, position = await self._place(work, healthy, current, seq, position)
                    evaluated = time.monotonic()
                ttl = self.settings.job_lease_seconds
                ledger = self.ledger_of(current)
                got = await ledger.acquire(current.name, work.job_id, current.spec.slots, ttl)
                if got:
                    current.placed += 1
                    return current
                if got is None:  # our place in line expired (a long stall): take it again
                    snap = await self._snapshot([current])
                    duration = self._estimate(current, snap, position, work, fixed=True)[1]
                    await ledger.reserve(current.name, work.job_id, duration, position, model_key(work.model))
                    continue
                await ledger.changed(self.settings.scheduler_poll_seconds)
        except BaseException:
            if current is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.ledger_of(current).release(current.name, work.job_id))
            raise

    async def _place(
        self, work: Work, healthy: list[PoolEntry], current: PoolEntry | None, seq: int, position: float
    ) -> tuple[PoolEntry, float]:
        """Choose (or keep) the backend to wait on, and write the reservation; returns it and the position."""
        if current is not None and current in healthy and self.settings.scheduler == "round_robin":
            return current, position
        snap = await self._snapshot(healthy)
        held = (current, position) if current is not None and current in healthy else None
        best = self._choose(healthy, snap, seq, work, held)
        if current is not None and current in healthy:
            stay = self._estimate(current, snap, position, work, fixed=True)[0]
            if best is current:
                return current, position
            move = self._estimate(best, snap, seq, work, fixed=False)[0]
            if stay - move < max(0.25, _MOVE_MARGIN * stay):
                return current, position
        if current is not None:
            await self.ledger_of(current).release(current.name, work.job_id)
        _, duration, position = self._estimate(best, snap, seq, work, fixed=False)
        await self.ledger_of(best).reserve(best.name, work.job_id, duration, position, model_key(work.model))
        return best, position


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
