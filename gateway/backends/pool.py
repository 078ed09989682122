"""The backends a process can place work on: built from the backends table (plus the built-in preview),
kept fresh, probed, and guarded by a circuit breaker each."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.backends import repository
from gateway.backends.base import Adapter, BackendError, BackendSpec
from gateway.backends.health import CircuitBreaker
from gateway.backends.models import Backend, BackendSpeed
from gateway.backends.registry import build_adapter
from gateway.backends.speeds import SpeedBook
from gateway.common.crypto import SecretBox
from gateway.config import Settings
from gateway.db.engine import committed

log = structlog.get_logger("gateway.backends")


@dataclass(eq=False)  # identity: an entry is one live backend, replaced (not mutated) when its spec changes
class PoolEntry:
    """One live backend: its adapter, circuit breaker and what the last probe learned."""

    spec: BackendSpec
    adapter: Adapter
    breaker: CircuitBreaker
    discovered: list[str] | None = None
    loaded_model: str | None = None
    probed_at: float = 0.0
    healthy: bool | None = None  # None: not probed yet
    placed: int = field(default=0)  # generations started here by this process (round-robin, stats)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def capability(self) -> str:
        return self.adapter.capability

    def models(self) -> set[str] | None:
        """The models this backend serves; None when it serves any (nothing configured, nothing listed)."""
        if self.spec.models:
            return set(self.spec.models)
        if self.discovered is not None and self.adapter.lists_models:
            return set(self.discovered)
        if self.adapter.default_models:  # one-model servers (Z-Image-Turbo, GLM-Image) that cannot list it
            return set(self.adapter.default_models)
        return None

    def serves(self, model: str | None) -> bool:
        models = self.models()
        return model is None or models is None or model in models

    def available(self) -> bool:
        return self.breaker.allows_jobs()


class BackendPool:
    """Adapters for every enabled backend. ``start()`` keeps them in step with the table and probes them."""

    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession] | None,
        *,
        builtin: Sequence[BackendSpec] = (),
        speeds: SpeedBook | None = None,
    ) -> None:
        self.settings = settings
        self._sessionmaker = sessionmaker
        self._builtin = list(builtin)
        self._box = SecretBox(settings.secret_key)
        self.speeds = speeds or SpeedBook()
        self.entries: dict[str, PoolEntry] = {}
        self._task: asyncio.Task[None] | None = None
        self._retired: list[Adapter] = []
        self._unusable: dict[str, BackendSpec] = {}  # rows whose adapter could not be built, as they were
        for spec in self._builtin:
            self._put(spec)

    def _put(self, spec: BackendSpec) -> PoolEntry:
        entry = PoolEntry(
            spec=spec,
            adapter=build_adapter(spec),
            breaker=CircuitBreaker(self.settings.backend_failure_threshold, self.settings.backend_cooldown_seconds),
        )
        self.entries[spec.name] = entry
        return entry

    def candidates(self, model: str | None, capability: str = "generate") -> list[PoolEntry]:
        """Enabled backends of ``capability`` that serve ``model`` (healthy or not).

        The built-in preview is a fallback: a candidate only when no real backend serves the model, and, when it
        serves any model (the default, for a laptop), only while the pool has no real backend at all: once GPUs
        are configured, a model none of them serves fails with ``no_backend`` instead of quietly getting a
        preview picture."""
        of_kind = [e for e in self.entries.values() if e.capability == capability]
        serving = [e for e in of_kind if e.serves(model)]
        real = [e for e in serving if not e.adapter.local]
        if real:
            return real
        has_real = any(not e.adapter.local for e in of_kind)
        return [e for e in serving if not (has_real and e.models() is None)]

    async def refresh(self) -> None:
        """Re-read the backends table: build adapters for new or changed backends, close removed ones."""
        if self._sessionmaker is None:
            return

        async def load(session: AsyncSession) -> tuple[Sequence[Backend], Sequence[BackendSpeed]]:
            return await repository.list_backends(session, enabled_only=True), await repository.list_speeds(session)

        # committed(): closing the pool cancels this loop, and a database call must not be cut in half.
        rows, speeds = await committed(self._sessionmaker, load)
        specs = {spec.name: spec for spec in self._builtin}
        by_name = {row.name: row for row in rows}
        for row in rows:
            try:
                specs[row.name] = repository.spec_of(row, self._box)
            except ValueError as exc:
                log.error("backend.unusable", backend=row.name, error=str(exc))
        for name in list(self.entries):
            if name not in specs or specs[name] != self.entries[name].spec:
                # Jobs may still be running on the old adapter: close it with the pool, not now.
                self._retired.append(self.entries.pop(name).adapter)
        for name, spec in specs.items():
            if name in self.entries:
                continue
            if self._unusable.get(name) == spec:
                continue  # said once; tried again when the row changes
            try:
                entry = self._put(spec)
            except Exception as exc:  # one unusable row (e.g. options written by hand) must not hide the rest
                self._unusable[name] = spec
                log.error("backend.unusable", backend=name, error=f"{type(exc).__name__}: {exc}")
                continue
            self._unusable.pop(name, None)
            known = by_name.get(name)
            if known is not None:  # what the last probe (of any process) learned, until this process probes
                entry.discovered = known.discovered_models
                entry.loaded_model = known.loaded_model
        self.speeds.load([(s.backend, s.model, s.seconds_per_unit, s.samples) for s in speeds])

    async def probe(self, entry: PoolEntry) -> None:
        """Probe one backend; the result feeds its breaker and is written to its row for operators."""
        entry.probed_at = time.monotonic()
        error: str | None = None
        try:
            async with asyncio.timeout(15):
                result = await entry.adapter.probe()
        except (BackendError, TimeoutError) as exc:
            error = getattr(exc, "message", None) or f"probe timed out ({type(exc).__name__})"
        except Exception as exc:  # a buggy or surprising server must not stop the prober
            error = f"probe failed: {type(exc).__name__}: {exc}"[:500]
        if error is None:
            entry.breaker.success()
            entry.healthy = True
            entry.discovered = result.models
            if result.loaded_model is not None:
                entry.loaded_model = result.loaded_model
        else:
            entry.breaker.failure(error)
            entry.healthy = False
            log.warning("backend.probe_failed", backend=entry.name, error=error, circuit=entry.breaker.state)
        await self._record_health(entry, error)

    async def _record_health(self, entry: PoolEntry, error: str | None) -> None:
        if self._sessionmaker is None or entry.spec.kind == "preview":
            return
        with contextlib.suppress(Exception):  # health is informative; a database hiccup must not stop probing
            record = partial(
                repository.record_health,
                name=entry.name,
                healthy=error is None,
                error=error,
                models=entry.discovered,
                loaded_model=entry.loaded_model,
            )
            await committed(self._sessionmaker, record)

    def failed(self, entry: PoolEntry, error: BackendError) -> None:
        """A job's call failed through the backend's fault (retryable error)."""
        entry.breaker.failure(error.message)
        if not entry.breaker.allows_jobs():
            entry.healthy = False
            log.warning("backend.circuit_open", backend=entry.name, error=error.message)

    async def probe_due(self) -> None:
        """Probe backends whose interval passed, and open circuits whose cooldown passed (half-open)."""
        now = time.monotonic()
        due = [
            e
            for e in self.entries.values()
            if (e.breaker.state == "half_open")
            or (e.breaker.state == "closed" and now - e.probed_at >= self.settings.backend_probe_seconds)
        ]
        if due:
            await asyncio.gather(*(self.probe(e) for e in due))

    async def _loop(self) -> None:
        last_refresh = 0.0
        while True:
            try:
                if time.monotonic() - last_refresh >= self.settings.backend_refresh_seconds:
                    await self.refresh()
                    last_refresh = time.monotonic()
                await self.probe_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("backend.pool_refresh_failed", exc_info=True)
            await asyncio.sleep(min(1.0, self.settings.backend_refresh_seconds, self.settings.backend_probe_seconds))

    async def start(self) -> None:
        """Load the table once (so the first job sees every backend), then keep refreshing in the background."""
        with contextlib.suppress(Exception):
            await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="backend-pool")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for adapter in [*(e.adapter for e in self.entries.values()), *self._retired]:
            await adapter.aclose()
        self.entries.clear()
        self._retired.clear()
