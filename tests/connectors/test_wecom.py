"""The WeCom connector against the WeCom robot emulator on a loopback port."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image

from connectors.base import PermanentError, RetryableError
from connectors.wecom import MAX_IMAGE_BYTES, WeComConfig, WeComConnector, fit_image
from gateway.emulators.wecom import create_app
from tests.connectors.support import asset, delivery, outbound, png
from tests.live import serve_asgi

KEY = "5e0e7b0a-aaaa-bbbb-cccc-0123456789ab"


@contextlib.asynccontextmanager
async def connected(
    app_options: dict[str, Any] | None = None, **config: Any
) -> AsyncIterator[tuple[WeComConnector, Any]]:
    app = create_app(KEY, **(app_options or {}))
    async with serve_asgi(app) as base, outbound() as http:
        yield WeComConnector(WeComConfig(**{"base_url": base, "key": KEY, **config}), http=http), app


def noise(width: int, height: int, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    channels = len(mode)
    Image.frombytes(mode, (width, height), os.urandom(width * height * channels)).save(buffer, format=fmt)
    return buffer.getvalue()


async def test_delivers_a_markdown_message_then_each_image_with_its_md5() -> None:
    first, second = png(40, 30), png(50, 20, (0, 0, 255))
    assets = [asset(first, index=0, name="P-1_main"), asset(second, index=1, name="P-1_main_2")]
    async with connected() as (connector, app):
        delivered = await connector.deliver(delivery(*assets))
    kinds = [m["msgtype"] for m in app.state.received]
    assert kinds == ["markdown", "image", "image"]
    text = app.state.received[0]["body"]["markdown"]["content"]
    assert "Record: <font" in text and "P-1" in text and "main" in text and "a lamp" in text
    assert f"[P-1_main.png]({assets[0].url})" in text
    assert app.state.images == [first, second]  # unchanged: small PNGs are sent as they are
    assert [m["body"]["image"]["md5"] for m in app.state.received[1:]] == [
        hashlib.md5(first).hexdigest(),
        hashlib.md5(second).hexdigest(),
    ]
    assert delivered.detail["messages"] == 3 and [i["converted"] for i in delivered.detail["images"]] == [False] * 2


async def test_a_3_mb_image_is_shrunk_below_2_mb_and_its_md5_matches() -> None:
    big = noise(1024, 1000)
    assert len(big) > 3 * 1000 * 1000
    async with connected(send_text=False) as (connector, app):
        delivered = await connector.deliver(delivery(asset(big)))
    [sent] = app.state.images
    [message] = app.state.received
    assert len(sent) <= MAX_IMAGE_BYTES and message["body"]["image"]["format"] == "JPEG"
    assert message["body"]["image"]["md5"] == hashlib.md5(sent).hexdigest() == delivered.detail["images"][0]["md5"]
    assert delivered.detail["images"][0]["converted"] is True


def test_fit_image_steps_quality_then_scales_down() -> None:
    big = noise(1600, 1200, "JPEG")  # a JPEG that is too large even at the lowest quality of its size
    fitted = fit_image(big, max_bytes=300_000)
    with Image.open(io.BytesIO(fitted)) as image:
        assert image.format == "JPEG" and image.width < 1600 and image.height < 1200
        assert abs(image.width / image.height - 1600 / 1200) < 0.01
    assert len(fitted) <= 300_000


def test_fit_image_converts_webp_and_flattens_transparency() -> None:
    webp = noise(64, 64, "WEBP", "RGBA")
    with Image.open(io.BytesIO(fit_image(webp))) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 64))
    small_png = png()
    assert fit_image(small_png) is small_png
    with pytest.raises(ValueError):
        fit_image(b"not an image")


async def test_a_webp_asset_is_sent_as_a_jpeg() -> None:
    webp = noise(64, 48, "WEBP")
    async with connected(send_text=False) as (connector, app):
        await connector.deliver(delivery(asset(webp, fmt="webp")))
    assert app.state.received[0]["body"]["image"]["format"] == "JPEG"


async def test_images_beyond_max_images_are_links_in_the_markdown() -> None:
    assets = [asset(png(10 + i, 10), index=i, name=f"P-1_main_{i}") for i in range(5)]
    async with connected(send_text=False, max_images=2) as (connector, app):
        delivered = await connector.deliver(delivery(*assets))
    kinds = [m["msgtype"] for m in app.state.received]
    assert kinds == ["markdown", "image", "image"]  # the markdown goes out although send_text is off
    text = app.state.received[0]["body"]["markdown"]["content"]
    assert all(a.url in text for a in assets) and "3 more by link only" in text
    assert delivered.detail["link_only"] == 3


async def test_a_wrong_key_is_permanent_and_the_key_is_not_in_the_error() -> None:
    async with connected(key="wrong-key") as (connector, _):
        with pytest.raises(PermanentError) as caught:
            await connector.deliver(delivery())
    assert "93000" in caught.value.message and "wrong-key" not in caught.value.message


async def test_the_rate_limit_mid_delivery_is_retryable_and_says_what_was_sent() -> None:
    assets = [asset(png(10 + i, 10), index=i) for i in range(3)]
    async with connected({"rate_limit": 2}) as (connector, app):
        with pytest.raises(RetryableError) as caught:
            await connector.deliver(delivery(*assets))
    assert "45009" in caught.value.message and caught.value.retry_after == 60
    assert "2 message(s) of this delivery were sent before" in caught.value.message
    assert len(app.state.received) == 2


async def test_an_unreadable_image_is_permanent_before_anything_is_sent() -> None:
    broken = dataclasses.replace(asset(png()), read=_junk)
    async with connected() as (connector, app):
        with pytest.raises(PermanentError):
            await connector.deliver(delivery(broken))
    assert app.state.received == []


async def _junk() -> bytes:
    return b"not an image"


async def test_unreachable_wecom_is_retryable() -> None:
    async with outbound(timeout=1.0) as http:
        connector = WeComConnector(WeComConfig(base_url="http://127.0.0.1:9", key=KEY), http=http)
        with pytest.raises(RetryableError):
            await connector.deliver(delivery())


async def test_test_connection_sends_a_text_message() -> None:
    async with connected() as (connector, app):
        described = await connector.test_connection()
    assert [m["msgtype"] for m in app.state.received] == ["text"] and "accepted" in described
