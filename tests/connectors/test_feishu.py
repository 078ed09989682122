"""The Feishu connector against the Feishu emulator (tenant token, image upload, signed bot hook) on loopback."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image

from connectors.base import PermanentError, RetryableError
from connectors.feishu import FeishuConfig, FeishuConnector
from gateway.emulators.feishu import create_app
from tests.connectors.support import asset, delivery, outbound, png
from tests.live import serve_asgi

HOOK = "0f4c1b6e-hook"
SECRET = "bot-signing-secret"
APP_ID, APP_SECRET = "cli_a5f1", "app-secret-value"


@contextlib.asynccontextmanager
async def connected(
    app_options: dict[str, Any] | None = None, **config: Any
) -> AsyncIterator[tuple[FeishuConnector, Any]]:
    options = {"hook_token": HOOK, "secret": SECRET, "app_id": APP_ID, "app_secret": APP_SECRET, **(app_options or {})}
    app = create_app(**options)
    async with serve_asgi(app) as base, outbound() as http:
        values = {
            "base_url": base,
            "hook_token": HOOK,
            "secret": SECRET,
            "app_id": APP_ID,
            "app_secret": APP_SECRET,
            **config,
        }
        yield FeishuConnector(FeishuConfig(**values), http=http), app


def rows(message: dict[str, Any]) -> list[list[dict[str, Any]]]:
    content: list[list[dict[str, Any]]] = message["content"]["post"]["zh_cn"]["content"]
    return content


async def test_uploads_each_image_and_sends_one_signed_post_showing_them() -> None:
    first, second = png(40, 30), png(20, 60, (10, 200, 10))
    assets = [asset(first, index=0, name="P-1_main"), asset(second, index=1, name="P-1_main_2")]
    async with connected() as (connector, app):
        delivered = await connector.deliver(delivery(*assets))
    [message] = app.state.received
    keys = delivered.detail["image_keys"]
    assert message["msg_type"] == "post" and message["content"]["post"]["zh_cn"]["title"] == "Imagegate · P-1 · main"
    images = [e["image_key"] for row in rows(message) for e in row if e["tag"] == "img"]
    links = [e["href"] for row in rows(message) for e in row if e["tag"] == "a"]
    assert images == keys and links == [a.url for a in assets]
    assert "Record: P-1" in rows(message)[0][0]["text"] and "Role: main" in rows(message)[0][0]["text"]
    assert [app.state.images[k]["sha256"] for k in keys] == [hashlib.sha256(d).hexdigest() for d in (first, second)]
    assert all(app.state.images[k]["image_type"] == "message" for k in keys)


async def test_a_wrong_signing_secret_is_permanent_and_nothing_is_posted() -> None:
    async with connected(secret="not-the-secret") as (connector, app):
        with pytest.raises(PermanentError) as caught:
            await connector.deliver(delivery())
    assert "19021" in caught.value.message and "not-the-secret" not in caught.value.message
    assert app.state.received == []


async def test_a_wrong_hook_token_is_permanent_and_not_in_the_error() -> None:
    async with connected(hook_token="other-hook") as (connector, _):
        with pytest.raises(PermanentError) as caught:
            await connector.deliver(delivery())
    assert "19001" in caught.value.message and "other-hook" not in caught.value.message


async def test_wrong_app_credentials_are_permanent_before_any_upload() -> None:
    async with connected(app_secret="wrong") as (connector, app):
        with pytest.raises(PermanentError) as caught:
            await connector.deliver(delivery())
    assert "10014" in caught.value.message and app.state.images == {} and app.state.received == []


async def test_the_rate_limit_is_retryable() -> None:
    async with connected({"rate_per_minute": 1}) as (connector, _):
        await connector.deliver(delivery())
        with pytest.raises(RetryableError) as caught:
            await connector.deliver(delivery())
    assert "11232" in caught.value.message and caught.value.retry_after == 60


async def test_a_retry_after_a_refused_send_posts_the_delivery_once() -> None:
    """Uploads have no visible effect: a second attempt uploads again and still makes exactly one message."""
    now = [time.time()]
    async with connected({"rate_per_minute": 1, "clock": lambda: now[0]}) as (connector, app):
        await connector.deliver(delivery(idempotency_key="first"))
        with pytest.raises(RetryableError):
            await connector.deliver(delivery(idempotency_key="second", attempt=1))
        now[0] += 61  # the minute has passed
        await connector.deliver(delivery(idempotency_key="second", attempt=2))
    assert len(app.state.received) == 2  # one per delivery
    assert len(app.state.images) == 3  # the refused attempt's upload was simply done again


async def test_a_bot_without_signing_sends_no_timestamp_or_sign() -> None:
    async with connected({"secret": None}, secret=None) as (connector, app):
        await connector.deliver(delivery())
    assert len(app.state.received) == 1


async def test_an_image_over_10_mb_is_reencoded_to_fit() -> None:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (2048, 1800), os.urandom(2048 * 1800 * 3)).save(buffer, format="PNG")
    big = buffer.getvalue()
    assert len(big) > 10 * 1024 * 1024
    async with connected() as (connector, app):
        delivered = await connector.deliver(delivery(asset(big)))
    [key] = delivered.detail["image_keys"]
    assert app.state.images[key]["format"] == "JPEG" and app.state.images[key]["bytes"] <= 10 * 1024 * 1024


async def test_unreachable_feishu_is_retryable() -> None:
    async with outbound(timeout=1.0) as http:
        config = FeishuConfig(
            base_url="http://127.0.0.1:9", hook_token=HOOK, secret=SECRET, app_id=APP_ID, app_secret=APP_SECRET
        )
        with pytest.raises(RetryableError):
            await FeishuConnector(config, http=http).deliver(delivery())


async def test_test_connection_gets_a_token_then_sends_a_signed_text() -> None:
    async with connected() as (connector, app):
        described = await connector.test_connection()
    assert [(m["msg_type"], m["content"]) for m in app.state.received] == [
        ("text", {"text": "Imagegate: connection test"})
    ]
    assert app.state.tokens and "tenant token" in described


async def test_test_connection_reports_bad_app_credentials_without_posting() -> None:
    async with connected(app_id="cli_unknown") as (connector, app):
        with pytest.raises(PermanentError) as caught:
            await connector.test_connection()
    assert "app id not exists" in caught.value.message and app.state.received == []
