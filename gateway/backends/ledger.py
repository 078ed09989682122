"""Slot accounting: which jobs hold or wait for each backend's slots, shared by every process that runs jobs.

Each backend has entries ``job -> (expected seconds, seq, started, expires)``. A job first *reserves* a place
on the backend the scheduler chose (waiting), then *acquires* a slot when fewer than ``slots`` jobs are
active and no more than the free slots' worth of waiters are ahead of it (``seq`` order: first come, first
served, and a job that moves to another backend keeps its place in line). Entries expire unless renewed,
so a process that dies frees its slots: active ones after a lease, waiting ones after a few seconds.

``MemoryLedger`` serves the embedded mode (one process); ``RedisLedger`` serves the distributed mode, where
every API replica and worker sees the same entries (atomic Lua scripts, Redis's own clock).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis


@dataclass(frozen=True)
class Entry:
    job: str
    expected: float  # seconds this job is expected to take on this backend
    seq: float  # place in line (smaller first; a job may be placed between two others)
    started: float | None  # ledger clock when it got its slot; None while waiting
    model: int = 0  # model_key() of the job's model: which checkpoint the backend has loaded after it


def model_key(model: str | None) -> int:
    """A number standing for a model name (0: the default model), small enough for Redis's Lua numbers."""
    if model is None:
        return 0
    return int(hashlib.sha256(model.encode()).hexdigest()[:12], 16) + 1


class Ledger(abc.ABC):
    """The shared view of backend slots (see module doc)."""

    def __init__(self, *, waiting_ttl: float) -> None:
        self.waiting_ttl = waiting_ttl

    @abc.abstractmethod
    async def next_seq(self) -> int:
        """A place in line for a job that starts waiting."""

    @abc.abstractmethod
    async def snapshot(self, backends: Sequence[str]) -> tuple[float, dict[str, list[Entry]]]:
        """The ledger clock and the live entries of ``backends``."""

    @abc.abstractmethod
    async def reserve(self, backend: str, job: str, expected: float, seq: float, model: int = 0) -> None:
        """Wait in line on ``backend`` (replaces an entry of ``job`` there); ``model`` is a ``model_key``."""

    @abc.abstractmethod
    async def acquire(self, backend: str, job: str, slots: int, ttl: float) -> bool | None:
        """Take a slot if it is this job's turn: True (active now), False (keep waiting: the place in line is
        renewed), None (the reservation expired: reserve again). A waiting entry is only ever renewed here,
        so that one that expired cannot come back as a slot."""

    @abc.abstractmethod
    async def renew(self, backend: str, job: str, ttl: float) -> None:
        """Keep an entry alive (active: ``ttl``; waiting: ``waiting_ttl``); re-creates an active one that expired."""

    @abc.abstractmethod
    async def release(self, backend: str, job: str) -> None:
        """Remove the job's entry (slot or place in line)."""

    @abc.abstractmethod
    async def changed(self, within: float) -> None:
        """Return when a slot may have freed up, or after ``within`` seconds."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


@dataclass
class _Held:
    expected: float
    seq: float
    started: float | None
    expires: float
    model: int = 0


class MemoryLedger(Ledger):
    """One process's ledger; waiters are woken the moment a slot is released."""

    def __init__(self, *, waiting_ttl: float = 5.0) -> None:
        super().__init__(waiting_ttl=waiting_ttl)
        self._entries: dict[str, dict[str, _Held]] = {}
        self._seq = itertools.count(1)
        self._event = asyncio.Event()

    async def next_seq(self) -> int:
        return next(self._seq)

    def _live(self, backend: str, now: float) -> dict[str, _Held]:
        entries = self._entries.setdefault(backend, {})
        for job in [job for job, held in entries.items() if held.expires < now]:
            del entries[job]
        return entries

    async def snapshot(self, backends: Sequence[str]) -> tuple[float, dict[str, list[Entry]]]:
        now = time.monotonic()
        return now, {
            b: [Entry(job, h.expected, h.seq, h.started, h.model) for job, h in self._live(b, now).items()]
            for b in backends
        }

    async def reserve(self, backend: str, job: str, expected: float, seq: float, model: int = 0) -> None:
        now = time.monotonic()
        self._live(backend, now)[job] = _Held(expected, seq, None, now + self.waiting_ttl, model)

    async def acquire(self, backend: str, job: str, slots: int, ttl: float) -> bool | None:
        now = time.monotonic()
        entries = self._live(backend, now)
        mine = entries.get(job)
        if mine is None:
            return None
        if mine.started is None:
            active = sum(1 for h in entries.values() if h.started is not None)
            ahead = sum(1 for h in entries.values() if h.started is None and h.seq < mine.seq)
            if active + ahead >= slots:
                mine.expires = now + self.waiting_ttl  # still waiting: the place in line stays alive
                return False
            mine.started = now
        mine.expires = now + ttl
        return True

    async def renew(self, backend: str, job: str, ttl: float) -> None:
        now = time.monotonic()
        held = self._live(backend, now).get(job)
        if held is None:
            self._entries[backend][job] = _Held(0.0, 0, now, now + ttl)
        else:
            held.expires = now + (ttl if held.started is not None else self.waiting_ttl)

    async def release(self, backend: str, job: str) -> None:
        self._entries.get(backend, {}).pop(job, None)
        self._event.set()
        self._event = asyncio.Event()

    async def changed(self, within: float) -> None:
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), within)


# Entries are "expected|seq|started|expires|model" (started 0 while waiting); times are Redis TIME seconds.
_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1000000 "
_PARSE = """
local function parse(value)
  local e = {}
  for v in string.gmatch(value, '[^|]+') do e[#e + 1] = tonumber(v) end
  return e
end
local function live(key, now)
  local all = redis.call('HGETALL', key)
  local entries = {}
  for i = 1, #all, 2 do
    local e = parse(all[i + 1])
    if e[4] < now then redis.call('HDEL', key, all[i]) else entries[all[i]] = e end
  end
  return entries
end
local function fmt(e) return string.format('%.6f|%.17g|%.6f|%.6f|%d', e[1], e[2], e[3], e[4], e[5] or 0) end
"""
_ACQUIRE = (
    _NOW
    + _PARSE
    + """
local entries = live(KEYS[1], now)
local mine = entries[ARGV[1]]
if not mine then return -1 end
if mine[3] == 0 then
  local active, ahead = 0, 0
  for _, e in pairs(entries) do
    if e[3] > 0 then active = active + 1 elseif e[2] < mine[2] then ahead = ahead + 1 end
  end
  if active + ahead >= tonumber(ARGV[2]) then
    mine[4] = now + tonumber(ARGV[4])
    redis.call('HSET', KEYS[1], ARGV[1], fmt(mine))
    return 0
  end
  mine[3] = now
end
mine[4] = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], fmt(mine))
return 1
"""
)
_RESERVE = (
    _NOW
    + _PARSE
    + """
local e = {tonumber(ARGV[2]), tonumber(ARGV[3]), 0, now + tonumber(ARGV[4]), tonumber(ARGV[5])}
redis.call('HSET', KEYS[1], ARGV[1], fmt(e))
redis.call('PEXPIRE', KEYS[1], 86400000)
"""
)
_RENEW = (
    _NOW
    + _PARSE
    + """
local value = redis.call('HGET', KEYS[1], ARGV[1])
local e
if value then
  e = parse(value)
  if e[3] > 0 then e[4] = now + tonumber(ARGV[2]) else e[4] = now + tonumber(ARGV[3]) end
else
  e = {0, 0, now, now + tonumber(ARGV[2]), 0}
end
redis.call('HSET', KEYS[1], ARGV[1], fmt(e))
"""
)
_SNAPSHOT = (
    _NOW
    + _PARSE
    + """
local out = {tostring(now)}
for i, key in ipairs(KEYS) do
  local entries = live(key, now)
  local flat = {}
  for job, e in pairs(entries) do flat[#flat + 1] = job flat[#flat + 1] = fmt(e) end
  out[#out + 1] = flat
end
return out
"""
)


class RedisLedger(Ledger):
    """The cluster-wide ledger: a hash per backend under ``{namespace}:slots:``; waiters poll it."""

    def __init__(self, redis: Redis, namespace: str, *, waiting_ttl: float = 5.0, poll: float = 0.1) -> None:
        super().__init__(waiting_ttl=waiting_ttl)
        self._redis = redis
        self._ns = namespace
        self._poll = poll
        self._acquire = redis.register_script(_ACQUIRE)
        self._reserve = redis.register_script(_RESERVE)
        self._renew = redis.register_script(_RENEW)
        self._snapshot = redis.register_script(_SNAPSHOT)

    def _key(self, backend: str) -> str:
        return f"{self._ns}:slots:{backend}"

    async def next_seq(self) -> int:
        return int(await self._redis.incr(f"{self._ns}:slots-seq"))

    async def snapshot(self, backends: Sequence[str]) -> tuple[float, dict[str, list[Entry]]]:
        if not backends:
            return 0.0, {}
        raw = await self._snapshot(keys=[self._key(b) for b in backends])
        now = float(raw[0])
        result: dict[str, list[Entry]] = {}
        for backend, flat in zip(backends, raw[1:], strict=True):
            entries = []
            for job, value in zip(flat[::2], flat[1::2], strict=True):
                text = value.decode() if isinstance(value, bytes) else value
                expected, seq, started, _, model = text.split("|")
                name = job.decode() if isinstance(job, bytes) else job
                entries.append(Entry(name, float(expected), float(seq), float(started) or None, int(model)))
            result[backend] = entries
        return now, result

    async def reserve(self, backend: str, job: str, expected: float, seq: float, model: int = 0) -> None:
        await self._reserve(keys=[self._key(backend)], args=[job, expected, seq, self.waiting_ttl, model])

    async def acquire(self, backend: str, job: str, slots: int, ttl: float) -> bool | None:
        result = int(await self._acquire(keys=[self._key(backend)], args=[job, slots, ttl, self.waiting_ttl]))
        return None if result < 0 else bool(result)

    async def renew(self, backend: str, job: str, ttl: float) -> None:
        await self._renew(keys=[self._key(backend)], args=[job, ttl, self.waiting_ttl])

    async def release(self, backend: str, job: str) -> None:
        await self._redis.hdel(self._key(backend), job)  # type: ignore[misc]  # redis-py's sync|async union

    async def changed(self, within: float) -> None:
        await asyncio.sleep(min(within, self._poll))
