"""The DingTalk robot emulator answers like the real endpoint (reference "OA / collaboration")."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote_plus

import httpx

from gateway.emulators.dingtalk import create_app
from tests.emulators.support import Clock

TOKEN = "tok-123"
SECRET = "SEC0123456789abcdef"
MARKDOWN = {"msgtype": "markdown", "markdown": {"title": "t", "text": "![](https://example.com/a.png)"}}


@contextlib.asynccontextmanager
async def robot(**options: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(TOKEN, options.pop("secret", SECRET), **options)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emu") as client:
        yield client, app


def signed_url(timestamp_ms: int | None = None, *, secret: str = SECRET, token: str = TOKEN) -> str:
    """Built by hand from the reference's formula, independently of the emulator and the connector."""
    ts = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
    digest = hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()
    return f"/robot/send?access_token={token}&timestamp={ts}&sign={quote_plus(base64.b64encode(digest).decode())}"


async def test_a_signed_markdown_message_is_ok_and_kept() -> None:
    async with robot() as (client, app):
        response = await client.post(signed_url(), json={**MARKDOWN, "msgUuid": "u-1"})
        kept = (await client.get("/_emulator/received")).json()["received"]
    assert (response.status_code, response.json()) == (200, {"errcode": 0, "errmsg": "ok"})
    assert [(m["msgtype"], m["msgUuid"], m["body"]["markdown"]["title"]) for m in kept] == [("markdown", "u-1", "t")]
    assert app.state.received == kept


async def test_a_wrong_or_missing_signature_is_310000_sign_not_match() -> None:
    async with robot() as (client, app):
        wrong = await client.post(signed_url(secret="SECsomething-else"), json=MARKDOWN)
        ts = int(time.time() * 1000)
        missing = await client.post(f"/robot/send?access_token={TOKEN}&timestamp={ts}", json=MARKDOWN)
    for response in (wrong, missing):
        body = response.json()
        assert response.status_code == 200 and body["errcode"] == 310000 and "签名不匹配" in body["errmsg"]
    assert app.state.received == []


async def test_an_unencoded_plus_in_the_signature_does_not_match() -> None:
    """A base64 "+" that is not URL-encoded arrives as a space: the classic signing bug."""
    async with robot() as (client, _):
        for ts in range(int(time.time() * 1000), int(time.time() * 1000) + 200):
            digest = hmac.new(SECRET.encode(), f"{ts}\n{SECRET}".encode(), hashlib.sha256).digest()
            raw = base64.b64encode(digest).decode()
            if "+" in raw:
                break
        response = await client.post(f"/robot/send?access_token={TOKEN}&timestamp={ts}&sign={raw}", json=MARKDOWN)
    assert response.json()["errcode"] == 310000


async def test_a_timestamp_over_an_hour_old_or_ahead_is_invalid_timestamp() -> None:
    async with robot() as (client, _):
        now = int(time.time() * 1000)
        old = await client.post(signed_url(now - 3601 * 1000), json=MARKDOWN)
        ahead = await client.post(signed_url(now + 3601 * 1000), json=MARKDOWN)
        recent = await client.post(signed_url(now - 3500 * 1000), json=MARKDOWN)
    for response in (old, ahead):
        assert response.json()["errcode"] == 310000 and response.json()["errmsg"].startswith("invalid timestamp")
    assert recent.json() == {"errcode": 0, "errmsg": "ok"}


async def test_an_unknown_or_missing_access_token() -> None:
    async with robot() as (client, _):
        unknown = await client.post(signed_url(token="nope"), json=MARKDOWN)
        missing = await client.post("/robot/send", json=MARKDOWN)
        get = await client.get(signed_url())
    assert unknown.json() == {"errcode": 300001, "errmsg": "token is not exist"}
    assert missing.json() == {"errcode": 40035, "errmsg": "缺少参数 access_token"}
    assert get.json() == {"errcode": 43002, "errmsg": "需要POST请求"}


async def test_a_robot_without_a_secret_ignores_signatures() -> None:
    async with robot(secret=None) as (client, _):
        response = await client.post(f"/robot/send?access_token={TOKEN}", json=MARKDOWN)
    assert response.json() == {"errcode": 0, "errmsg": "ok"}


async def test_the_same_msg_uuid_twice_keeps_one_message() -> None:
    async with robot() as (client, _):
        answers = [(await client.post(signed_url(), json={**MARKDOWN, "msgUuid": "same"})).json() for _ in range(2)]
        other = await client.post(signed_url(), json={**MARKDOWN, "msgUuid": "other"})
        kept = (await client.get("/_emulator/received")).json()["received"]
    assert answers == [{"errcode": 0, "errmsg": "ok"}] * 2 and other.json()["errcode"] == 0
    assert [m["msgUuid"] for m in kept] == ["same", "other"]


async def test_the_21st_message_in_a_minute_is_130101_and_the_window_slides() -> None:
    clock = Clock()
    async with robot(clock=clock) as (client, _):

        def url() -> str:
            return signed_url(int(clock.now * 1000))

        answers = [(await client.post(url(), json=MARKDOWN)).json()["errcode"] for _ in range(21)]
        clock.now += 30
        still = (await client.post(url(), json=MARKDOWN)).json()
        clock.now += 31
        later = (await client.post(url(), json=MARKDOWN)).json()
        kept = (await client.get("/_emulator/received")).json()["received"]
    assert answers == [0] * 20 + [130101]
    assert still == {"errcode": 130101, "errmsg": "send too fast, exceed 20 times per minute"}
    assert later["errcode"] == 0 and len(kept) == 21


async def test_payload_errors() -> None:
    async with robot() as (client, _):
        unknown = await client.post(signed_url(), json={"msgtype": "video", "video": {}})
        no_title = await client.post(signed_url(), json={"msgtype": "markdown", "markdown": {"text": "x"}})
        long = await client.post(signed_url(), json={"msgtype": "text", "text": {"content": "长" * 7000}})
        form = await client.post(signed_url(), content=b"msgtype=text", headers={"content-type": "text/plain"})
        broken = await client.post(signed_url(), content=b"{", headers={"content-type": "application/json"})
    assert unknown.json()["errcode"] == 400105
    assert no_title.json() == {"errcode": 40035, "errmsg": "缺少参数 title"}
    assert long.json() == {"errcode": 460101, "errmsg": "message too long, exceed 20000 bytes"}
    assert form.json()["errcode"] == 43004
    assert broken.json()["errcode"] == 40035


async def test_delete_forgets_messages_uuids_and_the_rate_window() -> None:
    async with robot(rate_limit=1) as (client, _):
        await client.post(signed_url(), json={**MARKDOWN, "msgUuid": "a"})
        assert (await client.post(signed_url(), json=MARKDOWN)).json()["errcode"] == 130101
        await client.delete("/_emulator/received")
        again = await client.post(signed_url(), json={**MARKDOWN, "msgUuid": "a"})
        kept = (await client.get("/_emulator/received")).json()["received"]
    assert again.json()["errcode"] == 0 and [m["msgUuid"] for m in kept] == ["a"]
