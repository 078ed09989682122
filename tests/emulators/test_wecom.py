"""The WeCom group-robot emulator answers like WeCom (reference "OA / collaboration")."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
from PIL import Image

from gateway.emulators.wecom import create_app
from tests.connectors.support import png
from tests.emulators.support import Clock

KEY = "0b6c9a3e-1111-2222-3333-444455556666"
URL = f"/cgi-bin/webhook/send?key={KEY}"


@contextlib.asynccontextmanager
async def robot(**options: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(KEY, **options)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emu") as client:
        yield client, app


def image_message(data: bytes, md5: str | None = None) -> dict[str, Any]:
    digest = md5 if md5 is not None else hashlib.md5(data).hexdigest()
    return {"msgtype": "image", "image": {"base64": base64.b64encode(data).decode(), "md5": digest}}


def noise(width: int, height: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(buffer, format=fmt)
    return buffer.getvalue()


def errcode(response: httpx.Response) -> int:
    return int(response.json()["errcode"])


async def test_text_markdown_and_image_messages_are_ok_and_kept() -> None:
    data = png(40, 30)
    async with robot() as (client, app):
        answers = [
            await client.post(URL, json={"msgtype": "text", "text": {"content": "hi"}}),
            await client.post(URL, json={"msgtype": "markdown", "markdown": {"content": "**hi**"}}),
            await client.post(URL, json=image_message(data)),
        ]
        kept = (await client.get("/_emulator/received")).json()["received"]
    assert [(r.status_code, r.json()) for r in answers] == [(200, {"errcode": 0, "errmsg": "ok"})] * 3
    assert [m["msgtype"] for m in kept] == ["text", "markdown", "image"]
    assert kept[2]["body"]["image"] == {
        "bytes": len(data),
        "md5": hashlib.md5(data).hexdigest(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "format": "PNG",
        "width": 40,
        "height": 30,
    }
    assert app.state.images == [data]


async def test_a_missing_or_wrong_key_is_93000_with_wecoms_hint() -> None:
    async with robot() as (client, _):
        wrong = await client.post("/cgi-bin/webhook/send?key=nope", json={"msgtype": "text", "text": {"content": "x"}})
        missing = await client.post("/cgi-bin/webhook/send", json={"msgtype": "text", "text": {"content": "x"}})
    for response in (wrong, missing):
        body = response.json()
        assert response.status_code == 200 and body["errcode"] == 93000
        assert body["errmsg"].startswith("invalid webhook url, hint: [")
        assert body["errmsg"].endswith("more info at https://open.work.weixin.qq.com/devtool/query?e=93000")


async def test_an_image_over_2_mb_is_40009() -> None:
    big = noise(1024, 800, "PNG")
    assert len(big) > 2 * 1024 * 1024
    async with robot() as (client, app):
        response = await client.post(URL, json=image_message(big))
        small = await client.post(URL, json=image_message(png()))
    assert errcode(response) == 40009 and "invalid image size" in response.json()["errmsg"]
    assert errcode(small) == 0 and len(app.state.images) == 1


async def test_a_wrong_md5_is_301019() -> None:
    data = png()
    async with robot() as (client, app):
        wrong = await client.post(URL, json=image_message(data, md5=hashlib.md5(b"other").hexdigest()))
        of_base64 = await client.post(
            URL, json=image_message(data, md5=hashlib.md5(base64.b64encode(data)).hexdigest())
        )
        upper = await client.post(URL, json=image_message(data, md5=hashlib.md5(data).hexdigest().upper()))
    assert errcode(wrong) == errcode(of_base64) == 301019 and "media md5 not match" in wrong.json()["errmsg"]
    assert errcode(upper) == 0 and len(app.state.images) == 1


async def test_only_jpg_and_png_are_taken() -> None:
    async with robot() as (client, _):
        webp = await client.post(URL, json=image_message(noise(32, 32, "WEBP")))
        gif = await client.post(URL, json=image_message(noise(32, 32, "GIF")))
        jpeg = await client.post(URL, json=image_message(noise(32, 32, "JPEG")))
        junk = await client.post(URL, json=image_message(b"not an image"))
    assert [errcode(r) for r in (webp, gif, jpeg, junk)] == [40005, 40005, 0, 40005]


async def test_the_21st_message_in_a_minute_is_45009_and_the_window_slides() -> None:
    clock = Clock()
    text = {"msgtype": "text", "text": {"content": "x"}}
    async with robot(clock=clock) as (client, _):
        answers = [errcode(await client.post(URL, json=text)) for _ in range(21)]
        limited = await client.post(URL, json=text)
        clock.now += 61
        later = await client.post(URL, json=text)
    assert answers == [0] * 20 + [45009]
    assert limited.json()["errmsg"].startswith("api freq out of limit")
    assert errcode(later) == 0


async def test_payload_errors() -> None:
    async with robot() as (client, _):
        unknown = await client.post(URL, json={"msgtype": "voice", "voice": {}})
        empty = await client.post(URL, json={"msgtype": "text", "text": {"content": ""}})
        long = await client.post(URL, json={"msgtype": "text", "text": {"content": "长" * 700}})
        long_md = await client.post(URL, json={"msgtype": "markdown", "markdown": {"content": "x" * 4097}})
        broken = await client.post(URL, content=b"{", headers={"content-type": "application/json"})
        bad_b64 = await client.post(URL, json={"msgtype": "image", "image": {"base64": "@@@", "md5": "00"}})
    assert [errcode(r) for r in (unknown, empty, long, long_md, broken, bad_b64)] == [
        40008,
        44004,
        40058,
        40058,
        40058,
        40058,
    ]
