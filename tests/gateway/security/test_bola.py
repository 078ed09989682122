"""Object-level authorisation: another system's ids answer exactly like ids that do not exist (OWASP API1)."""

from __future__ import annotations

import asyncio
import re

from tests.conftest import Stack, auth
from tests.gateway.delivery.receiver import SECRET
from tests.gateway.security.routes import routes

PRIVATE_TEMPLATE = """---
name: crm.secret
record: campaign
private: true
---
A poster for {{ campaign.title }}.
"""


async def test_every_route_with_an_id_hides_other_systems_objects(stack: Stack) -> None:
    owner = await stack.system("crm", scopes="generate,batch,templates:write,connectors:write")
    other = await stack.system("oa", scopes="generate,batch,templates:write,connectors:write")
    # A connector with the same name as the private template (the routes share the {name} parameter).
    connector = await stack.client.post(
        "/v1/connectors",
        json={"name": "crm.secret", "kind": "webhook", "config": {"url": "http://127.0.0.1:9/", "secret": SECRET}},
        headers=auth(owner),
    )
    assert connector.status_code == 201, connector.text
    job = await stack.submit(owner, deliver=[{"connector": "crm.secret"}])
    done = await stack.wait(owner, job["id"])
    delivery = await _delivery_of(stack, owner, job["id"])
    saved = await stack.client.put("/v1/templates/crm.secret", json={"source": PRIVATE_TEMPLATE}, headers=auth(owner))
    assert saved.status_code == 201, saved.text
    batch = await stack.client.post(
        "/v1/recipes/crm.product_images",
        json={"record": {"name": "lamp", "category": "home"}, "options": {"roles": {"main": {"steps": 1}}}},
        headers=auth(owner),
    )
    assert batch.status_code == 202, batch.text
    ids = {
        "job_id": job["id"],
        "asset_id": done["assets"][0]["id"],
        "name": "crm.secret",
        "batch_id": batch.json()["id"],
        "delivery_id": delivery,
    }
    missing = {
        "job_id": "job_" + "0" * 28,
        "asset_id": "ast_" + "0" * 28,
        "name": "crm.nothing",
        "batch_id": "bat_" + "0" * 28,
        "delivery_id": "dlv_" + "0" * 28,
    }
    # Recipes are shared by every system (like the template library): nothing of another system's behind them.
    shared = ("/v1/recipes/",)
    with_ids = [
        r
        for r in routes(stack.app)
        # /files/{asset_id} has no owner check to test: its signature is the credential (test_delivery.py)
        if "{" in r.path and r.path.startswith("/v1/") and not r.path.startswith(("/v1/admin", *shared))
    ]
    assert with_ids, "no route with an id found"

    for route in with_ids:
        params = re.findall(r"\{([^}]+)\}", route.path)
        assert set(params) <= set(ids), f"{route.key}: add its id kind to this test"
        mine = route.path.format(**ids)
        absent = route.path.format(**missing)

        if route.method == "PUT":  # saving under the same name makes the other system its own private template
            continue
        body = {"record": {"title": "x"}}
        foreign = await stack.client.request(route.method, mine, headers=auth(other), json=body)
        nowhere = await stack.client.request(route.method, absent, headers=auth(other), json=body)

        assert foreign.status_code == 404, route.key
        assert foreign.json()["error"]["code"] == nowhere.json()["error"]["code"], route.key
        if route.method == "DELETE":
            continue  # the owner's own delete would remove what the routes after it need
        own = await stack.client.request(route.method, mine, headers=auth(owner), json=body)
        assert own.status_code != 404, route.key

    # The other system's attempt to cancel changed nothing.
    assert (await stack.client.get(f"/v1/jobs/{job['id']}", headers=auth(owner))).json()["status"] == "succeeded"


async def _delivery_of(stack: Stack, token: str, job_id: str) -> str:
    for _ in range(200):
        items = (await stack.client.get("/v1/deliveries", params={"job": job_id}, headers=auth(token))).json()["items"]
        if items:
            return str(items[0]["id"])
        await asyncio.sleep(0.05)
    raise AssertionError("the job's delivery was not written")
