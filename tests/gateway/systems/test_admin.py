"""The admin API for systems: create, read, change scopes, issue narrowed keys, revoke keys."""

from __future__ import annotations

import pytest

from tests.conftest import Stack, auth


async def test_create_returns_the_key_once_and_reads_never_show_it(embedded: Stack) -> None:
    admin = await embedded.admin()

    created = await embedded.client.post(
        "/v1/admin/systems", json={"name": "crm", "scopes": ["generate", "batch"]}, headers=auth(admin)
    )

    assert created.status_code == 201, created.text
    body = created.json()
    assert body["scopes"] == ["batch", "generate"]
    assert body["client_id"] is None and body["client_secret"] is None
    read = await embedded.client.get("/v1/admin/systems/crm", headers=auth(admin))
    listed = await embedded.client.get("/v1/admin/systems", headers=auth(admin))
    assert body["token"] not in read.text and body["token"] not in listed.text
    assert read.json()["tokens"][0]["prefix"] == body["token"][:12]
    assert "crm" in {s["name"] for s in listed.json()["items"]}
    job = await embedded.client.post("/v1/jobs", json={"prompt": "a cat"}, headers=auth(body["token"]))
    assert job.status_code == 202


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"name": "Bad Name"}, 422),
        ({"name": "crm", "scopes": ["root"]}, 422),
        ({"name": "crm", "oauth": "yes"}, 422),
        ({"name": "crm", "system_id": "sys_x"}, 422),
    ],
)
async def test_invalid_creations_are_refused(embedded: Stack, body: dict[str, object], status: int) -> None:
    admin = await embedded.admin()

    response = await embedded.client.post("/v1/admin/systems", json=body, headers=auth(admin))

    assert response.status_code == status
    assert (await embedded.client.get("/v1/admin/systems/crm", headers=auth(admin))).status_code == 404


async def test_a_taken_name_is_409(embedded: Stack) -> None:
    admin = await embedded.admin()
    await embedded.client.post("/v1/admin/systems", json={"name": "crm"}, headers=auth(admin))

    again = await embedded.client.post("/v1/admin/systems", json={"name": "crm"}, headers=auth(admin))

    assert again.status_code == 409
    assert again.json()["error"]["code"] == "system_exists"


async def test_changing_scopes_applies_to_existing_keys(embedded: Stack) -> None:
    admin = await embedded.admin()
    token = (await embedded.client.post("/v1/admin/systems", json={"name": "oa"}, headers=auth(admin))).json()["token"]

    await embedded.client.patch("/v1/admin/systems/oa", json={"scopes": ["batch"]}, headers=auth(admin))

    response = await embedded.client.post("/v1/jobs", json={"prompt": "a cat"}, headers=auth(token))
    assert response.status_code == 403


async def test_a_narrowed_key_holds_only_its_scopes_and_never_more_than_its_system(embedded: Stack) -> None:
    admin = await embedded.admin()
    await embedded.client.post(
        "/v1/admin/systems", json={"name": "crm", "scopes": ["generate", "batch"]}, headers=auth(admin)
    )

    narrowed = await embedded.client.post(
        "/v1/admin/systems/crm/tokens", json={"scopes": ["batch"]}, headers=auth(admin)
    )
    wider = await embedded.client.post("/v1/admin/systems/crm/tokens", json={"scopes": ["admin"]}, headers=auth(admin))

    assert narrowed.status_code == 201
    key = narrowed.json()["token"]
    assert (await embedded.client.post("/v1/jobs", json={"prompt": "a cat"}, headers=auth(key))).status_code == 403
    assert (await embedded.client.get("/v1/jobs", headers=auth(key))).status_code == 200
    assert wider.status_code == 422
    assert len((await embedded.client.get("/v1/admin/systems/crm", headers=auth(admin))).json()["tokens"]) == 2


async def test_revoking_a_key_refuses_it_and_another_systems_key_id_is_404(embedded: Stack) -> None:
    admin = await embedded.admin()
    crm = (await embedded.client.post("/v1/admin/systems", json={"name": "crm"}, headers=auth(admin))).json()
    oa = (await embedded.client.post("/v1/admin/systems", json={"name": "oa"}, headers=auth(admin))).json()

    foreign = await embedded.client.post(
        f"/v1/admin/systems/crm/tokens/{oa['tokens'][0]['id']}/revoke", headers=auth(admin)
    )
    revoked = await embedded.client.post(
        f"/v1/admin/systems/crm/tokens/{crm['tokens'][0]['id']}/revoke", headers=auth(admin)
    )

    assert foreign.status_code == 404
    assert foreign.json()["error"]["code"] == "token_not_found"
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert (await embedded.client.get("/v1/jobs", headers=auth(crm["token"]))).status_code == 401
    assert (await embedded.client.get("/v1/jobs", headers=auth(oa["token"]))).status_code == 200
