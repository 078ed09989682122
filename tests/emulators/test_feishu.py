"""The Feishu custom-bot emulator answers like Feishu (reference "OA / collaboration")."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from gateway.emulators.feishu import create_app
from tests.connectors.support import png
from tests.emulators.support import Clock

HOOK = "hook-abc"
SECRET = "bot-secret"
APP = {"app_id": "cli_a1", "app_secret": "app-secret"}
TEXT = {"msg_type": "text", "content": {"text": "hello"}}
OK = {"StatusCode": 0, "StatusMessage": "success", "code": 0, "data": {}, "msg": "success"}
SIGN_FAIL = {"code": 19021, "data": {}, "msg": "sign match fail or timestamp is not within one hour from current time"}


@contextlib.asynccontextmanager
async def tenant(**options: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(HOOK, options.pop("secret", SECRET), app_id=APP["app_id"], app_secret=APP["app_secret"], **options)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emu") as client:
        yield client, app


def signed(message: dict[str, Any], timestamp: int | None = None, secret: str = SECRET) -> dict[str, Any]:
    """Signed by hand from the reference's formula (the string to sign is the key, the message is empty)."""
    ts = timestamp if timestamp is not None else int(time.time())
    digest = hmac.new(f"{ts}\n{secret}".encode(), b"", hashlib.sha256).digest()
    return {"timestamp": str(ts), "sign": base64.b64encode(digest).decode(), **message}


async def token(client: httpx.AsyncClient) -> str:
    body = (await client.post("/open-apis/auth/v3/tenant_access_token/internal", json=APP)).json()
    assert body["code"] == 0 and body["msg"] == "ok" and 0 < body["expire"] <= 7200
    return str(body["tenant_access_token"])


async def upload(client: httpx.AsyncClient, tenant_token: str | None, data: bytes, image_type: str = "message") -> Any:
    headers = {"Authorization": f"Bearer {tenant_token}"} if tenant_token else {}
    return await client.post(
        "/open-apis/im/v1/images",
        headers=headers,
        data={"image_type": image_type},
        files={"image": ("a.png", data, "image/png")},
    )


async def test_a_signed_text_message_is_success_and_kept() -> None:
    async with tenant() as (client, app):
        response = await client.post(f"/open-apis/bot/v2/hook/{HOOK}", json=signed(TEXT))
        kept = (await client.get("/_emulator/received")).json()["received"]
    assert (response.status_code, response.json()) == (200, OK)
    assert [(m["msg_type"], m["content"]) for m in kept] == [("text", {"text": "hello"})]
    assert app.state.received == kept


async def test_a_numeric_timestamp_is_accepted_too() -> None:
    async with tenant() as (client, _):
        body = signed(TEXT)
        body["timestamp"] = int(body["timestamp"])
        response = await client.post(f"/open-apis/bot/v2/hook/{HOOK}", json=body)
    assert response.json() == OK


async def test_a_wrong_missing_or_reversed_signature_is_19021() -> None:
    ts = int(time.time())
    # DingTalk's construction (secret as the key, "ts\nsecret" as the message) must not pass here.
    dingtalk_style = base64.b64encode(hmac.new(SECRET.encode(), f"{ts}\n{SECRET}".encode(), hashlib.sha256).digest())
    async with tenant() as (client, app):
        wrong = await client.post(f"/open-apis/bot/v2/hook/{HOOK}", json=signed(TEXT, secret="other"))
        missing = await client.post(f"/open-apis/bot/v2/hook/{HOOK}", json=TEXT)
        reversed_ = await client.post(
            f"/open-apis/bot/v2/hook/{HOOK}", json={**TEXT, "timestamp": str(ts), "sign": dingtalk_style.decode()}
        )
    assert [r.json() for r in (wrong, missing, reversed_)] == [SIGN_FAIL] * 3
    assert all(r.status_code == 200 for r in (wrong, missing, reversed_)) and app.state.received == []


async def test_a_timestamp_outside_the_hour_is_19021() -> None:
    now = int(time.time())
    async with tenant() as (client, _):
        old = await client.post(f"/open-apis/bot/v2/hook/{HOOK}", json=signed(TEXT, now - 3601))
        ahead = await client.post(f"/open-apis/bot/v2/hook/{HOOK}", json=signed(TEXT, now + 3601))
        recent = await client.post(f"/open-apis/bot/v2/hook/{HOOK}", json=signed(TEXT, now - 3500))
    assert old.json() == ahead.json() == SIGN_FAIL and recent.json() == OK


async def test_an_unknown_hook_token_is_19001() -> None:
    async with tenant() as (client, _):
        response = await client.post("/open-apis/bot/v2/hook/not-a-bot", json=signed(TEXT))
    assert response.json() == {"code": 19001, "data": {}, "msg": "param invalid: incoming webhook access token invalid"}


async def test_tenant_token_flow_and_its_errors() -> None:
    async with tenant() as (client, _):
        first, second = await token(client), await token(client)
        wrong_secret = await client.post(
            "/open-apis/auth/v3/tenant_access_token/internal", json={**APP, "app_secret": "x"}
        )
        wrong_app = await client.post("/open-apis/auth/v3/tenant_access_token/internal", json={**APP, "app_id": "x"})
        missing = await client.post("/open-apis/auth/v3/tenant_access_token/internal", json={"app_id": "cli_a1"})
    assert first == second and first.startswith("t-")  # a token with time left is handed out again
    assert wrong_secret.json() == {"code": 10014, "msg": "app secret invalid"}
    assert wrong_app.json() == {"code": 10014, "msg": "app id not exists"}
    assert missing.json()["code"] == 10003


async def test_a_token_is_renewed_when_under_30_minutes_are_left_and_expires() -> None:
    clock = Clock()
    async with tenant(clock=clock) as (client, _):
        first = await token(client)
        clock.now += 7200 - 1700
        second = await token(client)
        clock.now += 1800
        expired = await upload(client, first, png())
        fresh = await upload(client, second, png())
    assert second != first
    assert expired.status_code == 400 and expired.json()["code"] == 99991663
    assert fresh.json()["code"] == 0


async def test_an_uploaded_image_key_can_be_sent_in_image_and_post_messages() -> None:
    async with tenant() as (client, _):
        answer = (await upload(client, await token(client), png(32, 16))).json()
        key = answer["data"]["image_key"]
        image = await client.post(
            f"/open-apis/bot/v2/hook/{HOOK}", json=signed({"msg_type": "image", "content": {"image_key": key}})
        )
        post = {
            "post": {
                "zh_cn": {"title": "T", "content": [[{"tag": "text", "text": "x"}], [{"tag": "img", "image_key": key}]]}
            }
        }
        rich = await client.post(f"/open-apis/bot/v2/hook/{HOOK}", json=signed({"msg_type": "post", "content": post}))
        unknown = await client.post(
            f"/open-apis/bot/v2/hook/{HOOK}", json=signed({"msg_type": "image", "content": {"image_key": "img_nope"}})
        )
        seen = (await client.get("/_emulator/received")).json()
    assert answer["code"] == 0 and answer["msg"] == "success" and key.startswith("img_")
    assert image.json() == rich.json() == OK and unknown.json()["code"] == 9499
    assert seen["images"][key]["format"] == "PNG" and (seen["images"][key]["width"], seen["images"][key]["height"]) == (
        32,
        16,
    )
    assert [m["msg_type"] for m in seen["received"]] == ["image", "post"]


async def test_upload_needs_a_bearer_tenant_token() -> None:
    async with tenant() as (client, _):
        missing = await upload(client, None, png())
        invalid = await upload(client, "t-forged", png())
    assert missing.status_code == 400 and missing.json()["code"] == 99991661
    assert invalid.status_code == 400 and invalid.json()["code"] == 99991663
    assert "log_id" in invalid.json()["error"]


async def test_upload_refuses_oversized_unreadable_and_mistyped_images() -> None:
    async with tenant() as (client, _):
        tenant_token = await token(client)
        big = await upload(client, tenant_token, b"\x89PNG" + b"\0" * (10 * 1024 * 1024))
        junk = await upload(client, tenant_token, b"not an image")
        mistyped = await upload(client, tenant_token, png(), image_type="file")
    assert (big.status_code, big.json()["code"]) == (400, 234006)
    assert (junk.status_code, junk.json()["code"]) == (400, 234011)
    assert (mistyped.status_code, mistyped.json()["code"]) == (400, 234001)


async def test_rate_limits_are_5_a_second_and_100_a_minute_with_11232() -> None:
    clock = Clock()
    async with tenant(clock=clock) as (client, _):

        async def send() -> int:
            body = signed(TEXT, int(clock.now))
            return int((await client.post(f"/open-apis/bot/v2/hook/{HOOK}", json=body)).json()["code"])

        burst = [await send() for _ in range(6)]
        minute = []
        for _ in range(25):
            clock.now += 1.01
            minute += [await send() for _ in range(5)]
        limited = await client.post(f"/open-apis/bot/v2/hook/{HOOK}", json=signed(TEXT, int(clock.now)))
    assert burst == [0] * 5 + [11232]
    assert minute.count(0) == 95 and set(minute[95:]) == {11232}  # 5 + 95 = 100 in the minute
    assert limited.status_code == 200 and limited.json()["msg"].startswith("frequency limited")


async def test_bad_bodies_are_9499() -> None:
    async with tenant() as (client, _):
        unknown = await client.post(f"/open-apis/bot/v2/hook/{HOOK}", json=signed({"msg_type": "audio", "content": {}}))
        broken = await client.post(
            f"/open-apis/bot/v2/hook/{HOOK}", content=b"{", headers={"content-type": "application/json"}
        )
        shapeless = await client.post(
            f"/open-apis/bot/v2/hook/{HOOK}", json=signed({"msg_type": "post", "content": {"post": "x"}})
        )
    assert [r.json()["code"] for r in (unknown, broken, shapeless)] == [9499] * 3
