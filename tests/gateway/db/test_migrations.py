"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL, and re-run safely."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection
from sqlmodel import SQLModel

import gateway.db.tables  # noqa: F401
from gateway.db.engine import create_engine
from gateway.db.migrate import is_current, upgrade
from tests.processes import IMAGEGATE, env_for
from tests.services import create_pg_database, drop_pg_database


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, SQLModel.metadata))


async def _assert_matches_models(url: str) -> None:
    assert not await is_current(url)
    await upgrade(url)
    await upgrade(url)  # a second run is a no-op
    assert await is_current(url)
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()


async def test_sqlite_schema_matches_models(tmp_path: Path) -> None:
    await _assert_matches_models(f"sqlite+aiosqlite:///{tmp_path}/m.db")


async def test_postgresql_schema_matches_models() -> None:
    url = await create_pg_database()
    try:
        await _assert_matches_models(url)
    finally:
        await drop_pg_database(url)


async def test_concurrent_migrations_of_one_postgresql_database_do_not_collide() -> None:
    url = await create_pg_database()
    try:
        await asyncio.gather(*(upgrade(url) for _ in range(4)))
        assert await is_current(url)
    finally:
        await drop_pg_database(url)


def test_concurrent_migrate_processes_on_one_sqlite_file_do_not_collide(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    procs = [subprocess.Popen([*IMAGEGATE, "migrate"], env=env, stderr=subprocess.PIPE) for _ in range(3)]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert asyncio.run(is_current(env["IMAGEGATE_DATABASE_URL"]))
