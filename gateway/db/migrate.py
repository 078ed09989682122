"""Bring a database schema up to date with the Alembic migrations shipped inside the package."""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from gateway.config import Settings
from gateway.db.engine import create_engine

MIGRATIONS = Path(__file__).parent / "migrations"
_LOCK_ID = 0x1A6E6A7E  # one advisory lock for every process migrating the same PostgreSQL database


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _upgrade(connection: Connection, cfg: Config) -> None:
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


def _is_current(connection: Connection, cfg: Config) -> bool:
    heads = set(ScriptDirectory.from_config(cfg).get_heads())
    return set(MigrationContext.configure(connection).get_current_heads()) == heads


_local_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


async def upgrade(database_url: str) -> None:
    """Migrate to head. Safe to call from several processes at once (PostgreSQL advisory lock, SQLite write lock)."""
    # Alembic keeps its context in module globals: one migration at a time within a process.
    lock = _local_locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock:
        cfg = alembic_config()
        engine = create_engine(database_url)
        try:
            async with engine.connect() as conn:
                if conn.dialect.name == "postgresql":
                    await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
                else:
                    await conn.execute(text("SELECT 1"))  # BEGIN IMMEDIATE: other processes wait for us
                await conn.run_sync(_upgrade, cfg)
                await conn.commit()
        finally:
            await engine.dispose()


async def prepare_embedded(settings: Settings) -> None:
    """An embedded SQLite database is created and migrated by whatever process opens it first."""
    if settings.sqlite_path is not None:
        settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    if settings.is_sqlite:
        await upgrade(settings.database_url)


async def is_current(database_url: str) -> bool:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_is_current, alembic_config())
    finally:
        await engine.dispose()
