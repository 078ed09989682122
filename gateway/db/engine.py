"""Database engine and sessions: SQLite (embedded default) or PostgreSQL, both through async drivers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

T = TypeVar("T")
# Units of work a caller stopped waiting for (a timeout): referenced until they end, so they are not collected.
_UNFINISHED: set[asyncio.Task[Any]] = set()


def create_engine(database_url: str, **kwargs: Any) -> AsyncEngine:
    """Create the engine; on SQLite enable WAL and take the write lock at BEGIN (no lock-upgrade deadlocks)."""
    if database_url.startswith("sqlite"):
        engine = create_async_engine(database_url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Hand transaction control to the "begin" hook below (pysqlite's own BEGIN is DEFERRED).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=FULL")  # a 202 survives a power cut, not only a crash
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(connection: Any) -> None:
            # IMMEDIATE: a transaction that will write waits for the lock up front instead of failing
            # with SQLITE_BUSY when it upgrades from a read lock. This serialises writers, which is what
            # makes conditional updates (claims, quotas) correct on SQLite. Read-only sessions begin
            # DEFERRED (see create_sessionmaker) and never take the write lock.
            mode = "DEFERRED" if connection.get_execution_options().get("readonly") else "IMMEDIATE"
            connection.exec_driver_sql(f"BEGIN {mode}")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    return create_async_engine(database_url, **kwargs)


def create_sessionmaker(engine: AsyncEngine, *, readonly: bool = False) -> async_sessionmaker[AsyncSession]:
    """Sessions for work that writes, or (``readonly``) for work that only reads: on SQLite the latter do not
    take the database's write lock, so reads never wait for or hold up writers."""
    bind = engine.execution_options(readonly=True) if readonly else engine
    return async_sessionmaker(bind, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def transaction(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session whose work is committed on normal exit and rolled back on any exception."""
    async with sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


async def committed(
    sessionmaker: async_sessionmaker[AsyncSession],
    work: Callable[[AsyncSession], Awaitable[T]],
    *,
    give_up_after: float | None = None,
) -> T:
    """``work(session)`` in one transaction that cancelling the caller cannot cut in half.

    A database call cancelled mid-flight is not stopped: its driver thread goes on, and on SQLite a
    ``BEGIN IMMEDIATE`` that was waiting for the lock then holds the write lock with nobody left to commit or
    roll back (every other writer waits out its busy timeout); aiosqlite can also hang the event loop's
    shutdown. So the transaction runs in a task of its own: a cancelled caller waits for it to end, then is
    cancelled; a caller whose ``give_up_after`` seconds pass stops waiting (TimeoutError) and the work ends on its own.
    """

    async def unit() -> T:
        async with transaction(sessionmaker) as session:
            return await work(session)

    task = asyncio.ensure_future(unit())
    try:
        async with asyncio.timeout(give_up_after):
            return await asyncio.shield(task)
    except TimeoutError:
        if not task.done():
            _UNFINISHED.add(task)
            task.add_done_callback(_settled)
        raise
    except asyncio.CancelledError:
        await asyncio.wait({task})
        _settled(task)
        raise


def _settled(task: asyncio.Task[Any]) -> None:
    _UNFINISHED.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: the caller has moved on, and its outcome was logged where it mattered
