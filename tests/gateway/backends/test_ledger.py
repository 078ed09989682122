"""Slot accounting: slots are never exceeded, waiters are served in order, dead holders free their slots;
the Redis ledger keeps those rules across independent clients (processes)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.backends.ledger import Ledger, MemoryLedger, RedisLedger
from tests.services import check_redis


@pytest.fixture(params=["memory", "redis"])
async def ledgers(request: pytest.FixtureRequest) -> AsyncIterator[list[Ledger]]:
    """Two ledgers over one shared state: one object twice in memory, two Redis clients for Redis."""
    if request.param == "memory":
        ledger = MemoryLedger(waiting_ttl=0.5)
        yield [ledger, ledger]
        return
    url = await check_redis()
    namespace = f"imagegate:test:{secrets.token_hex(4)}"
    clients = [aioredis.from_url(url), aioredis.from_url(url)]
    yield [RedisLedger(c, namespace, waiting_ttl=0.5, poll=0.01) for c in clients]
    keys = await clients[0].keys(f"{namespace}:*")
    if keys:
        await clients[0].delete(*keys)
    for client in clients:
        await client.aclose()


async def _queue(ledger: Ledger, backend: str, job: str, expected: float = 1.0) -> int:
    seq = await ledger.next_seq()
    await ledger.reserve(backend, job, expected, seq)
    return seq


async def test_acquire_grants_no_more_than_the_backend_slots(ledgers: list[Ledger]) -> None:
    a, b = ledgers
    for i, ledger in enumerate([a, b, a]):
        await _queue(ledger, "gpu", f"job{i}")
    results = [await ledger.acquire("gpu", f"job{i}", 2, 5.0) for i, ledger in enumerate([a, b, a])]
    assert results == [True, True, False]


async def test_waiters_get_a_freed_slot_in_their_order(ledgers: list[Ledger]) -> None:
    a, b = ledgers
    await _queue(a, "gpu", "running")
    assert await a.acquire("gpu", "running", 1, 5.0)
    await _queue(b, "gpu", "first")
    await _queue(a, "gpu", "second")
    assert await a.acquire("gpu", "second", 1, 5.0) is False
    await a.release("gpu", "running")
    assert await a.acquire("gpu", "second", 1, 5.0) is False  # "first" is ahead of it
    assert await b.acquire("gpu", "first", 1, 5.0) is True


async def test_an_active_entry_that_is_not_renewed_frees_its_slot(ledgers: list[Ledger]) -> None:
    a, b = ledgers
    await _queue(a, "gpu", "dead-worker-job")
    assert await a.acquire("gpu", "dead-worker-job", 1, 0.3)
    await _queue(b, "gpu", "next")
    assert await b.acquire("gpu", "next", 1, 5.0) is False
    await asyncio.sleep(0.4)
    await b.renew("gpu", "next", 5.0)
    assert await b.acquire("gpu", "next", 1, 5.0) is True


async def test_a_stale_waiter_does_not_block_the_line(ledgers: list[Ledger]) -> None:
    a, b = ledgers
    await _queue(a, "gpu", "gone")  # its process died while it waited: never renewed
    await asyncio.sleep(0.6)
    await _queue(b, "gpu", "alive")
    assert await b.acquire("gpu", "alive", 1, 5.0) is True


async def test_acquire_without_reservation_says_so(ledgers: list[Ledger]) -> None:
    assert await ledgers[0].acquire("gpu", "never-reserved", 1, 5.0) is None


async def test_snapshot_shows_running_and_waiting_entries(ledgers: list[Ledger]) -> None:
    a, b = ledgers
    await _queue(a, "gpu", "running", expected=3.0)
    await a.acquire("gpu", "running", 1, 5.0)
    await _queue(b, "gpu", "waiting", expected=2.0)
    _, snap = await b.snapshot(["gpu", "other"])
    entries = {e.job: e for e in snap["gpu"]}
    assert entries["running"].started is not None and entries["running"].expected == 3.0
    assert entries["waiting"].started is None and entries["waiting"].expected == 2.0
    assert snap["other"] == []


async def test_concurrent_holders_never_exceed_slots(ledgers: list[Ledger]) -> None:
    """20 jobs from two clients race for 2 slots; each holds its slot briefly, then releases."""
    active = 0
    peak = 0

    async def job(ledger: Ledger, name: str) -> None:
        nonlocal active, peak
        await _queue(ledger, "gpu", name, expected=0.02)
        while not await ledger.acquire("gpu", name, 2, 5.0):
            await ledger.renew("gpu", name, 5.0)
            await ledger.changed(0.01)
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.02)
        active -= 1
        await ledger.release("gpu", name)

    await asyncio.gather(*(job(ledgers[i % 2], f"job{i}") for i in range(20)))
    assert peak == 2


async def test_a_waiter_that_keeps_asking_keeps_its_place_beyond_the_waiting_ttl(ledgers: list[Ledger]) -> None:
    a, b = ledgers
    await _queue(a, "gpu", "running")
    assert await a.acquire("gpu", "running", 1, 5.0)
    await _queue(b, "gpu", "patient")
    for _ in range(6):  # 1.2 s of asking, the waiting ttl is 0.5 s
        assert await b.acquire("gpu", "patient", 1, 5.0) is False
        await asyncio.sleep(0.2)
    await a.release("gpu", "running")
    assert await b.acquire("gpu", "patient", 1, 5.0) is True


async def test_a_place_between_two_others_is_served_between_them(ledgers: list[Ledger]) -> None:
    a, b = ledgers
    await a.reserve("gpu", "first", 1.0, 10)
    await a.reserve("gpu", "last", 1.0, 11)
    await b.reserve("gpu", "between", 1.0, 10.5)
    _, snap = await b.snapshot(["gpu"])
    assert {e.job: e.seq for e in snap["gpu"]} == {"first": 10, "between": 10.5, "last": 11}
    assert await b.acquire("gpu", "between", 1, 5.0) is False
    assert await a.acquire("gpu", "first", 1, 5.0) is True
    await a.release("gpu", "first")
    assert await a.acquire("gpu", "last", 1, 5.0) is False
    assert await b.acquire("gpu", "between", 1, 5.0) is True
