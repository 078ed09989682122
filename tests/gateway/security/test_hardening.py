"""Hardening: CORS off unless configured, no secrets in logs, and one system's flood does not starve another."""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path

import pytest

from tests.conftest import Stack, auth, start_stack, wrong


async def test_cors_is_off_by_default(embedded: Stack) -> None:
    preflight = await embedded.client.options(
        "/v1/jobs", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    simple = await embedded.client.get("/healthz", headers={"Origin": "https://evil.example"})

    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in simple.headers


async def test_cors_allows_only_the_configured_origins(tmp_path: Path) -> None:
    async for stack in start_stack("embedded", tmp_path, None, cors_origins="https://crm.example.com"):
        allowed = await stack.client.options(
            "/v1/jobs", headers={"Origin": "https://crm.example.com", "Access-Control-Request-Method": "POST"}
        )
        other = await stack.client.options(
            "/v1/jobs", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )

        assert allowed.headers["access-control-allow-origin"] == "https://crm.example.com"
        assert "access-control-allow-origin" not in other.headers


async def test_no_key_or_secret_reaches_the_logs(embedded: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    admin = await embedded.admin()
    created = (
        await embedded.client.post("/v1/admin/systems", json={"name": "crm", "oauth": True}, headers=auth(admin))
    ).json()
    secrets = [admin, created["token"], created["client_secret"]]
    basic = base64.b64encode(f"{created['client_id']}:{created['client_secret']}".encode()).decode()
    access = (
        await embedded.client.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, headers={"Authorization": f"Basic {basic}"}
        )
    ).json()["access_token"]
    secrets.append(access)
    await embedded.client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers={"Authorization": f"Basic {basic}x"}
    )
    job = await embedded.submit(created["token"])
    await embedded.wait(created["token"], job["id"])
    await embedded.client.get("/v1/jobs", headers=auth(wrong(created["token"])))
    await embedded.client.get("/v1/jobs", headers=auth(access + "x"))
    await embedded.res.audit.flush()

    logged = caplog.text
    assert "job.finished" in logged  # the logs of these requests were captured
    for secret in secrets:
        assert secret not in logged
        assert secret[:-1] not in logged


async def test_a_flood_from_one_system_does_not_starve_another(tmp_path: Path) -> None:
    async for stack in start_stack("embedded", tmp_path, None, preview_step_ms=100.0):
        admin = await stack.admin()
        flood, other = await stack.system("flood"), await stack.system("other")
        await stack.client.patch("/v1/admin/systems/flood/quota", json={"concurrent_jobs": 3}, headers=auth(admin))
        body = {"prompt": "a teapot", "width": 256, "height": 256, "steps": 20}

        responses = await asyncio.gather(
            *[stack.client.post("/v1/jobs", json=body, headers=auth(flood)) for _ in range(300)]
        )
        job = await stack.submit(other, steps=2)
        done = await stack.wait(other, job["id"], timeout=15)

        assert [r.status_code for r in responses].count(202) == 3
        assert done["status"] == "succeeded"
