"""The DingTalk connector against the DingTalk robot emulator on a loopback port."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError

from connectors.base import PermanentError, RetryableError
from connectors.dingtalk import MAX_TEXT_BYTES, DingTalkConfig, DingTalkConnector
from gateway.emulators.dingtalk import create_app
from tests.connectors.support import asset, delivery, outbound, png
from tests.live import serve_asgi

TOKEN = "robot-token"
SECRET = "SECrobot-secret-0123456789"


@contextlib.asynccontextmanager
async def connected(
    app_options: dict[str, Any] | None = None, **config: Any
) -> AsyncIterator[tuple[DingTalkConnector, Any]]:
    options = {"access_token": TOKEN, "secret": SECRET, **(app_options or {})}
    app = create_app(**options)
    async with serve_asgi(app) as base, outbound() as http:
        values = {"webhook_url": f"{base}/robot/send", "access_token": TOKEN, "secret": SECRET, **config}
        yield DingTalkConnector(DingTalkConfig(**values), http=http), app


async def test_delivers_one_signed_markdown_message_with_every_image_and_the_record() -> None:
    first, second = asset(index=0, name="P-1_main"), asset(png(80, 60, (0, 90, 200)), index=1, name="P-1_main_2")
    async with connected() as (connector, app):
        delivered = await connector.deliver(delivery(first, second))
    [message] = app.state.received
    markdown = message["body"]["markdown"]
    assert message["msgtype"] == "markdown" and message["msgUuid"] == delivery().idempotency_key
    assert markdown["title"] == "Imagegate · P-1 · main"
    assert f"![P-1_main.png]({first.url})" in markdown["text"]
    assert f"![P-1_main_2.png]({second.url})" in markdown["text"]
    assert "**Record**: P-1" in markdown["text"] and "**Role**: main" in markdown["text"]
    assert "**Prompt**: a lamp" in markdown["text"]
    assert delivered.external_id == delivery().idempotency_key and delivered.detail["images"] == 2


async def test_delivering_twice_with_the_same_key_keeps_one_message() -> None:
    async with connected() as (connector, app):
        await connector.deliver(delivery(attempt=1))
        await connector.deliver(delivery(attempt=2))  # the retry after a lost answer
        await connector.deliver(delivery(idempotency_key="job_" + "9" * 28 + ":oa"))
    assert [m["msgUuid"] for m in app.state.received] == [delivery().idempotency_key, "job_" + "9" * 28 + ":oa"]


async def test_the_title_template_is_filled_in() -> None:
    async with connected(title_template="新图片 {record_id}/{role} ({count})") as (connector, app):
        await connector.deliver(delivery())
    assert app.state.received[0]["body"]["markdown"]["title"] == "新图片 P-1/main (1)"


def test_a_title_template_with_unknown_or_dotted_placeholders_is_refused() -> None:
    for template in ("{nope}", "{record_id.__class__}", "{record_id!r}", "{"):
        with pytest.raises(ValidationError):
            DingTalkConfig(access_token=TOKEN, title_template=template)


async def test_a_wrong_secret_is_permanent() -> None:
    async with connected(secret="SECwrong") as (connector, app):
        with pytest.raises(PermanentError) as caught:
            await connector.deliver(delivery())
    assert "310000" in caught.value.message and "SECwrong" not in caught.value.message
    assert app.state.received == []


async def test_a_wrong_token_is_permanent() -> None:
    async with connected(access_token="other-token") as (connector, _):
        with pytest.raises(PermanentError) as caught:
            await connector.deliver(delivery())
    assert "300001" in caught.value.message and "other-token" not in caught.value.message


async def test_the_rate_limit_is_retryable_after_a_minute() -> None:
    async with connected({"rate_limit": 1}) as (connector, _):
        await connector.deliver(delivery())
        with pytest.raises(RetryableError) as caught:
            await connector.deliver(delivery(idempotency_key="another"))
    assert "130101" in caught.value.message and caught.value.retry_after == 60


async def test_a_robot_without_signing_needs_no_secret() -> None:
    async with connected({"secret": None}, secret=None) as (connector, app):
        await connector.deliver(delivery())
    assert len(app.state.received) == 1


async def test_many_images_stay_under_dingtalks_20000_bytes() -> None:
    assets = [asset(png(8 + i, 8), index=i, name=f"P-1_main_{i}") for i in range(150)]
    async with connected() as (connector, app):
        await connector.deliver(delivery(*assets))
    text = app.state.received[0]["body"]["markdown"]["text"]
    assert len(text.encode()) <= MAX_TEXT_BYTES and "more image(s)" in text and "![P-1_main_0.png]" in text


async def test_unreachable_dingtalk_is_retryable() -> None:
    async with outbound(timeout=1.0) as http:
        connector = DingTalkConnector(
            DingTalkConfig(webhook_url="http://127.0.0.1:9/robot/send", access_token=TOKEN, secret=SECRET), http=http
        )
        with pytest.raises(RetryableError):
            await connector.deliver(delivery())


async def test_test_connection_sends_a_text_message() -> None:
    async with connected() as (connector, app):
        described = await connector.test_connection()
    [message] = app.state.received
    assert message["msgtype"] == "text" and "connection test" in message["body"]["text"]["content"]
    assert "accepted" in described


async def test_test_connection_reports_a_bad_secret() -> None:
    async with connected(secret="SECwrong") as (connector, _):
        with pytest.raises(PermanentError):
            await connector.test_connection()
