"""SQLite locking on the embedded default: writers queue for the lock at BEGIN, readers never wait for it."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.engine import committed
from tests.conftest import Stack, auth


async def test_reads_proceed_while_a_writer_holds_the_lock(embedded: Stack) -> None:
    token = await embedded.system()
    job = await embedded.submit(token)
    async with embedded.res.sessionmaker() as writer:
        await writer.execute(text("UPDATE jobs SET progress = progress"))  # holds the write lock, uncommitted
        listed = await asyncio.wait_for(embedded.client.get("/v1/jobs", headers=auth(token)), timeout=5)
        one = await asyncio.wait_for(embedded.client.get(f"/v1/jobs/{job['id']}", headers=auth(token)), timeout=5)
        assert listed.status_code == one.status_code == 200
        await writer.rollback()


async def test_concurrent_writers_wait_for_each_other_instead_of_failing(embedded: Stack) -> None:
    token = await embedded.system()

    async def hold_lock() -> None:
        async with embedded.res.sessionmaker() as writer:
            await writer.execute(text("UPDATE jobs SET progress = progress"))
            await asyncio.sleep(0.5)
            await writer.commit()

    holder = asyncio.create_task(hold_lock())
    await asyncio.sleep(0.1)
    submits = await asyncio.gather(
        *(embedded.client.post("/v1/jobs", json={"prompt": f"p{i}"}, headers=auth(token)) for i in range(10))
    )
    await holder
    assert [r.status_code for r in submits] == [202] * 10


async def _count_systems(stack: Stack) -> int:
    async with stack.res.read_sessionmaker() as session:
        return int((await session.execute(text("SELECT count(*) FROM systems"))).scalar_one())


async def test_a_cancelled_caller_waits_for_its_transaction_to_commit(embedded: Stack) -> None:
    """Cancelling mid-transaction neither cuts the write in half nor leaves the write lock held."""
    before = await _count_systems(embedded)
    finished = asyncio.Event()

    async def slow_write(session: AsyncSession) -> None:
        await session.execute(
            text("INSERT INTO systems (id, name, scopes, created_at) VALUES ('sys_x', 'x', '[]', CURRENT_TIMESTAMP)")
        )
        await asyncio.sleep(0.3)  # the caller is cancelled meanwhile
        finished.set()

    caller = asyncio.create_task(committed(embedded.res.sessionmaker, slow_write))
    await asyncio.sleep(0.1)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert finished.is_set(), "the caller's cancellation came only after the transaction ended"
    assert await _count_systems(embedded) == before + 1
    token = await embedded.system()  # another writer gets the lock at once
    assert (await embedded.submit(token))["status"] == "queued"


async def test_a_caller_that_gives_up_leaves_the_transaction_to_finish(embedded: Stack) -> None:
    before = await _count_systems(embedded)

    async def slow_write(session: AsyncSession) -> None:
        await session.execute(
            text("INSERT INTO systems (id, name, scopes, created_at) VALUES ('sys_y', 'y', '[]', CURRENT_TIMESTAMP)")
        )
        await asyncio.sleep(0.3)

    with pytest.raises(TimeoutError):
        await committed(embedded.res.sessionmaker, slow_write, give_up_after=0.05)
    await asyncio.sleep(0.5)
    assert await _count_systems(embedded) == before + 1
