"""Inputs that once reached the database or a parser unchecked: each gets a 4xx (or is stored cleaned), never a 500."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import Stack, auth


@pytest.mark.parametrize(
    "path",
    [
        "/v1/admin/audit?actor=%00",
        "/v1/admin/audit?target=a%00b",
        "/v1/admin/systems/a%00b",
        "/v1/admin/systems/crm/tokens/a%00/revoke",
        "/v1/admin/backends/gpu%00",
        "/v1/admin/audit?since=0001-01-01T00:00:00%2B23:59",
        "/v1/admin/audit?until=9999-12-31T23:59:59-23:59",
        "/v1/admin/audit?since=0.5",
    ],
)
async def test_control_characters_and_odd_dates_in_admin_routes_are_422(stack: Stack, path: str) -> None:
    admin = await stack.admin()
    method = "POST" if path.endswith("/revoke") else "GET"

    response = await stack.client.request(method, path, headers=auth(admin))

    assert response.status_code == 422, response.text


@pytest.mark.parametrize("since", ["2026-12-01T00:00:00", "2026-12-01", "2026-12-01T01:00:00+01:00"])
async def test_dates_without_an_offset_are_utc(embedded: Stack, since: str) -> None:
    admin = await embedded.admin()

    response = await embedded.client.get("/v1/admin/audit", params={"since": since}, headers=auth(admin))

    assert response.status_code == 200, response.text


async def test_a_long_request_id_does_not_break_an_admin_action_or_its_record(stack: Stack) -> None:
    admin = await stack.admin()
    headers = {**auth(admin), "X-Request-ID": "r" * 120}

    response = await stack.client.post("/v1/admin/systems", json={"name": "crm"}, headers=headers)

    assert response.status_code == 201, response.text
    await stack.res.audit.flush()
    events = (await stack.client.get("/v1/admin/audit", headers=auth(admin))).json()["items"]
    assert events[0]["action"] == "system.create"


async def test_one_unstorable_refusal_does_not_lose_the_others(stack: Stack) -> None:
    admin = await stack.admin()
    await stack.client.get("/v1/jobs/%00", headers=auth("igw_bad"))
    await stack.client.get("/v1/jobs", headers=auth("igw_bad"))
    await stack.client.get("/v1/usage", headers={**auth("igw_bad"), "X-Request-ID": "x" * 128})

    await stack.res.audit.flush()
    events = (await stack.client.get("/v1/admin/audit", params={"action": "auth"}, headers=auth(admin))).json()["items"]

    assert len(events) == 3
    assert "route:GET /v1/jobs/?" in {e["target"] for e in events}


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Basic é".encode("latin-1")},
        {"Authorization": "Basic"},
        {"Authorization": "Basic ==="},
    ],
)
async def test_odd_basic_headers_at_the_token_endpoint_are_401(stack: Stack, headers: dict[str, Any]) -> None:
    response = await stack.client.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=headers)

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


@pytest.mark.parametrize("client_id", ["\x00", "cli_" + "0" * 28 + "junk", "x" * 5000])
async def test_odd_client_ids_are_invalid_clients(stack: Stack, client_id: str) -> None:
    admin = await stack.admin()
    created = (
        await stack.client.post("/v1/admin/systems", json={"name": "crm", "oauth": True}, headers=auth(admin))
    ).json()
    if client_id.endswith("junk"):
        client_id = created["client_id"] + "junk"

    response = await stack.client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": created["client_secret"]},
    )

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


async def test_a_missing_grant_type_is_an_invalid_request(embedded: Stack) -> None:
    admin = await embedded.admin()
    created = (
        await embedded.client.post("/v1/admin/systems", json={"name": "crm", "oauth": True}, headers=auth(admin))
    ).json()

    response = await embedded.client.post(
        "/oauth/token",
        content=f"client_id={created['client_id']}&client_secret={created['client_secret']}",
        headers={"Content-Type": "Application/X-WWW-Form-Urlencoded"},
    )

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


async def test_an_unencodable_host_in_an_input_url_is_refused(embedded: Stack) -> None:
    token = await embedded.system()

    response = await embedded.client.post(
        "/v1/jobs", json={"prompt": "a cat", "init_image": "http://xn--a/"}, headers=auth(token)
    )

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "url_refused"


async def test_an_allowed_term_cannot_cover_the_minors_category(embedded: Stack) -> None:
    await embedded.system("crm")
    admin = await embedded.admin()

    response = await embedded.client.put(
        "/v1/admin/systems/crm/content-policy", json={"allow": ["fine", "child porn"]}, headers=auth(admin)
    )

    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "allow.1"


async def test_a_job_bigger_than_the_whole_daily_limit_is_422_not_429(embedded: Stack) -> None:
    token = await embedded.system("crm")
    admin = await embedded.admin()
    await embedded.client.patch("/v1/admin/systems/crm/quota", json={"images_per_day": 3}, headers=auth(admin))

    response = await embedded.client.post("/v1/jobs", json={"prompt": "a cat", "n": 4}, headers=auth(token))

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "exceeds_daily_limit"


async def test_racing_retries_with_one_idempotency_key_get_the_same_job_under_a_tight_quota(stack: Stack) -> None:
    token = await stack.system("crm")
    admin = await stack.admin()
    await stack.client.patch("/v1/admin/systems/crm/quota", json={"concurrent_jobs": 1}, headers=auth(admin))
    body: dict[str, Any] = {"prompt": "a cat", "width": 256, "height": 256, "steps": 2}

    for attempt in range(5):
        key = {"Idempotency-Key": f"order-{attempt}"}
        pair = await asyncio.gather(
            *[stack.client.post("/v1/jobs", json=body, headers={**auth(token), **key}) for _ in range(2)]
        )
        assert [r.status_code for r in pair] == [202, 202], [r.text for r in pair]
        assert pair[0].json()["id"] == pair[1].json()["id"]
        await stack.wait(token, pair[0].json()["id"])  # the one slot is free again for the next key
    usage = (await stack.client.get("/v1/usage", headers=auth(token))).json()["used"]
    assert usage["images"] == 5
