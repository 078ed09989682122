"""The outbox and the relay end to end: jobs name targets, success writes one delivery per target, the relay
delivers at least once with a stable idempotency key, retries on a schedule, ends dead, and replays."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.delivery.relay import Relay, claim_due
from tests.conftest import Stack, auth, start_stack
from tests.gateway.delivery.receiver import SECRET, Receiver, running

FAST = {
    "outbound_allowlist": "127.0.0.1/32",
    "delivery_retry_schedule": "0.05,0.05,0.05",
    "delivery_poll_seconds": 0.05,
    "delivery_circuit_failures": 100,
}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running(Receiver()) as r:
        yield r


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Stack]:
    async for stack in start_stack("embedded", tmp_path, None, **FAST):
        yield stack


async def add_webhook(stack: Stack, token: str, url: str, name: str = "hooks") -> httpx.Response:
    return await stack.client.post(
        "/v1/connectors",
        json={"name": name, "kind": "webhook", "config": {"url": url, "secret": SECRET}},
        headers=auth(token),
    )


async def settle(
    stack: Stack, token: str, job_id: str, *, until: str = "delivered", timeout: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        listed = (await stack.client.get("/v1/deliveries", params={"job": job_id}, headers=auth(token))).json()
        items = listed["items"]
        if items and all(d["status"] == until for d in items):
            return (await stack.client.get(f"/v1/deliveries/{items[0]['id']}", headers=auth(token))).json()
        assert time.monotonic() < deadline, f"deliveries not {until}: {items}"
        await asyncio.sleep(0.05)


async def test_a_connector_is_configured_checked_and_its_secret_never_returned(
    gateway: Stack, receiver: Receiver
) -> None:
    token = await gateway.system("crm", "generate,batch,connectors:write")

    created = await add_webhook(gateway, token, receiver.url)
    again = await add_webhook(gateway, token, receiver.url)
    bad = await gateway.client.post(
        "/v1/connectors",
        json={"name": "x", "kind": "webhook", "config": {"url": "ftp://x", "secret": SECRET}},
        headers=auth(token),
    )
    unknown = await gateway.client.post(
        "/v1/connectors", json={"name": "y", "kind": "carrier-pigeon", "config": {}}, headers=auth(token)
    )
    kinds = (await gateway.client.get("/v1/connectors/kinds", headers=auth(token))).json()["items"]
    listed = await gateway.client.get("/v1/connectors", headers=auth(token))
    replaced = await gateway.client.put(
        "/v1/connectors/hooks", json={"kind": "webhook", "config": {"url": receiver.url + "?v=2"}}, headers=auth(token)
    )
    tested = await gateway.client.post("/v1/connectors/hooks/test", headers=auth(token))
    not_a_name = await gateway.client.put("/v1/connectors/kinds", json={"kind": "webhook"}, headers=auth(token))

    assert created.status_code == 201, created.text
    assert created.json()["secrets"] == ["secret"] and "secret" not in created.json()["config"]
    assert SECRET not in created.text + listed.text + replaced.text
    assert (again.status_code, bad.status_code, unknown.status_code) == (409, 422, 422)
    assert bad.json()["error"]["details"][0]["field"] == "config.url"
    webhook = next(k for k in kinds if k["kind"] == "webhook")
    assert webhook["capability"] == "webhook" and webhook["secret_fields"] == ["previous_secret", "secret"]
    assert "url" in webhook["config_schema"]["properties"]
    assert not_a_name.status_code == 405 and not_a_name.headers["allow"] == "GET"  # `kinds` is not a connector
    assert replaced.status_code == 200 and replaced.json()["secrets"] == ["secret"]  # kept
    assert tested.json()["ok"] is True, tested.text
    assert receiver.requests[-1]["verified"]  # the ping was signed with the kept secret


async def test_a_job_with_a_target_is_delivered_once_with_a_signed_link(gateway: Stack, receiver: Receiver) -> None:
    token = await gateway.system("crm", "generate,batch,connectors:write")
    await add_webhook(gateway, token, receiver.url)

    job = await gateway.submit(token, deliver=[{"connector": "hooks"}])
    done = await gateway.wait(token, job["id"])
    delivery = await settle(gateway, token, job["id"])

    assert done["deliver"] == [{"connector": "hooks"}]
    assert (delivery["attempts"], delivery["idempotency_key"]) == (1, f"{job['id']}:0:hooks")
    assert [a["outcome"] for a in delivery["attempt_log"]] == ["delivered"]
    assert len(receiver.effects) == 1
    event = receiver.effects[delivery["idempotency_key"]]
    assert event["type"] == "job.succeeded" and event["data"]["job_id"] == job["id"]
    link = event["data"]["assets"][0]["url"]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway.app), base_url="http://t") as anonymous:
        path = link.replace("http://127.0.0.1:8000", "")
        fetched = await anonymous.get(path)
        tampered = await anonymous.get(path[:-2] + ("11" if path.endswith("00") else "00"))
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert tampered.status_code == 404


async def test_a_receiver_failing_at_first_gets_exactly_one_effect(gateway: Stack, receiver: Receiver) -> None:
    token = await gateway.system("crm", "generate,batch,connectors:write")
    await add_webhook(gateway, token, receiver.url)
    receiver.fail_first = 2

    job = await gateway.submit(token, deliver=[{"connector": "hooks"}])
    delivery = await settle(gateway, token, job["id"])

    assert delivery["attempts"] == 3
    assert [a["outcome"] for a in delivery["attempt_log"]] == ["retry", "retry", "delivered"]
    assert [a["status_code"] for a in delivery["attempt_log"]] == [503, 503, None]
    ids = {r["headers"]["webhook-id"] for r in receiver.requests}
    assert ids == {delivery["idempotency_key"]} and len(receiver.requests) == 3 and len(receiver.effects) == 1


async def test_a_receiver_down_for_the_whole_schedule_ends_dead_and_a_replay_delivers(
    gateway: Stack, receiver: Receiver
) -> None:
    token = await gateway.system("crm", "generate,batch,connectors:write")
    await add_webhook(gateway, token, receiver.url)
    receiver.always = 503

    job = await gateway.submit(token, deliver=[{"connector": "hooks"}])
    dead = await settle(gateway, token, job["id"], until="dead")
    receiver.always = None
    replayed = await gateway.client.post(f"/v1/deliveries/{dead['id']}/replay", headers=auth(token))
    delivered = await settle(gateway, token, job["id"])
    listed = (await gateway.client.get("/v1/deliveries", params={"status": "delivered"}, headers=auth(token))).json()

    assert dead["attempts"] == 4  # the schedule has 3 delays: 4 attempts
    assert dead["last_error"].startswith("the receiver answered 503")
    assert replayed.status_code == 202
    assert delivered["status"] == "delivered" and len(receiver.effects) == 1
    assert [d["id"] for d in listed["items"]] == [dead["id"]]


@pytest.mark.parametrize("status", [400, 410])
async def test_a_permanent_refusal_is_dead_at_once(gateway: Stack, receiver: Receiver, status: int) -> None:
    token = await gateway.system("crm", "generate,batch,connectors:write")
    await add_webhook(gateway, token, receiver.url)
    receiver.always = status

    job = await gateway.submit(token, deliver=[{"connector": "hooks"}])
    dead = await settle(gateway, token, job["id"], until="dead")

    assert dead["attempts"] == 1 and dead["attempt_log"][0]["status_code"] == status


async def test_retry_after_is_honoured(tmp_path: Path, receiver: Receiver) -> None:
    async for stack in start_stack("embedded", tmp_path, None, **{**FAST, "delivery_retry_schedule": "0.01"}):
        token = await stack.system("crm", "generate,batch,connectors:write")
        await add_webhook(stack, token, receiver.url)
        receiver.fail_first, receiver.fail_status, receiver.retry_after = 1, 429, "1"

        job = await stack.submit(token, deliver=[{"connector": "hooks"}])
        delivery = await settle(stack, token, job["id"])

        first, second = delivery["attempt_log"]
        gap = (
            __import__("datetime").datetime.fromisoformat(second["started_at"])
            - __import__("datetime").datetime.fromisoformat(first["started_at"])
        ).total_seconds()
        assert first["status_code"] == 429 and gap >= 0.9, gap


async def test_bad_targets_are_refused_at_submission_and_nothing_is_queued(gateway: Stack, receiver: Receiver) -> None:
    token = await gateway.system("crm", "generate,batch,connectors:write")
    await add_webhook(gateway, token, receiver.url)
    cases = [
        ({"deliver": [{"connector": "nope"}]}, "deliver.0.connector"),
        ({"deliver": [{"connector": "hooks", "extra": 1}]}, "deliver.0.extra"),
        ({"deliver": [{"connector": "hooks"}, {"connector": "hooks"}]}, "deliver.1"),
        ({"callback_url": receiver.url}, "callback_url"),  # no callback secret yet
    ]
    for extra, field in cases:
        response = await gateway.client.post("/v1/jobs", json={"prompt": "x", **extra}, headers=auth(token))
        assert response.status_code == 422, (extra, response.text)
        assert response.json()["error"]["details"][0]["field"] == field, response.text
    await gateway.client.post("/v1/callback-secret", headers=auth(token))
    metadata = await gateway.client.post(
        "/v1/jobs", json={"prompt": "x", "callback_url": "http://169.254.169.254/latest"}, headers=auth(token)
    )
    assert metadata.status_code == 422 and "may call" in metadata.json()["error"]["message"]
    reserved = await gateway.client.post(
        "/v1/connectors",
        json={"name": "callback", "kind": "webhook", "config": {"url": receiver.url, "secret": SECRET}},
        headers=auth(token),
    )
    assert reserved.status_code == 422 and "reserved" in reserved.text
    assert (await gateway.client.get("/v1/jobs", headers=auth(token))).json()["items"] == []


async def test_callbacks_are_signed_with_the_systems_secret_and_both_secrets_while_rotating(
    gateway: Stack, receiver: Receiver
) -> None:
    token = await gateway.system("crm", "generate,batch")
    first = (await gateway.client.post("/v1/callback-secret", headers=auth(token))).json()
    receiver.secrets = [first["secret"]]

    job = await gateway.submit(token, callback_url=receiver.url)
    await settle(gateway, token, job["id"])
    second = (await gateway.client.post("/v1/callback-secret", headers=auth(token))).json()
    receiver.secrets = [first["secret"]]  # a receiver not yet switched over still verifies
    job2 = await gateway.submit(token, callback_url=receiver.url)
    await settle(gateway, token, job2["id"])

    receiver.secrets = [second["secret"]]  # a receiver already switched over verifies too
    job3 = await gateway.submit(token, callback_url=receiver.url)
    await settle(gateway, token, job3["id"])

    assert (first["previous_still_signs"], second["previous_still_signs"]) == (False, True)
    assert len(receiver.effects) == 3 and all(r["verified"] for r in receiver.requests)
    assert len(receiver.requests[-1]["headers"]["webhook-signature"].split(" ")) == 2


async def test_a_batch_callback_fires_once_when_the_whole_batch_is_done(gateway: Stack, receiver: Receiver) -> None:
    token = await gateway.system("crm", "generate,batch,connectors:write")
    secret = (await gateway.client.post("/v1/callback-secret", headers=auth(token))).json()["secret"]
    receiver.secrets = [secret, SECRET]  # the callback's and the connector's
    await add_webhook(gateway, token, receiver.url)
    record = {"id": "P-9", "name": "Lamp", "category": "home", "features": ["dimmable"]}
    body = {
        "record": record,
        "options": {
            "roles": {r: {"steps": 1} for r in ("main", "scene", "detail")},
            "deliver": [{"connector": "hooks"}],
        },
        "callback_url": receiver.url,
    }

    batch = (await gateway.client.post("/v1/recipes/crm.product_images", json=body, headers=auth(token))).json()
    deadline = time.monotonic() + 30
    while len(receiver.effects) < 4:  # 3 jobs + the batch
        assert time.monotonic() < deadline, receiver.effects.keys()
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)

    events = sorted(e["type"] for e in receiver.effects.values())
    assert events == ["batch.completed", "job.succeeded", "job.succeeded", "job.succeeded"]
    completed = receiver.effects[f"{batch['id']}:callback"]
    assert completed["data"]["record_id"] == "P-9" and len(completed["data"]["assets"]) == 3
    assert completed["data"]["status"] == "succeeded"


async def test_a_crash_writing_the_result_loses_no_delivery_and_makes_none_twice(
    gateway: Stack, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.delivery import service

    token = await gateway.system("crm", "generate,batch,connectors:write")
    await add_webhook(gateway, token, receiver.url)
    real = service.enqueue_for_job
    calls = 0

    async def crash_once(session: Any, job: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the process died while writing the result")
        return await real(session, job)

    monkeypatch.setattr(service, "enqueue_for_job", crash_once)
    job = await gateway.submit(token, deliver=[{"connector": "hooks"}])
    done = await gateway.wait(token, job["id"])
    delivery = await settle(gateway, token, job["id"])

    # The first run died inside the result's transaction: neither its result nor its delivery was kept; the job
    # ran again (its lease expired), and its one delivery was written with that result.
    assert (done["status"], done["attempts"], calls) == ("succeeded", 2, 2)
    listed = (await gateway.client.get("/v1/deliveries", params={"job": job["id"]}, headers=auth(token))).json()
    assert [d["id"] for d in listed["items"]] == [delivery["id"]]
    assert len(receiver.requests) == 1 and len(receiver.effects) == 1


async def test_two_relays_racing_deliver_each_row_once(tmp_path: Path, receiver: Receiver, pg_database: str) -> None:
    async for stack in start_stack("distributed", tmp_path, pg_database, **{**FAST, "delivery_relay": False}):
        token = await stack.system("crm", "generate,batch,connectors:write")
        await add_webhook(stack, token, receiver.url)
        jobs = [await stack.submit(token, deliver=[{"connector": "hooks"}]) for _ in range(12)]
        for job in jobs:
            await stack.wait(token, job["id"])

        one, two = Relay(stack.res), Relay(stack.res)
        rounds = 0
        while len(receiver.requests) < 12 and rounds < 50:
            await asyncio.gather(one.run_once(), two.run_once())
            rounds += 1

        assert len(receiver.requests) == 12 and len(receiver.effects) == 12  # each once: no second request
        listed = (await stack.client.get("/v1/deliveries", params={"limit": 100}, headers=auth(token))).json()
        assert {d["status"] for d in listed["items"]} == {"delivered"} and {d["attempts"] for d in listed["items"]} == {
            1
        }


async def test_a_relay_killed_mid_delivery_causes_no_second_effect(tmp_path: Path, receiver: Receiver) -> None:
    settings = {**FAST, "delivery_relay": False, "delivery_lease_seconds": 0.3}
    async for stack in start_stack("embedded", tmp_path, None, **settings):
        token = await stack.system("crm", "generate,batch,connectors:write")
        await add_webhook(stack, token, receiver.url)
        job = await stack.submit(token, deliver=[{"connector": "hooks"}])
        await stack.wait(token, job["id"])
        dying = Relay(stack.res)

        async with stack.res.sessionmaker() as session, session.begin():
            claimed = await claim_due(session, 10, 0.3)
        row_id, _lease = claimed[0]
        # It sent the request, and died before writing down that it had.
        async with stack.res.read_sessionmaker() as session:
            from gateway.delivery.models import ConnectorInstance, DeliveryRow

            row = await session.get(DeliveryRow, row_id)
            assert row is not None
            instance = await session.get(ConnectorInstance, row.connector_id)
            delivery, _ = await dying._prepare(session, row, instance, None)
        assert delivery is not None
        await dying._connector(row, instance, None).deliver(delivery)
        await asyncio.sleep(0.4)  # its lease expires
        survivor = Relay(stack.res)
        attempts = await survivor.run_once()

        final = await settle(stack, token, job["id"])
        assert attempts == 1 and len(receiver.requests) == 2  # delivered twice (at least once)...
        assert len(receiver.effects) == 1  # ...one effect: the receiver dropped the repeat by its webhook-id
        assert final["attempts"] == 2  # the dead relay's attempt counts (it was claimed)...
        assert [a["outcome"] for a in final["attempt_log"]] == ["delivered"]  # ...but only the survivor's is logged


async def test_a_replay_of_a_delivery_on_its_way_is_409_and_attempts_keep_their_numbers(
    tmp_path: Path, receiver: Receiver
) -> None:
    async for stack in start_stack("embedded", tmp_path, None, **{**FAST, "delivery_relay": False}):
        token = await stack.system("crm", "generate,batch,connectors:write")
        await add_webhook(stack, token, receiver.url)
        receiver.always = 400
        job = await stack.submit(token, deliver=[{"connector": "hooks"}])
        await stack.wait(token, job["id"])
        listed = (await stack.client.get("/v1/deliveries", params={"job": job["id"]}, headers=auth(token))).json()
        delivery_id = listed["items"][0]["id"]

        pending = await stack.client.post(f"/v1/deliveries/{delivery_id}/replay", headers=auth(token))
        await Relay(stack.res).run_once()  # 400: dead
        receiver.always = None
        first = await stack.client.post(f"/v1/deliveries/{delivery_id}/replay", headers=auth(token))
        second = await stack.client.post(f"/v1/deliveries/{delivery_id}/replay", headers=auth(token))
        await Relay(stack.res).run_once()
        final = (await stack.client.get(f"/v1/deliveries/{delivery_id}", headers=auth(token))).json()

        assert (pending.status_code, first.status_code, second.status_code) == (409, 202, 409)
        assert final["status"] == "delivered" and final["last_error"] is None
        assert [(a["number"], a["outcome"]) for a in final["attempt_log"]] == [(1, "dead"), (2, "delivered")]


async def test_an_open_circuit_spares_a_target_that_is_down(tmp_path: Path, receiver: Receiver) -> None:
    settings = {
        **FAST,
        "delivery_relay": False,
        "delivery_concurrency": 1,  # one attempt at a time, so the order of failures is known
        "delivery_circuit_failures": 2,
        "delivery_circuit_seconds": 3600,
    }
    async for stack in start_stack("embedded", tmp_path, None, **settings):
        token = await stack.system("crm", "generate,batch,connectors:write")
        await add_webhook(stack, token, receiver.url)
        receiver.always = 503
        jobs = [await stack.submit(token, deliver=[{"connector": "hooks"}]) for _ in range(4)]
        for job in jobs:
            await stack.wait(token, job["id"])
        relay = Relay(stack.res)
        for _ in range(6):
            await relay.run_once()
            await asyncio.sleep(0.06)

        connector = (await stack.client.get("/v1/connectors/hooks", headers=auth(token))).json()
        listed = (await stack.client.get("/v1/deliveries", headers=auth(token))).json()["items"]
        assert len(receiver.requests) == 2  # two failures opened the circuit: nothing more was sent
        assert connector["circuit"]["failures"] == 2 and connector["circuit"]["open_until"] is not None
        assert {d["status"] for d in listed} == {"pending"}  # waiting, not dead: no attempt was spent


def test_a_huge_retry_after_is_capped_at_a_day() -> None:
    from gateway.delivery.relay import next_delay

    assert next_delay([5.0], 1, 10**12) == 86400.0
    assert next_delay([5.0], 2, None) is None  # the schedule is spent


async def test_a_recipe_delivers_every_job_to_a_dingtalk_group_through_the_relay(gateway: Stack) -> None:
    from gateway.emulators import dingtalk
    from tests.live import serve_asgi

    robot = dingtalk.create_app("robot-token", "SECrobot")
    token = await gateway.system("oa", "generate,batch,connectors:write")
    async with serve_asgi(robot) as base:
        config = {"webhook_url": f"{base}/robot/send", "access_token": "robot-token", "secret": "SECrobot"}
        created = await gateway.client.post(
            "/v1/connectors", json={"name": "oa-group", "kind": "dingtalk", "config": config}, headers=auth(token)
        )
        assert created.status_code == 201, created.text
        body = {
            "record": {
                "id": "R-1",
                "title": "季报",
                "sections": [
                    {"type": "sales_analysis", "title": "销售", "content": "华东区域销售额同比增长35%。"},
                    {"type": "team_performance", "title": "团队", "content": "研发团队按期交付三个版本。"},
                ],
            },
            "options": {
                "roles": {"sales_analysis": {"steps": 1}, "team_performance": {"steps": 1}},
                "deliver": [{"connector": "oa-group"}],
            },
        }
        batch = (
            await gateway.client.post("/v1/recipes/oa.report_illustrations", json=body, headers=auth(token))
        ).json()
        for item in batch["jobs"]:
            await settle(gateway, token, item["job"]["id"])
        again = (await gateway.client.get("/v1/deliveries", params={"batch": batch["id"]}, headers=auth(token))).json()

        received = robot.state.received
        assert len(received) == 2 and len(again["items"]) == 2
        assert {m["msgUuid"] for m in received} == {d["idempotency_key"] for d in again["items"]}
        assert all("/files/ast_" in m["body"]["markdown"]["text"] for m in received)


async def test_a_failed_job_calls_back_with_its_error(tmp_path: Path, receiver: Receiver) -> None:
    async for stack in start_stack("embedded", tmp_path, None, **FAST, preview_models="sd15"):
        token = await stack.system("crm", "generate,batch")
        receiver.secrets = [(await stack.client.post("/v1/callback-secret", headers=auth(token))).json()["secret"]]

        job = await stack.submit(token, model="flux", callback_url=receiver.url)  # no backend serves it
        failed = await stack.wait(token, job["id"])
        delivery = await settle(stack, token, job["id"])

        assert failed["status"] == "failed" and delivery["event"] == "job.failed"
        event = receiver.effects[f"{job['id']}:callback"]
        assert event["type"] == "job.failed" and event["data"]["error"]["code"] == failed["error"]["code"]
        assert event["data"]["assets"] == []


async def test_a_worker_killed_mid_delivery_causes_no_second_effect(
    tmp_path: Path, receiver: Receiver, pg_database: str
) -> None:
    """A real ``imagegate worker`` is killed with SIGKILL while its request waits at the receiver; another
    worker takes the row over once its lease has run out and sends it again under the same webhook-id."""
    from tests.processes import Process, env_for

    settings = {**FAST, "delivery_relay": False}  # only the worker processes deliver
    async for stack in start_stack("distributed", tmp_path, pg_database, with_worker=False, **settings):
        env = env_for(
            tmp_path,
            database_url=pg_database,
            redis_url=stack.res.settings.redis_url,
            queue_name=stack.res.settings.queue_name,
            secret_key=stack.res.settings.secret_key,
            outbound_allowlist="127.0.0.1/32",
            delivery_lease_seconds=1,
            delivery_poll_seconds=0.1,
            delivery_retry_schedule="0.1,0.1",
        )
        token = await stack.system("crm", "generate,batch,connectors:write")
        await add_webhook(stack, token, receiver.url)
        receiver.hold_first = 60  # the first sender never hears back
        first = Process(env, ["worker"], tmp_path / "worker1.log")
        second = None
        try:
            job = await stack.submit(token, deliver=[{"connector": "hooks"}])
            await asyncio.wait_for(receiver.arrived.wait(), timeout=60)
            first.kill9()
            second = Process(env, ["worker"], tmp_path / "worker2.log")
            final = await settle(stack, token, job["id"], timeout=60)
        finally:
            if first.proc.poll() is None:
                first.kill9()
            if second is not None:
                second.stop()

        assert len(receiver.requests) == 2  # sent again after the kill (at least once)...
        assert len(receiver.effects) == 1  # ...and acted on once: the repeat carried the same webhook-id
        assert len({r["headers"]["webhook-id"] for r in receiver.requests}) == 1
        assert final["attempts"] == 2  # the killed worker's claim counts
        assert [a["outcome"] for a in final["attempt_log"]] == ["delivered"]  # only the second one wrote a result


async def test_a_stopping_relay_hands_back_what_it_could_not_finish(tmp_path: Path, receiver: Receiver) -> None:
    settings = {**FAST, "delivery_relay": False, "delivery_lease_seconds": 3600}  # no expiry would rescue the row
    async for stack in start_stack("embedded", tmp_path, None, **settings):
        token = await stack.system("crm", "generate,batch,connectors:write")
        await add_webhook(stack, token, receiver.url)
        job = await stack.submit(token, deliver=[{"connector": "hooks"}])
        await stack.wait(token, job["id"])
        receiver.hold_first = 60
        stopping = Relay(stack.res)
        stopping.start()
        await asyncio.wait_for(receiver.arrived.wait(), timeout=20)
        await stopping.stop(grace=0.2)  # the attempt is still waiting for its answer

        handed = (await stack.client.get("/v1/deliveries", params={"job": job["id"]}, headers=auth(token))).json()
        assert [(d["status"], d["attempts"]) for d in handed["items"]] == [("pending", 0)]  # uncounted, due now
        assert await Relay(stack.res).run_once() == 1  # another relay takes it at once, not after an hour
        final = await settle(stack, token, job["id"])
        assert final["attempts"] == 1 and len(receiver.requests) == 2 and len(receiver.effects) == 1
