"""Access to the real PostgreSQL and Redis the suite runs against. In CI (CI=true) a missing service fails
the run instead of skipping: tests that depend on them must never silently not run."""

from __future__ import annotations

import os
import secrets

import asyncpg
import pytest
import redis.asyncio as aioredis

PG_ADMIN_DSN = os.environ.get("IMAGEGATE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("IMAGEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


def _unavailable(what: str, exc: BaseException) -> None:
    message = f"{what} is not reachable ({exc!r})"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message}; CI must run these tests, not skip them", pytrace=False)
    pytest.skip(message)


async def create_pg_database() -> str:
    """Create a fresh, uniquely named database and return its URL (for the async driver)."""
    name = f"imagegate_test_{secrets.token_hex(4)}"
    try:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        _unavailable("PostgreSQL", exc)
        raise
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    return f"{base.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"


async def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def check_redis() -> str:
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (OSError, aioredis.ConnectionError) as exc:
        _unavailable("Redis", exc)
    finally:
        await client.aclose()
    return REDIS_URL
