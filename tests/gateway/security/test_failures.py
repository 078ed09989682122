"""How database failures are answered and survived: unstorable text, passing conditions, an absent database."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc
from starlette.requests import Request

from gateway.audit.service import Actor, AuditTrail
from gateway.common.ids import is_id
from gateway.db.engine import create_engine, create_sessionmaker
from gateway.handlers import database_error
from policies.content import ContentFilter
from tests.conftest import Stack, auth


class _DriverError(Exception):
    """What asyncpg raises: an error carrying the server's SQLSTATE."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"SQLSTATE {sqlstate}")
        self.sqlstate = sqlstate


def _error(sqlstate: str) -> sqlalchemy.exc.DBAPIError:
    orig = Exception("driver error")  # SQLAlchemy's adapter error, with the driver's error as its cause
    orig.__cause__ = _DriverError(sqlstate)
    return sqlalchemy.exc.DBAPIError("SELECT 1", {}, orig)


def _request() -> Request:
    return Request({"type": "http", "method": "GET", "path": "/v1/x", "headers": [], "state": {}})


@pytest.mark.parametrize(("sqlstate", "status"), [("22021", 422), ("22P05", 422), ("40P01", 503), ("53300", 503)])
async def test_database_errors_that_are_not_bugs_get_their_status(sqlstate: str, status: int) -> None:
    response = await database_error(_request(), _error(sqlstate))

    assert response.status_code == status


async def test_other_database_errors_stay_bugs() -> None:
    with pytest.raises(sqlalchemy.exc.DBAPIError):
        await database_error(_request(), _error("42P01"))


async def test_refusals_wait_for_an_absent_database_instead_of_being_lost(tmp_path: Path) -> None:
    engine = create_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none")  # nothing listens on port 1
    trail = AuditTrail(create_sessionmaker(engine))
    for _ in range(3):
        trail.refused(Actor(name="anonymous"), "auth.refused", reason="malformed_api_key")
    try:
        started = time.monotonic()
        written = await trail.flush()
        elapsed = time.monotonic() - started
    finally:
        await engine.dispose()

    assert written == 0
    assert trail._queue.qsize() == 3  # kept for the next try
    assert elapsed < 5  # one try for the batch, not one per row


async def test_a_pg_nul_in_a_query_filter_is_422(stack: Stack) -> None:
    admin = await stack.admin()

    response = await stack.client.get("/v1/admin/audit", params={"action": "quota\x00"}, headers=auth(admin))

    assert response.status_code == 422


async def test_like_wildcards_in_the_action_filter_match_literally(embedded: Stack) -> None:
    admin = await embedded.admin()
    await embedded.client.post("/v1/admin/systems", json={"name": "crm"}, headers=auth(admin))

    response = await embedded.client.get("/v1/admin/audit", params={"action": "%"}, headers=auth(admin))

    assert response.json()["items"] == []


async def test_an_empty_scope_parameter_is_an_invalid_scope(embedded: Stack) -> None:
    admin = await embedded.admin()
    created: dict[str, Any] = (
        await embedded.client.post("/v1/admin/systems", json={"name": "crm", "oauth": True}, headers=auth(admin))
    ).json()

    response = await embedded.client.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "scope": " ",
            "client_id": created["client_id"],
            "client_secret": created["client_secret"],
        },
    )

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"


def test_an_id_with_a_trailing_newline_is_not_an_id() -> None:
    assert is_id("job_" + "0" * 28, "job")
    assert not is_id("job_" + "0" * 28 + "\n", "job")


@pytest.mark.parametrize("text", ["眷恋童年的回忆", "初恋童话风格的插画", "留恋童年时光", "依恋童年的小镇"])
def test_longing_for_childhood_is_not_refused_as_minors(text: str) -> None:
    assert ContentFilter.default().evaluate(text).allowed
    assert not ContentFilter.default().evaluate("恋童").allowed


async def test_a_real_postgresql_nul_error_is_recognised(pg_database: str) -> None:
    from sqlalchemy import text

    from gateway.handlers import _sqlstate

    engine = create_engine(pg_database)
    try:
        with pytest.raises(sqlalchemy.exc.DBAPIError) as caught:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT length(:value)"), {"value": "a\x00b"})
    finally:
        await engine.dispose()

    assert _sqlstate(caught.value) == "22021"
    assert (await database_error(_request(), caught.value)).status_code == 422
