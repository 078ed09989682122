"""Application-wide behaviour: error envelope, request ids, health probes, OpenAPI."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import sqlalchemy.exc
from sqlalchemy import text

from gateway.db.migrate import upgrade
from gateway.deps import get_read_session
from gateway.main import create_app
from tests.conftest import Stack, auth, make_settings, start_stack
from tests.services import create_pg_database, drop_pg_database


async def test_unknown_route_and_wrong_method_use_the_error_envelope(embedded: Stack) -> None:
    token = await embedded.system()
    missing = await embedded.client.get("/v1/nothing-here", headers=auth(token))
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = await embedded.client.delete("/v1/jobs", headers=auth(token))
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"
    assert wrong.headers["Allow"] == "GET, POST"  # every route on the path, not only the first


async def test_request_id_is_echoed_or_minted(embedded: Stack) -> None:
    given = await embedded.client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    minted = await embedded.client.get("/healthz")
    assert len(minted.headers["X-Request-ID"]) == 32
    hostile = await embedded.client.get("/healthz", headers={"X-Request-ID": "a b\tc" + "x" * 200})
    assert hostile.headers["X-Request-ID"] != "a b\tc" + "x" * 200


async def test_a_bug_answers_500_envelope_without_internals(embedded: Stack) -> None:
    token = await embedded.system()

    async def broken_session():  # type: ignore[no-untyped-def]
        raise RuntimeError("secret internal detail /srv/app.py line 12")
        yield

    embedded.app.dependency_overrides[get_read_session] = broken_session
    transport = httpx.ASGITransport(app=embedded.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/v1/jobs", headers={**auth(token), "X-Request-ID": "req-500"})
    embedded.app.dependency_overrides.clear()
    assert response.status_code == 500
    body = response.json()
    assert body["error"]["code"] == "internal_error"
    assert body["error"]["details"] == {"request_id": "req-500"}
    assert "secret internal detail" not in response.text
    assert "Traceback" not in response.text


async def test_health_and_readiness_need_no_token(stack: Stack) -> None:
    assert (await stack.client.get("/healthz")).json() == {"status": "ok"}
    ready = await stack.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "queue": "ok"}
    assert ready.json()["queue_mode"] == stack.mode


async def test_openapi_documents_the_routes_and_bearer_auth(embedded: Stack) -> None:
    schema = (await embedded.client.get("/openapi.json")).json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/assets/{asset_id}"} <= set(
        schema["paths"]
    )
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert (await embedded.client.get("/docs")).status_code == 200


async def test_with_redis_down_jobs_are_still_accepted_and_readyz_says_unavailable(tmp_path: Path) -> None:
    url = await create_pg_database()
    try:
        await upgrade(url)
        settings = make_settings(tmp_path, database_url=url, redis_url="redis://127.0.0.1:1/0")
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                stack = Stack(mode="distributed", app=app, res=app.state.resources, client=client)
                token = await stack.system()
                job = await stack.submit(token)
                assert job["status"] == "queued"
                ready = await client.get("/readyz")
                assert ready.status_code == 503
                assert ready.json()["checks"]["database"] == "ok"
                assert ready.json()["checks"]["queue"].startswith("error")
    finally:
        await drop_pg_database(url)


async def test_body_over_the_limit_is_413_whether_declared_or_streamed(tmp_path: Path) -> None:
    async for stack in start_stack("embedded", tmp_path, None, max_body_bytes=4096):
        token = await stack.system()
        declared = await stack.client.post(
            "/v1/jobs", content=b"{" + b" " * 5000 + b"}", headers={**auth(token), "Content-Type": "application/json"}
        )

        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(10):
                yield b" " * 1000

        streamed = await stack.client.post(
            "/v1/jobs", content=chunks(), headers={**auth(token), "Content-Type": "application/json"}
        )
        for response in (declared, streamed):
            assert response.status_code == 413
            assert response.json()["error"]["code"] == "payload_too_large"
        fits = await stack.client.post("/v1/jobs", json={"prompt": "x" * 3000}, headers=auth(token))
        assert fits.status_code == 202
        assert (await stack.client.get("/v1/jobs", headers=auth(token))).json()["items"][0]["id"] == fits.json()["id"]


async def test_readyz_answers_at_once_while_a_writer_holds_the_sqlite_lock(embedded: Stack) -> None:
    async with embedded.res.sessionmaker() as writer:
        await writer.execute(text("UPDATE jobs SET progress = progress"))
        ready = await asyncio.wait_for(embedded.client.get("/readyz"), timeout=3)
        await writer.rollback()
    assert ready.status_code == 200


async def test_unavailable_database_in_a_route_is_503_with_retry_after(embedded: Stack) -> None:
    token = await embedded.system()

    async def unavailable():  # type: ignore[no-untyped-def]
        raise sqlalchemy.exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached")
        yield

    embedded.app.dependency_overrides[get_read_session] = unavailable
    response = await embedded.client.get("/v1/jobs", headers={**auth(token), "X-Request-ID": "r-503"})
    embedded.app.dependency_overrides.clear()
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.headers["X-Request-ID"] == "r-503"
    assert response.json()["error"]["code"] == "unavailable"


async def test_unavailable_database_while_checking_the_key_is_503_not_401(embedded: Stack) -> None:
    token = await embedded.system()
    working = embedded.res.read_sessionmaker

    def refused():  # type: ignore[no-untyped-def]
        raise ConnectionRefusedError(111, "Connection refused")

    embedded.res.read_sessionmaker = refused  # type: ignore[assignment]
    try:
        response = await embedded.client.get("/v1/jobs", headers=auth(token))
    finally:
        embedded.res.read_sessionmaker = working
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"
    assert (await embedded.client.get("/v1/jobs", headers=auth(token))).status_code == 200


async def test_api_mounted_under_a_root_path_authenticates_v1(embedded: Stack) -> None:
    token = await embedded.system()
    transport = httpx.ASGITransport(app=embedded.app, root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        ok = await client.get("/api/v1/jobs", headers=auth(token))
        anonymous = await client.get("/api/v1/jobs")
        health = await client.get("/api/healthz")
    assert (ok.status_code, anonymous.status_code, health.status_code) == (200, 401, 200)
