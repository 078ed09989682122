"""SQLite locking on the embedded default: writers queue for the lock at BEGIN, readers never wait for it."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

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
