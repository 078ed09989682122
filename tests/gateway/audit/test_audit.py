"""The audit log: admin actions and refusals, with actor, time, target and reason; append-only; no secrets."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from sqlalchemy import text

from gateway.db.engine import transaction
from tests.conftest import Stack, auth


async def audit(stack: Stack, admin: str, **filters: Any) -> list[dict[str, Any]]:
    await stack.res.audit.flush()
    response = await stack.client.get("/v1/admin/audit", params=filters, headers=auth(admin))
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_admin_actions_are_recorded_with_actor_target_and_details(stack: Stack) -> None:
    admin = await stack.admin()
    created = await stack.client.post(
        "/v1/admin/systems", json={"name": "crm", "scopes": ["generate"], "oauth": True}, headers=auth(admin)
    )
    token_id = created.json()["tokens"][0]["id"]
    await stack.client.patch("/v1/admin/systems/crm/quota", json={"images_per_day": 10}, headers=auth(admin))
    await stack.client.post(f"/v1/admin/systems/crm/tokens/{token_id}/revoke", headers=auth(admin))
    await stack.client.put(
        "/v1/admin/systems/crm/content-policy", json={"extra": {"brand": ["acme"]}}, headers=auth(admin)
    )
    await stack.client.post(
        "/v1/admin/backends",
        params={"probe": "false"},
        json={
            "name": "gpu-a",
            "kind": "a1111",
            "url": "http://127.0.0.1:9",
            "auth": {"type": "basic", "username": "u", "password": "hunter2"},
        },
        headers=auth(admin),
    )

    events = await audit(stack, admin, outcome="ok")

    actions = [e["action"] for e in reversed(events)]
    assert actions == ["system.create", "quota.set", "token.revoke", "content_policy.set", "backend.create"]
    actor = events[0]["actor"]
    assert actor.startswith("ops-")
    assert all(e["actor"] == actor and e["credential"].startswith("tok_") for e in events)
    by_action = {e["action"]: e for e in events}
    assert by_action["quota.set"]["target"] == "system:crm"
    assert by_action["quota.set"]["details"] == {"images_per_day": 10}
    assert by_action["token.revoke"]["details"] == {"token_id": token_id}
    assert by_action["backend.create"]["details"]["auth"] == "changed"
    assert by_action["content_policy.set"]["details"]["extra_terms"] == {"brand": 1}
    assert "hunter2" not in json.dumps(events)
    assert created.json()["token"] not in json.dumps(events)
    assert created.json()["client_secret"] not in json.dumps(events)


async def test_refusals_are_recorded_with_their_reason(stack: Stack) -> None:
    admin = await stack.admin()
    crm = await stack.system("crm", scopes="generate")
    await stack.client.patch("/v1/admin/systems/crm/quota", json={"images_per_day": 0}, headers=auth(admin))

    await stack.client.get("/v1/jobs", headers=auth("igw_not-a-real-key"))
    await stack.client.get("/v1/admin/systems", headers=auth(crm))
    await stack.client.post("/v1/jobs", json={"prompt": "a cup of tea"}, headers=auth(crm))

    events = await audit(stack, admin, outcome="refused")

    by_action = {e["action"]: e for e in events}
    assert by_action["auth.refused"]["reason"] == "malformed_api_key"
    assert by_action["auth.refused"]["actor"] == "anonymous"
    assert by_action["auth.refused"]["target"] == "route:GET /v1/jobs"
    assert by_action["scope.refused"]["actor"] == "crm"
    assert by_action["scope.refused"]["reason"] == "needs one of: admin"
    assert by_action["quota.refused"]["reason"] == "images_per_day_exceeded"
    assert "igw_not-a-real-key" not in json.dumps(events)


async def test_content_refusals_are_recorded_with_the_category_only(embedded: Stack) -> None:
    admin = await embedded.admin()
    crm = await embedded.system("crm")
    await embedded.client.put(
        "/v1/admin/systems/crm/content-policy", json={"extra": {"secret_project": ["bluebird"]}}, headers=auth(admin)
    )

    refused = await embedded.client.post("/v1/jobs", json={"prompt": "the Bluebird launch"}, headers=auth(crm))

    assert refused.status_code == 422
    events = await audit(embedded, admin, action="content")
    assert [(e["action"], e["reason"]) for e in events] == [("content.refused", "secret_project")]
    assert "bluebird" not in json.dumps(events).lower()


async def test_filters_and_pages(embedded: Stack) -> None:
    admin = await embedded.admin()
    for name in ("a1", "a2", "a3"):
        await embedded.client.post("/v1/admin/systems", json={"name": name}, headers=auth(admin))
    await embedded.client.patch("/v1/admin/systems/a2/quota", json={"concurrent_jobs": 1}, headers=auth(admin))

    assert [e["target"] for e in await audit(embedded, admin, target="system:a2")] == ["system:a2", "system:a2"]
    assert [e["action"] for e in await audit(embedded, admin, action="quota")] == ["quota.set"]
    first = await embedded.client.get("/v1/admin/audit", params={"limit": 2}, headers=auth(admin))
    page = first.json()
    second = await embedded.client.get(
        "/v1/admin/audit", params={"limit": 2, "cursor": page["next_cursor"]}, headers=auth(admin)
    )
    ids = [e["id"] for e in page["items"]] + [e["id"] for e in second.json()["items"]]
    assert len(ids) == len(set(ids)) == 4
    future = await audit(embedded, admin, since="2999-01-01T00:00:00Z")
    assert future == []


async def test_business_tokens_cannot_read_the_audit_log(embedded: Stack) -> None:
    crm = await embedded.system("crm", scopes="generate,batch,templates:write")

    response = await embedded.client.get("/v1/admin/audit", headers=auth(crm))

    assert response.status_code == 403


@pytest.mark.parametrize("statement", ["UPDATE audit_events SET reason = 'edited'", "DELETE FROM audit_events"])
async def test_the_database_refuses_to_change_the_audit_log(stack: Stack, statement: str) -> None:
    admin = await stack.admin()
    await stack.client.post("/v1/admin/systems", json={"name": "crm"}, headers=auth(admin))

    with pytest.raises(Exception, match="append-only"):
        async with transaction(stack.res.sessionmaker) as session:
            await session.execute(text(statement))

    assert len(await audit(stack, admin)) == 1


async def test_cli_actions_are_recorded_as_the_cli_user(tmp_path: Any) -> None:
    from tests.conftest import start_stack
    from tests.processes import cli_here, env_for

    env = env_for(tmp_path)
    # In a thread: the commands run their own event loops.
    assert (await asyncio.to_thread(cli_here, env, "systems", "add", "crm")).returncode == 0
    quota = await asyncio.to_thread(cli_here, env, "systems", "set-quota", "crm", "--images-per-day", "5")
    assert quota.returncode == 0
    async for stack in start_stack("embedded", tmp_path, None):
        events = await audit(stack, await stack.admin(), action="quota")
        assert len(events) == 1
        assert events[0]["actor"].startswith("cli:")
        assert events[0]["details"] == {"images_per_day": 5}
